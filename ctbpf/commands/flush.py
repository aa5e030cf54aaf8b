"""ctbpf flush: empty both flow tables, like conntrack -F."""

import sys

from .common import add_pin_dir, existing_pin_dir

NAME = "flush"
HELP = "delete every flow (like conntrack -F)"


def add_arguments(p) -> None:
    add_pin_dir(p)


def run(args) -> int:
    from .. import __version__, tableops  # noqa: PLC0415

    tableops.flush(existing_pin_dir(args))
    print(f"ctbpf v{__version__}: connection tracking table has been emptied.", file=sys.stderr)
    return 0
