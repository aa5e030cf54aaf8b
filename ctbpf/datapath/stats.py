"""Per-CPU counters summed over CPUs, named from the ABI header, and the one
counter the datapath cannot keep itself: early_drop.

early_drop is the number of entries the LRU table (ct_new) evicted to make
room for new flows, the kernel's `early_drop`. BPF does not report an LRU
eviction, so it is derived from the books. Every entry ever created is
either still present in one of the two tables, or left through a door that
is counted; moves between the tables (promote, demote) cancel out:

    insert = present(ct_new) + present(ct_assured)
             + expired_seen + delete + swept + user_delete + early_drop

so early_drop = insert - expired_seen - delete - swept - user_delete - present,
where present counts every entry in the maps, expired or not (an expired
entry is still there until a packet or the sweeper removes it), and
user_delete is CT_STAT_USER_DELETE (`ctbpf delete` and `flush` delete
through the pinned sweep program, which counts them). A resize or
migration carries the counters and books whatever it does not carry over
(see ctbpf/agent/rebuild.py), so the sum stays exact across restarts.

It is exact when the datapath is quiet during the read. The counters and
the tables cannot be read in one instant, so read() reads the counters, the
tables, and the counters again, up to three times, until nothing on the
books moved in between; under traffic the value is off by at most the
entries created or removed during the read (milliseconds).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys, occupancy

BASE = abi.const("CT_STAT_INVALID_BASE")
COUNT = abi.const("CT_STAT_MAX")


def read_counters(pin_dir: Path) -> list[int]:
    """ct_stats summed over every possible CPU, indexed by enum ct_stat."""
    fd = bpfsys.obj_get(str(pin_dir / "ct_stats"))
    try:
        ncpu = bpfsys.possible_cpus()
        size = ctypes.sizeof(abi.CtCounters)
        buf = ctypes.create_string_buffer(size * ncpu)
        bpfsys.lookup(fd, ctypes.c_uint32(0), buf)
    finally:
        os.close(fd)
    totals = [0] * COUNT
    for cpu in range(ncpu):
        c = abi.CtCounters.from_buffer_copy(buf.raw, cpu * size)
        for i in range(COUNT):
            totals[i] += c.count[i]
    return totals


# Counters in the early_drop sum (see the module docstring).
_INSERT = abi.const("CT_STAT_INSERT")
_LEAVE = tuple(abi.const(n) for n in ("CT_STAT_EXPIRED_SEEN", "CT_STAT_DELETE", "CT_STAT_SWEPT")
               ) + tuple(abi.CONSTS[n] for n in ("CT_STAT_USER_DELETE",) if n in abi.CONSTS)
_BOOKS = (_INSERT, *_LEAVE)
READ_ATTEMPTS = 3


def early_drop(counters: list[int], present: int) -> int:
    """Entries evicted from the LRU table, from the books (module docstring)."""
    return max(0, counters[_INSERT] - sum(counters[i] for i in _LEAVE) - present)


def read(pin_dir: Path) -> dict:
    """summary() of a tracker's maps, early_drop included (see above)."""
    for _ in range(READ_ATTEMPTS):
        before = read_counters(pin_dir)
        live, present = occupancy.live_counts(pin_dir)
        after = read_counters(pin_dir)
        if all(before[i] == after[i] for i in _BOOKS):
            break
    return summary(before, live, early_drop=early_drop(before, present))


def summary(counters: list[int], entries: dict[str, int], early_drop: int | None = None) -> dict:
    """The counters users read: packets per user-land state, invalid per
    reason, the tracker's own events (early_drop too when given), entries
    per table."""
    states = {name: counters[v] for v, name in abi.PKT_STATE_NAMES.items()}
    events = {name: counters[v] for v, name in abi.STAT_NAMES.items() if not name.startswith("pkt_")}
    if early_drop is not None:
        events["early_drop"] = early_drop
    invalid = {name: counters[BASE + v] for v, name in abi.INVALID_REASON_NAMES.items()}
    return {"packets": states, "invalid": invalid, "events": events,
            "entries": dict(entries, total=sum(entries.values()))}


def text(s: dict) -> str:
    lines = []
    for section in ("packets", "invalid", "events", "entries"):
        lines.append(f"{section}:")
        lines += [f"  {k:<16} {v}" for k, v in s[section].items()]
    return "\n".join(lines)
