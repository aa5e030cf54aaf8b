"""ctbpf list: the table, like /proc/net/ip_conntrack or conntrack -L."""

import sys

from ctbpf.cli.commands.common import add_filters, add_pin_dir, existing_pin_dir

NAME = "list"
HELP = "list tracked flows (like conntrack -L)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("proc", "conntrack", "json"), default="proc")
    add_filters(p)


def run(args) -> int:
    from ctbpf import __version__  # noqa: PLC0415
    from ctbpf.datapath import formats, table
    from ctbpf.cli.filters import FlowFilter  # noqa: PLC0415

    flt = FlowFilter.from_args(args)
    flows = [f for f in table.read_flows(existing_pin_dir(args)) if flt.matches(f)]
    flows.sort(key=lambda f: (f.proto, f.orig.src, f.orig.sport or 0, f.orig.dst, f.orig.dport or 0))
    if args.output == "json":
        formats.write_json(flows, sys.stdout)
        return 0
    line = formats.proc_line if args.output == "proc" else formats.conntrack_line
    sys.stdout.writelines(line(f) + "\n" for f in flows)
    if args.output == "conntrack":
        print(f"ctbpf v{__version__}: {len(flows)} flow entries have been shown.", file=sys.stderr)
    return 0
