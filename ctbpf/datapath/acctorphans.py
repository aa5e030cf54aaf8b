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
from ctbpf.datapath.table import ACCT_MAP, read_raw


def _keys(pin_dir: Path, name: str) -> set[bytes]:
    keys, _, count = read_raw(pin_dir, name)
    mv = memoryview(keys)
    return {bytes(mv[i * KEY_SIZE:(i + 1) * KEY_SIZE]) for i in range(count)}


def remove_orphans(pin_dir: Path) -> int:
    """Delete the records of flows in neither table; returns how many."""
    if not (pin_dir / ACCT_MAP).exists():
        return 0
    records = _keys(pin_dir, ACCT_MAP)
    if not records:
        return 0
    for name in TABLES:
        records -= _keys(pin_dir, name)
        if not records:
            return 0
    fd = bpfsys.obj_get(str(pin_dir / ACCT_MAP))
    try:
        return bpfsys.delete_batch(fd, b"".join(records), KEY_SIZE)
    finally:
        os.close(fd)
