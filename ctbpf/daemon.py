"""`ctbpf run`: load, attach, pin, then wait in the foreground until told
to stop, and detach cleanly whatever stops it."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from . import pins
from .loader import Datapath, ifindex, require_root

log = logging.getLogger(__name__)


def run(args) -> int:
    require_root("ctbpf run")
    for name in args.iface:  # fail before loading anything
        ifindex(name)
    if len(set(args.iface)) != len(args.iface):
        from .errors import UsageError  # noqa: PLC0415

        raise UsageError("an interface is given twice with --iface")
    pin_dir = pins.resolve(args.pin_dir, mount=True)

    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Datapath(pin_dir, args.max).load() as dp:
            modes = []
            for name in args.iface:
                modes.append(f"{name} ({dp.attach_xdp(name, args.xdp_mode)})")
                if args.egress:
                    dp.attach_tc_egress(name)
            print(f"ctbpf: tracking on {', '.join(modes)}{' with egress' if args.egress else ''}; "
                  f"maps in {pins.display(pin_dir)}", flush=True)
            while not stop.wait(1.0):
                pass
            log.info("signal %s: detaching", received[0] if received else "?")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("ctbpf: detached", file=sys.stderr, flush=True)
    return 0
