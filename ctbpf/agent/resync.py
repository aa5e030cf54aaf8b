"""TCP windows across a rebuild (ctbpf.agent.rebuild).

Between the copy of the entries and the swap, the old programs go on
tracking into the old tables: a copied entry's windows fall behind the
connection's, and the new programs, judging its next segments on them,
would find them out of window (an ack of data "never sent"). So the copy of
every TCP entry goes in marked CT_TS_RESYNC on both sides, and the new
config holds the marks (configmap.set_resync_hold). A marked connection's packets
skip the window checks but still move the windows (bpf/tcpwin.h). After the
swap, end() raises each entry's window edges to the later of the two
tables', then lifts the hold: from then on each side's next packet clears
its own mark, and once both are clear the connection is checked strictly.

The agent never clears a mark itself: its write of a whole entry can lose
a packet's update that landed between its read and its write, and a
cleared mark would then judge the next segment on the lost edge. With the
marks held, the next packets make up for it.
"""

from __future__ import annotations

import ctypes
import errno
import logging

from ctbpf import abi
from ctbpf.datapath import bpfsys, configmap
from ctbpf.datapath.rawmaps import ENTRY_SIZE, KEY_SIZE, read_tables

log = logging.getLogger(__name__)

_RESYNC = abi.const("CT_TS_RESYNC")
_MAXACK_SET = abi.const("CT_TS_MAXACK_SET")
_PROTO = abi.CtKey.proto.offset
TCP = 6


def is_tcp(key: bytes) -> bool:
    return key[_PROTO] == TCP


def mark(entry: bytes) -> bytes:
    """The copy of a TCP entry as it goes into the new tables."""
    e = abi.CtEntry.from_buffer_copy(entry)
    for d in range(2):
        e.td_flags[d] |= _RESYNC
    return bytes(e)


def _later(a: int, b: int) -> int:
    """The later of two sequence numbers, modulo 2^32."""
    return b if ((b - a) & 0xFFFFFFFF) < 0x80000000 else a


def merged(base: bytes, old: bytes | None) -> bytes:
    """base (the entry the reconcile keeps) with each side's window edges
    the later of base's and old's (the old table's final entry); base's
    resync marks are kept (the datapath clears them)."""
    e = abi.CtEntry.from_buffer_copy(base)
    o = abi.CtEntry.from_buffer_copy(old) if old is not None else None
    for i, side in enumerate(e.side):
        if o is None:
            continue
        os_ = o.side[i]
        if os_.td_maxwin == 0:
            continue
        if side.td_maxwin == 0:
            side.td_end, side.td_maxend = os_.td_end, os_.td_maxend
            side.td_maxwin, e.td_scale[i] = os_.td_maxwin, o.td_scale[i]
        else:
            side.td_end = _later(side.td_end, os_.td_end)
            side.td_maxend = _later(side.td_maxend, os_.td_maxend)
            side.td_maxwin = max(side.td_maxwin, os_.td_maxwin)
        if o.td_flags[i] & _MAXACK_SET:
            side.td_maxack = (_later(side.td_maxack, os_.td_maxack)
                              if e.td_flags[i] & _MAXACK_SET else os_.td_maxack)
            e.td_flags[i] |= _MAXACK_SET
    return bytes(e)


def end(tables: dict[str, int], final: dict[bytes, tuple[str, bytes]], config_fd: int) -> None:
    """Every TCP entry of the new tables (name -> fd) with the later window
    edges of both tables (final: the old tables' last entries); then the
    hold is lifted, even if a write failed. Each entry is read again just
    before it is written, so that what the new programs wrote since the
    listing is kept."""
    value = ctypes.create_string_buffer(ENTRY_SIZE)
    try:
        for key, (t, _) in read_tables(tables).items():
            if not is_tcp(key) or key not in final:
                continue
            kbuf = ctypes.create_string_buffer(key, KEY_SIZE)
            if not bpfsys.lookup(tables[t], kbuf, value):
                continue            # gone meanwhile (moved, closed): nothing to raise
            new = merged(value.raw, final[key][1])
            if new == value.raw:
                continue
            try:
                bpfsys.update(tables[t], kbuf, ctypes.create_string_buffer(new, ENTRY_SIZE),
                              bpfsys.BPF_EXIST)
            except bpfsys.BpfError as e:
                if e.errno != errno.ENOENT:
                    log.warning("raising the windows of a rebuilt entry failed: %s", e)
    finally:
        configmap.set_resync_hold(config_fd, False)
