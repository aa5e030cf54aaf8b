"""Daemon service: ct_assured grows with the flows it holds, ct_acct with
the counter records it holds.

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
growth takes. ct_acct is sized and grown the same way, up to what both
tables hold: with acct off (the default) it holds nothing and stays at its
first size; a flow made while it is full counts nothing (acct_lost).
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
        if dp is None or dp.assured is None or dp.acct is None:
            return
        sz = sizing.sizes(dp.max_entries, dp.new_max, dp.assured, acct=dp.acct)
        next_assured, next_acct = sz.grown(), sz.acct_grown()
        if next_assured is None and next_acct is None:
            return
        try:
            held = mapmem.pinned_count(self._count, str(dp.pin_dir / "ct_assured"))
            records = mapmem.pinned_count(self._count, str(dp.pin_dir / "ct_acct"))
        except OSError as e:
            log.warning("cannot read the tables' occupancy: %s", e)
            return
        assured = next_assured.assured if sz.should_grow(held) else sz.assured
        acct = next_acct.acct if sz.acct_should_grow(records) else sz.acct
        if (assured, acct) == (sz.assured, sz.acct):
            return
        from ctbpf.agent.resize import grow_here  # noqa: PLC0415 - resize imports the daemon's room

        try:
            line = grow_here(dp.pin_dir, dp, assured, acct)
        except Exception as e:  # noqa: BLE001 - a failed growth leaves the running tables
            self.failed = str(e)
            log.error("growing ct_assured to %d and ct_acct to %d entries failed: %s",
                      assured, acct, e)
            self._due = now + 30 * self.interval
            return
        self.grown += 1
        self._daemon.status["assured_size"] = dp.assured
        self._daemon.status["acct_size"] = dp.acct
        print(f"ctbpf: ct_assured {held} of {sz.assured} entries, ct_acct {records} of "
              f"{sz.acct}: {line}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass
