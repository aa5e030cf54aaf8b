"""ctbpf config: every tunable with its value, default and source."""

import json

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "config"
HELP = "show every tunable: value, default and source (default, file or set)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")


def run(args) -> int:
    from ctbpf.cli import configview  # noqa: PLC0415

    desc = configview.describe(existing_pin_dir(args))
    print(json.dumps(desc) if args.output == "json" else configview.text(desc))
    return 0
