"""ctbpf set: change tunables on the running datapath, like sysctl -w."""

import sys

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "set"
HELP = "change tunables on the running datapath (like sysctl -w)"


def add_arguments(p) -> None:
    p.add_argument("assignments", nargs="+", metavar="NAME=VALUE",
                   help="a tunable by its sysctl name without nf_conntrack_ "
                        "(tcp_timeout_established=3600, tcp_loose=0, ...; `ctbpf config` "
                        "lists them). All are checked first; nothing changes if one is bad. "
                        "With a daemon config file, a change lasts until the next SIGHUP "
                        "or restart")
    add_pin_dir(p)


def run(args) -> int:
    from ctbpf.agent import configfile, tuning  # noqa: PLC0415

    try:
        values = configfile.parse_assignments(args.assignments)
        lines = tuning.set_values(existing_pin_dir(args), values)
    except configfile.ConfigErrors as e:
        for problem in e.problems:
            print(f"ctbpf: error: {problem}", file=sys.stderr)
        return e.exit_code
    print("\n".join(lines))
    return 0
