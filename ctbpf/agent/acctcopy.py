"""Per-flow counters (ct_acct) across a rebuild (ctbpf.agent.rebuild).

The records go to the new tables with the entries. Between that copy and
the swap the old programs go on counting into the old records; after the
swap the new programs count into the new ones. So at the reconcile each
flow's new record gets what its old record gained since the copy, added to
what the new programs counted meanwhile, and no packet is counted twice or
lost. (The add is a read and a write: a packet the new program counts
between the two is lost from the count, a window of microseconds, once per
rebuild.)
"""

from __future__ import annotations

import ctypes
import logging
import struct

from ctbpf import abi
from ctbpf.datapath import bpfsys
from ctbpf.datapath.rawmaps import KEY_SIZE, read_table, update_batch
from ctbpf.datapath.table import ACCT_MAP

log = logging.getLogger(__name__)

MAP = ACCT_MAP
SIZE = ctypes.sizeof(abi.CtAcct)
_U64X4 = struct.Struct("=4Q")


def read(fd: int | None) -> dict[bytes, bytes]:
    """Every record of an open ct_acct (raw key -> raw record); {} for None
    (the old tables of a layout before 4 had no such map)."""
    return {} if fd is None else read_table(fd)


def write(fd: int, records: dict[bytes, bytes]) -> int:
    """Write records into an empty ct_acct; returns how many went in."""
    if not records:
        return 0
    return update_batch(fd, b"".join(records), b"".join(records.values()), KEY_SIZE, SIZE)


def carry_window(fd: int, first: dict[bytes, bytes], final: dict[bytes, bytes],
                 present: set[bytes]) -> int:
    """Add to the new records (fd) what each old record gained from `first`
    (the copy) to `final` (the old tables' last word), for flows still
    present. Returns the records changed."""
    changed = 0
    value = ctypes.create_string_buffer(SIZE)
    for key, last in final.items():
        was = first.get(key)
        if last == was or key not in present:
            continue
        gained = [b - a for a, b in zip(_U64X4.unpack(was) if was else (0, 0, 0, 0),
                                        _U64X4.unpack(last))]
        if any(g < 0 for g in gained):
            continue        # the flow was made anew meanwhile: its new record stands
        kbuf = ctypes.create_string_buffer(key, KEY_SIZE)
        now = _U64X4.unpack(value.raw) if bpfsys.lookup(fd, kbuf, value) else (0, 0, 0, 0)
        try:
            bpfsys.update(fd, kbuf, ctypes.create_string_buffer(
                _U64X4.pack(*(n + g for n, g in zip(now, gained))), SIZE))
            changed += 1
        except bpfsys.BpfError as e:
            log.warning("carrying a flow's counters over failed: %s", e)
    return changed
