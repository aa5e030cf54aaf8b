"""TCP windows across a rebuild (ctbpf.agent.rebuild).

Between the copy of the entries and the reconcile, the old programs go on
tracking into the old tables: a copied entry's windows fall behind the
connection's, and the new programs, judging its next segments on them,
would find them out of window (an ack of data "never sent"). So the copy of
every TCP entry goes in marked CT_TS_RESYNC on both sides, which the
datapath treats as liberal (bpf/tcpwin.h, tcp_win_fail); the reconcile then
writes each entry with the later of the two tables' window edges and the
mark cleared, and from then on its segments are checked strictly again.
"""

from __future__ import annotations

import ctypes
import errno
import logging

from ctbpf import abi
from ctbpf.datapath import bpfsys
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
    for side in e.side:
        side.flags |= _RESYNC
    return bytes(e)


def _later(a: int, b: int) -> int:
    """The later of two sequence numbers, modulo 2^32."""
    return b if ((b - a) & 0xFFFFFFFF) < 0x80000000 else a


def merged(base: bytes, old: bytes | None) -> bytes:
    """base (the entry the reconcile keeps) with each side's window edges
    the later of base's and old's (the old table's final entry), and the
    resync mark cleared."""
    e = abi.CtEntry.from_buffer_copy(base)
    o = abi.CtEntry.from_buffer_copy(old) if old is not None else None
    for i, side in enumerate(e.side):
        side.flags &= ~_RESYNC & 0xFF
        if o is None:
            continue
        os_ = o.side[i]
        side.flags &= ~(os_.flags & _RESYNC) & 0xFF
        if os_.td_maxwin == 0:
            continue
        if side.td_maxwin == 0:
            side.td_end, side.td_maxend = os_.td_end, os_.td_maxend
            side.td_maxwin, side.td_scale = os_.td_maxwin, os_.td_scale
        else:
            side.td_end = _later(side.td_end, os_.td_end)
            side.td_maxend = _later(side.td_maxend, os_.td_maxend)
            side.td_maxwin = max(side.td_maxwin, os_.td_maxwin)
        if os_.flags & _MAXACK_SET:
            side.td_maxack = (_later(side.td_maxack, os_.td_maxack)
                              if side.flags & _MAXACK_SET else os_.td_maxack)
            side.flags |= _MAXACK_SET
    return bytes(e)


def end(tables: dict[str, int], final: dict[bytes, tuple[str, bytes]]) -> None:
    """Every TCP entry of the new tables (name -> fd) with the later window
    edges of both tables (final: the old tables' last entries), its mark
    cleared: strict checks from here on. Each entry is read again just
    before it is written, so that what the new programs wrote since the
    listing is kept (a batch write of the listing put windows back by
    milliseconds: valid segments then came out INVALID)."""
    value = ctypes.create_string_buffer(ENTRY_SIZE)
    for key, (t, _) in read_tables(tables).items():
        if not is_tcp(key):
            continue
        kbuf = ctypes.create_string_buffer(key, KEY_SIZE)
        if not bpfsys.lookup(tables[t], kbuf, value):
            continue            # gone meanwhile (moved, closed): nothing to clear
        o = final.get(key)
        new = merged(value.raw, o[1] if o is not None else None)
        try:
            bpfsys.update(tables[t], kbuf, ctypes.create_string_buffer(new, ENTRY_SIZE),
                          bpfsys.BPF_EXIST)
        except bpfsys.BpfError as e:
            if e.errno != errno.ENOENT:
                log.warning("ending the window resync of an entry failed: %s", e)
