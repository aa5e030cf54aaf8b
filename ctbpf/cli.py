"""The `ctbpf` command: one outermost place that turns errors into one
line and an exit code (0 ok, 1 failure, 2 usage), like conntrack-tools."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys

from . import __version__
from .errors import CtbpfError

log = logging.getLogger("ctbpf")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"ctbpf: error: {message} (see ctbpf --help)\n")


def _add_pin_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-dir", metavar="DIR",
                   help="bpffs directory of the maps (default: /sys/fs/bpf/ctbpf, or "
                        "/sys/fs/bpf/ctbpf@NETNS inside a named network namespace)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--proto", help="protocol name or number")
    p.add_argument("--state", help="TCP state (SYN_SENT, ESTABLISHED, ...)")
    p.add_argument("--src", help="original source address or prefix")
    p.add_argument("--dst", help="original destination address or prefix")
    p.add_argument("--sport", help="original source port")
    p.add_argument("--dport", help="original destination port")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctbpf", description="Connection tracking on the NIC path (XDP/TC eBPF) "
                                               "with netfilter conntrack semantics.")
    parser.add_argument("--version", action="version", version=f"ctbpf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="load, attach and track in the foreground")
    run.add_argument("--iface", action="append", required=True, metavar="IF",
                     help="interface to attach XDP to (repeatable)")
    _add_pin_dir(run)
    run.add_argument("--egress", action="store_true",
                     help="also track what this host sends (TC egress on the same interfaces)")
    run.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
    run.add_argument("--max", type=int, default=65536, metavar="N",
                     help="conntrack_max: entries per table (default 65536)")

    lst = sub.add_parser("list", help="list tracked flows (like conntrack -L)")
    _add_pin_dir(lst)
    lst.add_argument("-o", "--output", choices=("proc", "conntrack", "json"), default="proc")
    _add_filters(lst)

    st = sub.add_parser("stats", help="counters (like conntrack -S)")
    _add_pin_dir(st)
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")

    demo = sub.add_parser("demo", help="run ctbpf on a built-in lab of network namespaces")
    demo.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    return parser


def cmd_run(args) -> int:
    from .daemon import run  # noqa: PLC0415

    return run(args)


def cmd_list(args) -> int:
    from . import formats, pins, table  # noqa: PLC0415
    from .filters import FlowFilter  # noqa: PLC0415

    flt = FlowFilter.from_args(args)
    pin_dir = pins.require_existing(pins.resolve(args.pin_dir))
    flows = [f for f in table.read_flows(pin_dir) if flt.matches(f)]
    flows.sort(key=lambda f: (f.proto, f.orig.src, f.orig.sport or 0, f.orig.dst, f.orig.dport or 0))
    if args.output == "json":
        print(formats.json_text(flows))
        return 0
    line = formats.proc_line if args.output == "proc" else formats.conntrack_line
    out = sys.stdout
    for f in flows:
        out.write(line(f) + "\n")
    if args.output == "conntrack":
        print(f"ctbpf v{__version__}: {len(flows)} flow entries have been shown.", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    from . import pins, stats, table  # noqa: PLC0415

    pin_dir = pins.require_existing(pins.resolve(args.pin_dir))
    s = stats.summary(stats.read_counters(pin_dir), table.count_entries(pin_dir))
    print(json.dumps(s) if args.output == "json" else stats.text(s))
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main  # noqa: PLC0415

    return demo_main(keep=args.keep)


COMMANDS = {"run": cmd_run, "list": cmd_list, "stats": cmd_stats, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ctbpf: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except CtbpfError as e:
        print(f"ctbpf: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except PermissionError as e:
        print(f"ctbpf: error: {e.strerror.lower()} on {e.filename}: ctbpf needs root "
              f"(CAP_BPF) to read the maps", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            print(f"ctbpf: error: {e.strerror}: ctbpf needs root (CAP_BPF)", file=sys.stderr)
        else:
            print(f"ctbpf: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
