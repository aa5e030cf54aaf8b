"""Daemon service: ct_assured grows with the flows it holds.

ct_assured's elements are allocated as flows come, but its bucket array is
allocated whole for its max_entries (16 bytes each, rounded up to a power of
two): a table made for conntrack_max from the start would spend 16 MiB at a
million whatever it holds. So it is made small (ctbpf/datapath/sizing.py)
and, when seven eighths full, rebuilt four times larger by the live rebuild
that `ctbpf set max=N` uses (ctbpf/agent/rebuild.py: every entry and
counter kept, the programs swapped, tracking never stopped), up to max
minus new_max. Between a table's filling and its growth, a flow that
becomes ASSURED and finds no room stays tracked in ct_new, counted as
insert_failed; growing at seven eighths leaves room (2,000 flows at the first size) for the few seconds a
growth takes.
"""

from __future__ import annotations

import logging
import sys
import time

from ctbpf.datapath import mapmem, sizing

log = logging.getLogger(__name__)

#: Seconds between two looks at ct_assured's occupancy (one fdinfo read).
INTERVAL = 2.0


class GrowthService:
    name = "growth"

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._daemon = None
        self._due = 0.0
        self._count = mapmem.HashCount()
        self.grown = 0              # growths done, for the status and the tests
        self.failed = ""            # the last growth's error, if any

    def start(self, daemon) -> None:
        self._daemon = daemon
        self._due = time.monotonic() + self.interval

    def due(self) -> float:
        return self._due

    def run_once(self, now: float) -> None:
        self._due = now + self.interval
        dp = self._daemon.datapath
        if dp is None or dp.assured is None:
            return
        sz = sizing.sizes(dp.max_entries, dp.new_max, dp.assured)
        nxt = sz.grown()
        if nxt is None:
            return
        try:
            held = mapmem.pinned_count(self._count, str(dp.pin_dir / "ct_assured"))
        except OSError as e:
            log.warning("cannot read ct_assured's occupancy: %s", e)
            return
        if not sz.should_grow(held):
            return
        from ctbpf.agent.resize import grow_here  # noqa: PLC0415 - resize imports the daemon's room

        try:
            line = grow_here(dp.pin_dir, dp, nxt.assured)
        except Exception as e:  # noqa: BLE001 - a failed growth leaves the running tables
            self.failed = str(e)
            log.error("growing ct_assured to %d entries failed: %s", nxt.assured, e)
            self._due = now + 30 * self.interval
            return
        self.grown += 1
        self._daemon.status["assured_size"] = dp.assured
        print(f"ctbpf: ct_assured {held} of {sz.assured} entries: {line}", file=sys.stderr,
              flush=True)

    def stop(self) -> None:
        pass
