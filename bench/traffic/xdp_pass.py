"""Attach an empty XDP program (XDP_PASS) to interfaces of the current
network namespace, print one ready line, and hold it until SIGINT/SIGTERM
or --max-seconds; detach on the way out. The forwarding benchmark uses it
to price the XDP hook itself on veth, apart from what ctbpf does in it.

    python3 bench/traffic/xdp_pass.py --iface cli0 --iface srv0 [--mode native|generic]
"""

import argparse
import signal
import sys
import threading

from bcc import BPF

SRC = "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }"


def hold(src: str, fn_name: str) -> BPF:
    """Attach function `fn_name` of BPF C `src` to the --iface interfaces,
    print the ready line, hold until SIGINT/SIGTERM or --max-seconds, and
    detach; returns the BPF object (its maps still readable). Shared with
    xdp_drop.py."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", action="append", required=True)
    ap.add_argument("--mode", choices=("native", "generic"), default="native")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    a = ap.parse_args()
    flags = BPF.XDP_FLAGS_DRV_MODE if a.mode == "native" else BPF.XDP_FLAGS_SKB_MODE
    b = BPF(text=src)
    fn = b.load_func(fn_name, BPF.XDP)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    done = []
    try:
        for i in a.iface:
            b.attach_xdp(i, fn, flags)
            done.append(i)
        print(f"{fn_name}: attached ({a.mode}) to {', '.join(done)}", flush=True)
        stop.wait(a.max_seconds)
    finally:
        for i in done:
            b.remove_xdp(i, flags)
    return b


def main() -> int:
    hold(SRC, "xdp_pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
