"""ctbpf demo: ctbpf on a built-in lab of network namespaces."""

import argparse

NAME = "demo"
HELP = "run ctbpf on a built-in lab of network namespaces"


def add_arguments(p) -> None:
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    from ..demo import main  # noqa: PLC0415

    return main(keep=args.keep)
