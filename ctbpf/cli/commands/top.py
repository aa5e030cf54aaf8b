"""ctbpf top: a live, refreshing view of the tracker, like top(1)."""

import argparse
import sys

from ctbpf.cli.commands.common import add_pin_dir, existing_pin_dir

NAME = "top"
HELP = "live view: entries, packet rates, top talkers (like top)"

MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0
MAX_ITERATIONS = 100_000


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:   # also false for nan
        raise argparse.ArgumentTypeError(
            f"{text} is out of range ({MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds)")
    return value


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_ITERATIONS:
        raise argparse.ArgumentTypeError(f"{text} is out of range (1 to {MAX_ITERATIONS})")
    return value


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("--interval", type=_interval, default=2.0, metavar="SECONDS",
                   help=f"seconds between refreshes (default 2, {MIN_INTERVAL:g} to "
                        f"{MAX_INTERVAL:g})")
    p.add_argument("--iterations", type=_iterations, default=None, metavar="N",
                   help="print N frames as plain text, then exit (plain text is also what a "
                        "pipe gets)")


def run(args) -> int:
    from ctbpf.cli import top  # noqa: PLC0415

    pin_dir = existing_pin_dir(args)
    top.main(pin_dir, args.interval, args.iterations, tty=sys.stdout.isatty())
    return 0
