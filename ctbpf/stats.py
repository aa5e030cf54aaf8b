"""Per-CPU counters summed over CPUs, named from the ABI header."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from . import abi, bpfsys

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


def summary(counters: list[int], entries: dict[str, int]) -> dict:
    """The counters users read: packets per user-land state, invalid per
    reason, the tracker's own events, entries per table."""
    states = {name: counters[v] for v, name in abi.PKT_STATE_NAMES.items()}
    events = {name: counters[v] for v, name in abi.STAT_NAMES.items() if not name.startswith("pkt_")}
    invalid = {name: counters[BASE + v] for v, name in abi.INVALID_REASON_NAMES.items()}
    return {"packets": states, "invalid": invalid, "events": events,
            "entries": dict(entries, total=sum(entries.values()))}


def text(s: dict) -> str:
    lines = []
    for section in ("packets", "invalid", "events", "entries"):
        lines.append(f"{section}:")
        lines += [f"  {k:<16} {v}" for k, v in s[section].items()]
    return "\n".join(lines)
