"""ctbpf stats: counters, like conntrack -S."""

import json

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "stats"
HELP = "counters (like conntrack -S)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")


def run(args) -> int:
    from ctbpf.datapath import configmap, fastpath, stats  # noqa: PLC0415

    pin_dir = existing_pin_dir(args)
    s = stats.read(pin_dir)   # early_drop included
    on = configmap.fast_path_on(pin_dir)
    per_iface = fastpath.read(pin_dir)
    if args.output == "json":
        print(json.dumps(dict(s, fast_path={"on": on, "interfaces": per_iface})))
    else:
        print(stats.text(s))
        print(fastpath.text(per_iface, on))
    return 0
