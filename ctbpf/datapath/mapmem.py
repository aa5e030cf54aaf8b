"""What a BPF map costs, as the kernel charges it: the `memlock` line of
/proc/self/fdinfo/<fd>, the map's own map_mem_usage().

For a BPF_F_NO_PREALLOC hash that figure moves by exactly one element
(struct htab_elem, 48 bytes, + key + value, each rounded up to 8, + the
8-byte llist node of its allocator) per entry present, over a base that is
fixed for the map (its buckets and locks). So once the base is known, from
one exact count, the entries present are an O(1) read instead of a walk of
the table (ctbpf/agent/growth.py reads it every few seconds).
"""

from __future__ import annotations

import os

from ctbpf.datapath import bpfsys

HTAB_ELEM = 48
LLIST_NODE = 8


def memlock(fd: int) -> int:
    """Bytes the kernel charges for the map open as fd."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    raise OSError(f"no memlock line in the fdinfo of fd {fd}")


def element_bytes(info: bpfsys.MapInfo) -> int:
    """What one entry of a non-preallocated hash adds to memlock()."""
    return HTAB_ELEM + -(-info.key_size // 8) * 8 + -(-info.value_size // 8) * 8 + LLIST_NODE


class HashCount:
    """Entries present in one non-preallocated hash (by map id), from its
    memlock; calibrate() with an exact count first (a batch read)."""

    def __init__(self) -> None:
        self._base: dict[int, int] = {}

    def calibrate(self, fd: int) -> int:
        info = bpfsys.map_info(fd)
        _, _, count = bpfsys.lookup_batch(fd, info.key_size, info.value_size, info.max_entries)
        self._base[info.id] = memlock(fd) - count * element_bytes(info)
        return count

    def count(self, fd: int) -> int:
        info = bpfsys.map_info(fd)
        if info.id not in self._base:
            return self.calibrate(fd)
        return max(0, (memlock(fd) - self._base[info.id]) // element_bytes(info))


def pinned_count(counter: HashCount, path: str) -> int:
    fd = bpfsys.obj_get(path)
    try:
        return counter.count(fd)
    finally:
        os.close(fd)
