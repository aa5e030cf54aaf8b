"""The program `ctbpf`: the CLI's commands, plus `ctbpf demo` from the lab.

This is the one module that joins the product and its demo lab. The
datapath, the agent, the policy and the CLI never import ctbpf.lab
(tests/layout checks it), so nothing of the lab runs on a production host
unless someone types `ctbpf demo`.
"""

from __future__ import annotations

from ctbpf.cli import main as cli
from ctbpf.lab import command as demo

EXTRA = {demo.NAME: demo}


def build_parser():
    return cli.build_parser(cli.load_commands(EXTRA))


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, EXTRA)
