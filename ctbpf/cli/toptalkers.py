"""Per-flow totals of a whole table as arrays, and the busiest flows between
two of them: what keeps one `ctbpf top` refresh under a second at a million
flows (no Python object per flow, only per shown talker).

A flow is known by a 64-bit fingerprint of its raw key. Two flows with the
same fingerprint (about one chance in 10^7 per frame at a million flows)
would show a wrong rate for one frame; nothing else depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def _mix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: every input bit reaches every output bit."""
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


def fingerprints(keys: np.ndarray) -> np.ndarray:
    """A u64 per raw key (a structured array whose rows are 8-byte multiples)."""
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(len(keys), -1)
    h = np.full(len(keys), 0x9E3779B97F4A7C15, np.uint64)
    for col in range(words.shape[1]):
        h = _mix(h ^ words[:, col])
    return h


@dataclass(frozen=True)
class FlowTotals:
    """Both directions' packets and bytes of every flow, by fingerprint."""

    ids: np.ndarray        # u64
    packets: np.ndarray    # u64
    bytes: np.ndarray      # u64
    labels: Callable[[np.ndarray], list[str]]   # rows -> their flows' labels

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_samples(cls, flows: dict) -> "FlowTotals":
        """From {flow key: FlowSample} (crafted samples, in tests)."""
        items = list(flows.items())
        return cls(ids=np.array([hash(k) & (2**64 - 1) for k, _ in items], np.uint64),
                   packets=np.array([s.packets for _, s in items], np.uint64),
                   bytes=np.array([s.bytes for _, s in items], np.uint64),
                   labels=lambda rows: [items[i][1].label for i in rows.tolist()])


def deltas(prev: FlowTotals, cur: FlowTotals) -> tuple[np.ndarray, np.ndarray]:
    """(packets, bytes) of each of cur's flows since prev. A new flow, or one
    whose counters went back (deleted and made again), counts from 0."""
    if not len(prev):
        return cur.packets, cur.bytes
    order = np.argsort(prev.ids)
    known = prev.ids[order]
    at = order[np.minimum(np.searchsorted(known, cur.ids), len(known) - 1)]
    hit = prev.ids[at] == cur.ids
    pp, pb = np.where(hit, prev.packets[at], 0), np.where(hit, prev.bytes[at], 0)
    grew = hit & (cur.packets >= pp) & (cur.bytes >= pb)
    # where not grew the subtraction may wrap; np.where then takes the total
    return (np.where(grew, cur.packets - pp, cur.packets),
            np.where(grew, cur.bytes - pb, cur.bytes))


def busiest(primary: np.ndarray, secondary: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest by (primary, secondary), in no order; ties at
    the cut go by table order."""
    n = len(primary)
    if n <= k:
        return np.arange(n)
    cut = np.partition(primary, n - k)[n - k]
    above = np.flatnonzero(primary > cut)
    tie = np.flatnonzero(primary == cut)
    need = k - len(above)
    if len(tie) > need:
        tie = tie[np.argpartition(secondary[tie], len(tie) - need)[len(tie) - need:]]
    return np.concatenate([above, tie])
