"""Pinned maps as raw bytes: open by pin, read whole tables and per-CPU
arrays in batches, write them back, and say what is pinned in a directory
(layout version, size, entries present and live). Used to adopt, rebuild
and migrate a datapath without decoding every entry.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys, configmap

log = logging.getLogger(__name__)

TABLES = ("ct_new", "ct_assured")
KEY_SIZE = ctypes.sizeof(abi.CtKey)
ENTRY_SIZE = ctypes.sizeof(abi.CtEntry)
STATS_SIZE = ctypes.sizeof(abi.CtCounters)
STAT_SWEPT = abi.const("CT_STAT_SWEPT")
STAT_DELETE = abi.const("CT_STAT_DELETE")
EXPIRES_OFFSET = abi.CtEntry.expires.offset
BPF_MAP_UPDATE_BATCH = 26


# --------------------------------------------------------------------------
# maps


def open_pinned(pin_dir: Path, name: str) -> int:
    return bpfsys.obj_get(str(pin_dir / name))


def pinned_info(pin_dir: Path, name: str) -> bpfsys.MapInfo:
    fd = open_pinned(pin_dir, name)
    try:
        return bpfsys.map_info(fd)
    finally:
        os.close(fd)


def table_ids(pin_dir: Path) -> set[int]:
    """Map ids of the two flow tables pinned in pin_dir (empty if none)."""
    ids = set()
    for name in TABLES:
        try:
            ids.add(pinned_info(pin_dir, name).id)
        except (bpfsys.BpfError, FileNotFoundError):
            pass
    return ids


def update_batch(fd: int, keys: bytes, values: bytes, key_size: int, value_size: int,
                 flags: int = bpfsys.BPF_ANY) -> int:
    """Write many entries in one call; returns how many were written (a
    failure stops at the first entry that failed: E2BIG for a full hash)."""
    count = len(keys) // key_size
    if count == 0:
        return 0
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    attr = bpfsys._BatchAttr(keys=ctypes.addressof(kbuf), values=ctypes.addressof(vbuf),
                             count=count, map_fd=fd, elem_flags=flags)
    try:
        bpfsys._bpf(BPF_MAP_UPDATE_BATCH, attr, "batch update")
    except bpfsys.BpfError as e:
        log.info("batch update stopped after %d of %d: %s", attr.count, count, e)
    return attr.count


def read_table(fd: int) -> dict[bytes, bytes]:
    """A whole table as {raw key: raw entry}."""
    info = bpfsys.map_info(fd)
    keys, values, count = bpfsys.lookup_batch(fd, info.key_size, info.value_size,
                                              info.max_entries)
    ks, vs = info.key_size, info.value_size
    return {keys[i * ks:(i + 1) * ks]: values[i * vs:(i + 1) * vs] for i in range(count)}


def read_tables(fds: dict[str, int]) -> dict[bytes, tuple[str, bytes]]:
    """Both tables as {raw key: (table, raw entry)}. A key met in both (a
    move between tables caught half way) keeps its ct_assured copy."""
    out: dict[bytes, tuple[str, bytes]] = {}
    for name in TABLES:  # ct_assured last: it wins
        for k, v in read_table(fds[name]).items():
            out[k] = (name, v)
    return out


def expires_ns(entry: bytes) -> int:
    """When an entry of this layout stops counting (CLOCK_MONOTONIC, ns)."""
    return abi.tick_ns(int.from_bytes(entry[EXPIRES_OFFSET:EXPIRES_OFFSET + 4], sys.byteorder))


def _old_expires_ns(entry: bytes) -> int:
    """The same for layouts 1 to 3: a u64 of ns at the entry's start."""
    return int.from_bytes(entry[:8], sys.byteorder)


def read_percpu(fd: int, value_size: int) -> bytearray:
    """The one element of a per-CPU array, every CPU's copy back to back."""
    stride = (value_size + 7) & ~7
    buf = ctypes.create_string_buffer(stride * bpfsys.possible_cpus())
    bpfsys.lookup(fd, ctypes.c_uint32(0), buf)
    return bytearray(buf.raw)


def write_percpu(fd: int, raw: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(raw), len(raw))
    bpfsys.update(fd, ctypes.c_uint32(0), buf)


def _u64s(raw: bytes | bytearray) -> memoryview:
    return memoryview(raw).cast("Q")


# --------------------------------------------------------------------------
# what is pinned


@dataclass(frozen=True)
class PinnedState:
    version: int
    max_entries: int
    key_size: int
    value_size: int
    entries: dict[str, int]     # present entries per table (live or not)
    live: dict[str, int]        # live entries per table
    table_ids: frozenset[int]
    new_max: int | None = None  # ct_new's size (layout 4 on; before, it was max)
    assured: int | None = None  # ct_assured's size now (layout 4 on)

    @property
    def total(self) -> int:
        return sum(self.entries.values())


def inspect(pin_dir: Path) -> PinnedState | None:
    """The pinned maps' layout version, size and contents; None when no
    tables are pinned there."""
    if not all((pin_dir / name).exists() for name in TABLES):
        return None
    version, raw_config = -1, b""
    if (pin_dir / "ct_config").exists():
        fd = open_pinned(pin_dir, "ct_config")
        try:
            raw_config = configmap.read_any_layout(fd)
            version = configmap.version_in(raw_config)
        finally:
            os.close(fd)
    entries, live, ids, sizes = {}, {}, set(), {}
    now = time.monotonic_ns()
    info = None
    for name in TABLES:
        fd = open_pinned(pin_dir, name)
        try:
            info = bpfsys.map_info(fd)
            ids.add(info.id)
            _, values, count = bpfsys.lookup_batch(fd, info.key_size, info.value_size,
                                                   info.max_entries)
        finally:
            os.close(fd)
        entries[name] = count
        sizes[name] = info.max_entries
        live[name] = _count_live(values, count, info.value_size, now, version)
    # Up to layout 3 each table had max entries; since, ct_config says max
    # (ct_assured may be smaller: it grows).
    total = info.max_entries
    if version >= 4:
        total = configmap.max_in(raw_config) or sizes["ct_new"] + sizes["ct_assured"]
    return PinnedState(version, total, info.key_size, info.value_size, entries, live,
                       frozenset(ids), sizes["ct_new"] if version >= 4 else None,
                       sizes["ct_assured"] if version >= 4 else None)


def _count_live(values: bytes, count: int, value_size: int, now: int, version: int) -> int:
    """Entries whose expiry (where their layout keeps it) is still ahead."""
    if count == 0 or value_size < 8:
        return count
    if version < 4:
        return sum(1 for i in range(count)
                   if _old_expires_ns(values[i * value_size:(i + 1) * value_size]) > now)
    if value_size % 4 == 0:   # every expiry at once, no per-entry slicing
        expiries = memoryview(values).cast("I")[EXPIRES_OFFSET // 4::value_size // 4][:count]
        tick = abi.ticks(now)
        return sum(1 for e in expiries if e > tick)
    return sum(1 for i in range(count)
               if expires_ns(values[i * value_size:(i + 1) * value_size]) > now)


def compatible(state: PinnedState) -> bool:
    return (state.version == abi.LAYOUT_VERSION and state.key_size == KEY_SIZE
            and state.value_size == ENTRY_SIZE)
