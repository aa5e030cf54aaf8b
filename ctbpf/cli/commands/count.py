"""ctbpf count: the number of live flows, like conntrack -C."""

import json

from ctbpf.cli.commands.common import add_filters, add_pin_dir, existing_pin_dir

NAME = "count"
HELP = "count live flows, all or those the filters match (like conntrack -C)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_filters(p)


def run(args) -> int:
    from ctbpf.datapath import tableops  # noqa: PLC0415
    from ctbpf.cli.filters import FlowFilter  # noqa: PLC0415

    flt = FlowFilter.from_args(args)
    n = tableops.count(existing_pin_dir(args), flt)
    print(json.dumps({"count": n}) if args.output == "json" else n)
    return 0
