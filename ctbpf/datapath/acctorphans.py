"""Counter records (ct_acct) whose flow is gone without a DESTROY path.

Every way the datapath or the sweeper removes an entry also removes its
record, except one: ct_new is an LRU, and the kernel evicts from it without
telling anyone. A flood of new flows made while acct is on leaves one
record per evicted flow (a new flow of the same key resets it). The
sweeper's walks remove them (ctbpf/agent/sweeper.py): the records are read
first, then the tables, so a record whose flow was made meanwhile is seen
with its flow (the datapath makes the entry before the record).
"""

from __future__ import annotations

import os
from pathlib import Path

from ctbpf.datapath import bpfsys
from ctbpf.datapath.rawmaps import KEY_SIZE, TABLES

ACCT_MAP = "ct_acct"


def _keys(pin_dir: Path, name: str) -> tuple[set[bytes], int]:
    fd = bpfsys.obj_get(str(pin_dir / name))
    try:
        info = bpfsys.map_info(fd)
        keys, _, count = bpfsys.lookup_batch(fd, info.key_size, info.value_size,
                                             info.max_entries)
    finally:
        os.close(fd)
    mv = memoryview(keys)
    return {bytes(mv[i * KEY_SIZE:(i + 1) * KEY_SIZE]) for i in range(count)}, count


def remove_orphans(pin_dir: Path) -> int:
    """Delete the records of flows in neither table; returns how many."""
    if not (pin_dir / ACCT_MAP).exists():
        return 0
    records, count = _keys(pin_dir, ACCT_MAP)
    if not count:
        return 0
    for name in TABLES:
        records -= _keys(pin_dir, name)[0]
        if not records:
            return 0
    fd = bpfsys.obj_get(str(pin_dir / ACCT_MAP))
    try:
        return bpfsys.delete_batch(fd, b"".join(records), KEY_SIZE)
    finally:
        os.close(fd)
