"""ctbpf get: one flow by its original tuple, like conntrack -G."""

import sys

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "get"
HELP = "show one flow by its original tuple (like conntrack -G)"
OUTPUTS = ("proc", "conntrack", "json")


def add_tuple(p, required: bool = True) -> None:
    """The original tuple of a flow, as conntrack -G takes it."""
    what = "" if required else " (with the others: a tuple)"
    p.add_argument("-p", "--proto", help=f"protocol name or number{what}")
    p.add_argument("--src", help="original source address")
    p.add_argument("--dst", help="original destination address")
    p.add_argument("--sport", help="original source port (TCP, UDP)")
    p.add_argument("--dport", help="original destination port (TCP, UDP)")
    add_icmp(p)


def add_icmp(p) -> None:
    p.add_argument("--icmp-type", metavar="T", help="ICMP/ICMPv6 query request type (8: echo)")
    p.add_argument("--icmp-code", metavar="C", help="ICMP code (default 0)")
    p.add_argument("--icmp-id", metavar="ID", help="ICMP query id")


def print_flows(flows, output: str) -> None:
    """Flows in one of list's formats."""
    from ctbpf.datapath import formats  # noqa: PLC0415

    if output == "json":
        print(formats.json_text(flows))
        return
    line = formats.proc_line if output == "proc" else formats.conntrack_line
    sys.stdout.writelines(line(f) + "\n" for f in flows)
    sys.stdout.flush()


def describe(spec) -> str:
    from ctbpf.datapath.table import PROTO_NAMES  # noqa: PLC0415

    text = f"{PROTO_NAMES.get(spec.proto, spec.proto)} src={spec.src} dst={spec.dst}"
    if spec.icmp_type is not None:
        return text + f" type={spec.icmp_type} code={spec.icmp_code} id={spec.icmp_id}"
    if spec.proto in (6, 17):
        return text + f" sport={spec.sport} dport={spec.dport}"
    return text


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=OUTPUTS, default="proc")
    add_tuple(p)


def run(args) -> int:
    from ctbpf import __version__  # noqa: PLC0415
    from ctbpf.cli import filters
    from ctbpf.datapath import tableops
    from ctbpf.errors import CtbpfError  # noqa: PLC0415

    spec = filters.tuple_from_args(args)
    match = tableops.lookup(existing_pin_dir(args), spec)
    if match is None:
        raise CtbpfError(f"no such flow ({describe(spec)}): 0 flow entries have been shown")
    print_flows([match.flow], args.output)
    if args.output == "conntrack":
        print(f"ctbpf v{__version__}: 1 flow entries have been shown.", file=sys.stderr)
    return 0
