"""The sweeper's expiry index: raw flow keys grouped by the second in which
they come due.

Keys arrive from the datapath's ct_timers ring (struct ct_timer records: a
key and the expiry the datapath just gave the entry, see bpf/abi.h), from a
walk of the tables when the index is (re)built, and from the sweep program
for entries that saw traffic since they were indexed. A slot holds its keys
back to back in one bytearray: 40 bytes per key, no object per key, and a
due slot goes to the kernel as it is.

A key may sit in several slots (indexed at creation, again when a TCP state
shortened its timeout); each copy is checked against the live entry when it
comes due, so a duplicate costs one lookup, never a wrong delete.
"""

from __future__ import annotations

import ctypes
import heapq

from ctbpf import abi

KEY_SIZE = ctypes.sizeof(abi.CtKey)
TIMER_SIZE = ctypes.sizeof(abi.CtTimer)
TIMER_EXPIRES_OFFSET = abi.CtTimer.expires.offset
NS = 1_000_000_000
SHIFT = abi.TICK_SHIFT


def due_second(expires: int) -> int:
    """The slot of an expiry (ticks, as ct_entry keeps it): the first whole
    second at or after the instant it stands for."""
    return -(-(expires << SHIFT) // NS)


class ExpiryIndex:
    """Keys by due second; pop_due() hands out every key due by a time."""

    def __init__(self) -> None:
        self._slots: dict[int, bytearray] = {}
        self._heap: list[int] = []      # the seconds of the slots, smallest first
        self.keys = 0                   # keys held, duplicates included

    def __len__(self) -> int:
        return self.keys

    def clear(self) -> None:
        self._slots.clear()
        self._heap.clear()
        self.keys = 0

    def _slot(self, second: int) -> bytearray:
        slot = self._slots.get(second)
        if slot is None:
            slot = self._slots[second] = bytearray()
            heapq.heappush(self._heap, second)
        return slot

    def add(self, key, expires: int) -> None:
        """Index one raw key (KEY_SIZE bytes, any buffer) under its expiry (ticks)."""
        self._slot(due_second(expires)).extend(key)
        self.keys += 1

    def add_keys(self, keys, expiries) -> None:
        """Index raw keys (back to back) under their expiries (ticks), in order."""
        self._file(memoryview(keys), 0, KEY_SIZE, expiries)

    def add_timers(self, records, count: int, stride: int, offset: int = 0,
                   clean: bool = True) -> int:
        """Index `count` ct_timer records laid out every `stride` bytes from
        `offset` in a buffer (a ring chunk: the payload follows an 8-byte
        header). With clean=False, records whose u32 header word has the
        ring's DISCARD bit are skipped. Returns the records indexed."""
        mv = memoryview(records)
        if count <= 0:
            return 0
        if stride % 8 or offset % 8 or TIMER_EXPIRES_OFFSET % 4:
            raise ValueError("ct_timer records must be 8-byte aligned")
        words = mv[:count * stride].cast("I")
        expiries = words[(offset + TIMER_EXPIRES_OFFSET) // 4::stride // 4].tolist()
        skip = None
        if not clean:
            from ctbpf.datapath.ringbuf import DISCARD_BIT  # only rings have headers
            headers = mv[:count * stride].cast("I")[(offset - 8) // 4::stride // 4].tolist()
            skip = [h & DISCARD_BIT for h in headers]
        return self._file(mv, offset, stride, expiries, skip)

    def _file(self, mv: memoryview, first: int, stride: int, expiries, skip=None) -> int:
        """File the key at first + i * stride under expiries[i], for each i
        not marked in skip. Returns how many were filed."""
        last_second, slot = None, None
        added = 0
        for i, expires in enumerate(expiries):
            if skip is not None and skip[i]:
                continue
            second = -(-(expires << SHIFT) // NS)
            if second != last_second:   # runs of one second are the common case
                slot, last_second = self._slot(second), second
            at = first + i * stride
            slot.extend(mv[at:at + KEY_SIZE])
            added += 1
        self.keys += added
        return added

    def next_due(self) -> int | None:
        """The earliest due second held, or None when empty."""
        return self._heap[0] if self._heap else None

    def pop_due(self, now_ns: int) -> bytearray:
        """Remove and return, back to back, every key due at or before now_ns
        (its slot's second has passed), earliest slots first."""
        out = bytearray()
        heap, slots = self._heap, self._slots
        while heap and heap[0] * NS <= now_ns:
            second = heapq.heappop(heap)
            slot = slots.pop(second)
            if out:
                out += slot
            else:
                out = slot
        self.keys -= len(out) // KEY_SIZE
        return out

    def memory_bytes(self) -> int:
        """Bytes the index's key storage holds (not Python's overhead)."""
        return self.keys * KEY_SIZE
