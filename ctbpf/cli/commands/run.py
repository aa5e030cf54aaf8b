"""ctbpf run: load, attach and track in the foreground."""

import argparse

from ctbpf.cli.commands.common import add_pin_dir

NAME = "run"
HELP = "load, attach and track in the foreground"


def add_arguments(p) -> None:
    p.add_argument("--iface", action="append", required=True, metavar="IF",
                   help="interface to attach XDP to (repeatable)")
    add_pin_dir(p)
    p.add_argument("--egress", action="store_true",
                   help="also track what this host sends (TC egress on the same interfaces)")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto",
                   help="auto (default): native XDP on NICs, generic on veth (native XDP "
                        "on veth turns GSO/GRO off for the link), falling back to the other")
    p.add_argument("--fast-path", action=argparse.BooleanOptionalAction, default=None,
                   help="forward packets of ESTABLISHED, ASSURED flows at XDP between the "
                        "--iface interfaces: they skip the kernel's routing and its forward "
                        "hooks, as flowtables do (docs/fastpath.md). Default: the config "
                        "file's fast_path, else what is pinned, else off")
    p.add_argument("--max", type=int, default=None, metavar="N",
                   help="conntrack_max: flows tracked in all, ASSURED or not (default: the "
                        "config file's max, else 8 x its buckets, else 65536)")
    p.add_argument("--new-max", type=int, default=None, metavar="N",
                   help="the part of max that unassured flows may hold (the pool a flood of "
                        "new flows churns; default max/16, at least 1024, at most max/2; a "
                        "restart keeps the pinned one)")
    p.add_argument("--buckets", type=int, default=None, metavar="N",
                   help="hashsize: with no --max, max is 8 x N (as the kernel's nf_conntrack_max)")
    p.add_argument("--keep-attached", action="store_true",
                   help="on SIGINT/SIGTERM leave the XDP (and TC) programs attached and the "
                        "maps pinned: tracking goes on, and the next `ctbpf run` adopts them")
    p.add_argument("--discard-state", action="store_true",
                   help="if the pinned maps cannot be kept (another layout version with no "
                        "migration), drop them, report how many entries were dropped, start empty")
    p.add_argument("--metrics-addr", default="127.0.0.1:9476", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (default "
                        "127.0.0.1:9476; binding beyond loopback is your choice; 'none': off)")
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of tunables (see deploy/ctbpf.toml), applied at start "
                        "and again on SIGHUP")
    p.add_argument("--mode", choices=("observe", "enforce"),
                   help="observe (track and count verdicts, drop nothing) or enforce "
                        "(drop what the policy refuses, at XDP); default: the config "
                        "file's mode, else what is pinned, else observe. The policy itself "
                        "comes from --config ([policy.in.IFACE]) or `ctbpf policy set`")
    p.add_argument("--sweep-min-interval", type=float, default=1.0, metavar="SECONDS",
                   help="shortest time between two sweeps of expired entries (default 1)")
    p.add_argument("--sweep-max-interval", type=float, default=30.0, metavar="SECONDS",
                   help="longest time between two sweeps; the interval adapts in between "
                        "to how much each sweep finds (default 30)")
    p.add_argument("--sweep-walk-interval", type=float, default=600.0, metavar="SECONDS",
                   help="time between two safety walks of the whole tables; sweeps "
                        "otherwise read only the entries due, from the expiry index "
                        "(default 600)")


def run(args) -> int:
    from ctbpf.agent.daemon import run as run_daemon  # noqa: PLC0415

    return run_daemon(args)
