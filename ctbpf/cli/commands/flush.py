"""ctbpf flush: empty both flow tables, like conntrack -F."""

import sys

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "flush"
HELP = "delete every flow (like conntrack -F)"


def add_arguments(p) -> None:
    add_pin_dir(p)


def run(args) -> int:
    from ctbpf import __version__  # noqa: PLC0415
    from ctbpf.datapath import tableops

    tableops.flush(existing_pin_dir(args))
    print(f"ctbpf v{__version__}: connection tracking table has been emptied.", file=sys.stderr)
    return 0
