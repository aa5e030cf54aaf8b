"""ctbpf run: load, attach and track in the foreground."""

from .common import add_pin_dir

NAME = "run"
HELP = "load, attach and track in the foreground"


def add_arguments(p) -> None:
    p.add_argument("--iface", action="append", required=True, metavar="IF",
                   help="interface to attach XDP to (repeatable)")
    add_pin_dir(p)
    p.add_argument("--egress", action="store_true",
                   help="also track what this host sends (TC egress on the same interfaces)")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
    p.add_argument("--max", type=int, default=65536, metavar="N",
                   help="conntrack_max: entries per table (default 65536)")


def run(args) -> int:
    from ..daemon import run as run_daemon  # noqa: PLC0415

    return run_daemon(args)
