"""The `ctbpf` command: one outermost place that turns errors into one
line and an exit code (0 ok, 1 failure, 2 usage), like conntrack-tools."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from ctbpf import __version__
from ctbpf.cli.commands import MODULES
from ctbpf.errors import CtbpfError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"ctbpf: error: {message} (see ctbpf --help)\n")


def load_commands(extra=None):
    commands = {name: importlib.import_module(f"ctbpf.cli.commands.{name}") for name in MODULES}
    return {**commands, **(extra or {})}


def build_parser(commands=None) -> argparse.ArgumentParser:
    parser = _Parser(prog="ctbpf", description="Connection tracking on the NIC path (XDP/TC eBPF) "
                                               "with netfilter conntrack semantics.")
    parser.add_argument("--version", action="version", version=f"ctbpf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module in (commands or load_commands()).items():
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def main(argv: list[str] | None = None, extra: dict | None = None) -> int:
    """extra: more commands (name -> module with HELP, add_arguments, run),
    listed after the CLI's own: the lab's `demo` comes in this way
    (ctbpf.main), so that the CLI never imports the lab."""
    commands = load_commands(extra)
    args = build_parser(commands).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ctbpf: %(message)s")
    try:
        return commands[args.command].run(args)
    except CtbpfError as e:
        print(f"ctbpf: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES):
            where = f" on {e.filename}" if e.filename else ""
            print(f"ctbpf: error: {e.strerror}{where}: ctbpf needs root (CAP_BPF)",
                  file=sys.stderr)
        else:
            print(f"ctbpf: error: {e}", file=sys.stderr)
        return 1
