"""Arguments several commands share."""

import argparse


def add_pin_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pin-dir", metavar="DIR",
                   help="bpffs directory of the maps (default: /sys/fs/bpf/ctbpf, or "
                        "/sys/fs/bpf/ctbpf@NETNS inside a named network namespace)")


def add_filters(p: argparse.ArgumentParser) -> None:
    """The flow filters of `conntrack -L`, on the original direction."""
    p.add_argument("-p", "--proto", help="protocol name or number")
    p.add_argument("--state", help="TCP state (SYN_SENT, ESTABLISHED, ...)")
    p.add_argument("--src", help="original source address or prefix")
    p.add_argument("--dst", help="original destination address or prefix")
    p.add_argument("--sport", help="original source port")
    p.add_argument("--dport", help="original destination port")


def existing_pin_dir(args):
    """The pin dir of a running (or kept) tracker in this namespace; waits a
    few seconds for one that is still starting (ctbpf/agent/readiness.py)."""
    from ctbpf.datapath import pins  # noqa: PLC0415
    from ctbpf.agent import readiness

    return readiness.wait_ready(pins.resolve(args.pin_dir))
