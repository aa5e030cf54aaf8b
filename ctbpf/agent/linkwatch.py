"""Interfaces that disappear while the agent runs (a container's veth
deleted, a NIC unplugged): the kernel detaches our programs with them, and
the agent lets them go with one line, its other interfaces untouched. An
interface that comes back under the same name is not attached again: that
is a restart's decision."""

from __future__ import annotations

import logging
import socket
import sys
import time

log = logging.getLogger(__name__)

INTERVAL = 0.5   # seconds between two looks: a removal is reported within a second


class LinkWatch:
    name = "linkwatch"

    def __init__(self) -> None:
        self._daemon = None
        self._next = 0.0
        self._known: dict[str, int] = {}

    def start(self, daemon) -> None:
        self._daemon = daemon
        self._known = daemon.datapath.attached_indexes()
        self._next = time.monotonic() + INTERVAL

    def due(self) -> float:
        return self._next

    def run_once(self, now: float) -> None:
        self._next = now + INTERVAL
        dp = self._daemon.datapath
        for name, index in list(self._known.items()):
            if _ifindex(name) == index:
                continue
            del self._known[name]
            dp.forget_iface(name)
            left = sorted(self._known)
            print(f"ctbpf: interface {name} is gone: no longer tracked there; "
                  f"{'still tracking on ' + ', '.join(left) if left else 'no interface left'}",
                  file=sys.stderr, flush=True)
            ifaces = self._daemon.status.get("ifaces")
            if isinstance(ifaces, list) and name in ifaces:
                self._daemon.write_status(ifaces=[i for i in ifaces if i != name])
        # A veth's peer that gets or loses GRO or an XDP program changes
        # whether native XDP may forward into it.
        if dp.fast_path_changed():
            no_xmit = dp.set_fast_path_ifaces(list(dp.fast_ifaces))
            log.info("fast path: interfaces that cannot send XDP frames now: %s",
                     ", ".join(no_xmit) or "none")

    def stop(self) -> None:
        self._daemon = None


def _ifindex(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None

