"""ctbpf delete: delete flows by tuple or filter, like conntrack -D."""

import sys

from ctbpf.cli.commands.common import add_filters, add_pin_dir, existing_pin_dir
from ctbpf.cli.commands.get import OUTPUTS, add_icmp, print_flows

NAME = "delete"
HELP = "delete flows by tuple or by list's filters (like conntrack -D)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=OUTPUTS, default="proc",
                   help="format of the deleted flows printed")
    add_filters(p)
    add_icmp(p)


def _is_tuple(args) -> bool:
    """A whole original tuple (and nothing else): found by its key, no scan."""
    if any(getattr(args, a) is not None for a in ("icmp_type", "icmp_code", "icmp_id")):
        return True
    if args.state or not (args.proto and args.src and args.dst and args.sport and args.dport):
        return False
    return all("/" not in a for a in (args.src, args.dst))


def run(args) -> int:
    from ctbpf import __version__  # noqa: PLC0415
    from ctbpf.cli import filters
    from ctbpf.datapath import tableops
    from ctbpf.cli.filters import FlowFilter  # noqa: PLC0415

    if _is_tuple(args):
        spec = filters.tuple_from_args(args)
        pin_dir = existing_pin_dir(args)
        match = tableops.lookup(pin_dir, spec)
        matches = [match] if match is not None else []
    else:
        flt = FlowFilter.from_args(args)
        pin_dir = existing_pin_dir(args)
        matches = tableops.scan(pin_dir, flt)
    deleted = tableops.delete(pin_dir, matches)
    flows = [m.flow for m in deleted]
    flows.sort(key=lambda f: (f.proto, f.orig.src, f.orig.sport or 0, f.orig.dst,
                              f.orig.dport or 0))
    if flows or args.output == "json":
        print_flows(flows, args.output)
    print(f"ctbpf v{__version__}: {len(flows)} flow entries have been deleted.", file=sys.stderr)
    return 0 if flows else 1
