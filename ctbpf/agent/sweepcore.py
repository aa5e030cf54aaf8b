"""The sweeper's arithmetic, apart from its threads: which entries of a
batch have expired, the next interval from what a pass found, and the
statistics a pass leaves (exported as ctbpf_sweep_* metrics).
"""

from __future__ import annotations

import ctypes
import itertools
import sys
from collections import deque
from dataclasses import dataclass, field

from ctbpf import abi
from ctbpf.errors import UsageError

KEY_SIZE = ctypes.sizeof(abi.CtKey)
ENTRY_SIZE = ctypes.sizeof(abi.CtEntry)
EXPIRES_OFFSET = abi.CtEntry.expires.offset

TABLES = (("ct_new", abi.const("CT_TABLE_NEW")), ("ct_assured", abi.const("CT_TABLE_ASSURED")))

#: Upper bounds (seconds) of the pass duration histogram, Prometheus style.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --------------------------------------------------------------------------
# pure helpers (unit-tested on crafted buffers)


def _bytes_view(buf) -> memoryview:
    """A flat unsigned-byte view of any buffer (bytes, bytearray, ctypes array)."""
    mv = memoryview(buf)
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def expired_indices(values, count: int, now_ns: int, entry_size: int = ENTRY_SIZE,
                    expires_offset: int = EXPIRES_OFFSET) -> list[int]:
    """Indices of the records among the first `count` of a raw values buffer
    whose u32 expiry in ticks (native byte order, at `expires_offset`) is
    <= the tick of now_ns, the datapath's own test for "expired"."""
    if count <= 0:
        return []
    mv = _bytes_view(values)
    if len(mv) < count * entry_size:
        raise ValueError(f"values buffer holds {len(mv)} bytes, not {count} x {entry_size}")
    mv = mv[:count * entry_size]
    tick = abi.ticks(now_ns)
    if entry_size % 4 == 0 and expires_offset % 4 == 0:
        # Every expiry at once: a strided u32 view, no copy, no decoding.
        expiries = mv.cast("I")[expires_offset // 4::entry_size // 4]
    else:  # a layout without 4-byte alignment: slower, still no struct decoding
        expiries = (int.from_bytes(mv[i + expires_offset:i + expires_offset + 4], sys.byteorder)
                    for i in range(0, count * entry_size, entry_size))
    return list(itertools.compress(range(count), map(tick.__ge__, expiries)))


def gather_keys(keys, indices, key_size: int = KEY_SIZE) -> bytes:
    """The raw keys at these indices of a keys buffer, back to back."""
    buf = keys if isinstance(keys, (bytes, bytearray)) else _bytes_view(keys)
    return b"".join([buf[i:i + key_size] for i in map(key_size.__mul__, indices)])


def expired_keys(keys, values, count: int, now_ns: int) -> bytes:
    """The raw keys of the expired records of a batch read."""
    return gather_keys(keys, expired_indices(values, count, now_ns))


def next_interval(current: float, scanned: int, expired: int, min_interval: float,
                  max_interval: float, high_ratio: float = 0.25,
                  low_ratio: float = 0.05) -> float:
    """The interval after a pass that found `expired` of `scanned` entries
    expired: halved when the ratio is at least high_ratio, doubled when at
    most low_ratio (or nothing was scanned), else unchanged; always within
    [min_interval, max_interval]."""
    ratio = expired / scanned if scanned else 0.0
    if scanned and ratio >= high_ratio:
        current = current / 2
    elif ratio <= low_ratio:
        current = current * 2
    return min(max(current, min_interval), max_interval)


def check_intervals(min_interval: float, max_interval: float) -> None:
    if not min_interval > 0:
        raise UsageError(f"sweep-min-interval: {min_interval:g} must be a positive "
                         f"number of seconds")
    if not max_interval >= min_interval:
        raise UsageError(f"sweep-max-interval: {max_interval:g} must be at least "
                         f"sweep-min-interval ({min_interval:g})")


# --------------------------------------------------------------------------
# statistics


@dataclass
class SweepStats:
    """What the sweeper did, for a metrics exporter or a status file.
    Totals are monotonic; ``last_*`` describe the last completed pass;
    durations are seconds."""

    passes: int = 0
    slices: int = 0
    errors: int = 0
    scanned_total: int = 0        # entries read
    expired_total: int = 0        # expired entries handed to the kernel
    deleted_total: int = 0        # entries the kernel deleted (still expired)
    kept_total: int = 0           # handed over but not deleted: traffic since the read, or gone
    deleted_by_table: dict = field(default_factory=lambda: {name: 0 for name, _ in TABLES})
    interval: float = 0.0         # seconds until the next pass, as adapted
    last_scanned: int = 0
    last_expired: int = 0
    last_deleted: int = 0
    last_duration: float = 0.0    # busy time of the pass: the sum of its slices
    last_wall: float = 0.0        # first slice start to last slice end
    last_cpu: float = 0.0         # CPU time of the sweeping thread during the pass
    last_max_slice: float = 0.0   # longest slice of the pass
    last_read: float = 0.0        # of last_duration: batch reads,
    last_scan: float = 0.0        # finding the expired keys,
    last_delete: float = 0.0      # and the in-kernel re-check and delete
    last_finished: float = 0.0    # time.monotonic() at the end of the last pass
    last_error: str = ""
    last_kind: str = ""           # "index", "walk" or "seed"
    index_passes: int = 0         # passes over the due keys only
    walks: int = 0                # passes over whole tables (seeding ones included)
    seeds: int = 0                # walks that rebuilt the index
    walk_found_total: int = 0     # overdue entries a safety walk found: the index missed them
    index_keys: int = 0           # keys in the expiry index (duplicates included)
    intake_total: int = 0         # ring records filed in the index
    intake_cpu: float = 0.0       # CPU seconds spent reading the ring, in total
    timer_lost_seen: int = 0      # CT_STAT_TIMER_LOST when last looked at
    acct_orphans_total: int = 0   # counter records of flows ct_new's LRU evicted, removed
    # histogram of pass durations: counts per DURATION_BUCKETS bound (+Inf last)
    duration_counts: list = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    recent_durations: deque = field(default_factory=lambda: deque(maxlen=128))

    def observe(self, duration: float) -> None:
        for i, bound in enumerate(DURATION_BUCKETS):
            if duration <= bound:
                break
        else:
            i = len(DURATION_BUCKETS)
        self.duration_counts[i] += 1
        self.duration_sum += duration
        self.recent_durations.append(duration)

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, the last bound being +inf."""
        out, total = [], 0
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), self.duration_counts):
            total += n
            out.append((bound, total))
        return out

    def snapshot(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()
             if k not in ("recent_durations", "duration_counts", "deleted_by_table")}
        d["deleted_by_table"] = dict(self.deleted_by_table)
        d["duration_buckets"] = [[b, n] for b, n in self.cumulative_buckets()[:-1]]
        d["duration_count"] = sum(self.duration_counts)
        d["recent_durations"] = list(self.recent_durations)
        return d
