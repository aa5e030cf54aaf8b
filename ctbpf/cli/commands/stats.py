"""ctbpf stats: counters, like conntrack -S."""

import json

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "stats"
HELP = "counters (like conntrack -S)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")


def run(args) -> int:
    from ctbpf.datapath import stats  # noqa: PLC0415

    pin_dir = existing_pin_dir(args)
    s = stats.read(pin_dir)   # early_drop included
    print(json.dumps(s) if args.output == "json" else stats.text(s))
    return 0
