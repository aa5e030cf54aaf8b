"""A rebuild's window resync (ctbpf/agent/resync.py): the marks it sets on
the copies, and the later window edges it takes; the marks stay for the
datapath to clear (tests/bpf/test_dp_tcp_window.py runs that part)."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

from ctbpf import abi
from ctbpf.agent import resync

RESYNC = abi.const("CT_TS_RESYNC")
MAXACK = abi.const("CT_TS_MAXACK_SET")
LIBERAL = abi.const("CT_TS_BE_LIBERAL")


def entry(end0=0, maxend0=0, maxwin0=0, maxack0=None, flags0=0) -> bytes:
    e = abi.CtEntry()
    e.state = abi.const("CT_TCP_ESTABLISHED")
    s = e.side[0]
    s.td_end, s.td_maxend, s.td_maxwin, e.td_flags[0] = end0, maxend0, maxwin0, flags0
    if maxack0 is not None:
        s.td_maxack, e.td_flags[0] = maxack0, e.td_flags[0] | MAXACK
    return bytes(e)


def sides(raw: bytes):
    """Each direction's window with its scale and flags (bytes of the entry)."""
    e = abi.CtEntry.from_buffer_copy(raw)
    return [SimpleNamespace(td_end=s.td_end, td_maxend=s.td_maxend, td_maxwin=s.td_maxwin,
                            td_maxack=s.td_maxack, td_scale=e.td_scale[i], flags=e.td_flags[i])
            for i, s in enumerate(e.side)]


def test_tcp_keys_only():
    key = abi.CtKey(proto=6)
    assert resync.is_tcp(bytes(key))
    assert not resync.is_tcp(bytes(abi.CtKey(proto=17)))


def test_mark_sets_both_sides_and_keeps_the_rest():
    raw = entry(100, 200, 50, flags0=LIBERAL)
    marked = resync.mark(raw)
    assert [s.flags & RESYNC for s in sides(marked)] == [RESYNC, RESYNC]
    assert sides(marked)[0].flags & LIBERAL
    flags_at = abi.CtEntry.td_flags.offset
    assert marked[:flags_at] == raw[:flags_at] and len(marked) == flags_at + 2


def test_merged_takes_the_later_edges_and_keeps_the_mark():
    new = resync.mark(entry(1000, 5000, 3000, maxack0=10))
    old = entry(2000, 4000, 4000, maxack0=20)
    s = sides(resync.merged(new, old))[0]
    assert (s.td_end, s.td_maxend, s.td_maxwin, s.td_maxack) == (2000, 5000, 4000, 20)
    assert s.flags & RESYNC and s.flags & MAXACK


def test_merged_orders_sequence_numbers_across_the_wrap():
    # 0x10 comes after 0xFFFFFFF0 in sequence space.
    s = sides(resync.merged(resync.mark(entry(0xFFFFFFF0, 0xFFFFFFF0, 10)),
                            entry(0x10, 0x10, 10)))[0]
    assert (s.td_end, s.td_maxend) == (0x10, 0x10)


def test_merged_without_old_or_with_an_unset_side_changes_nothing():
    new = resync.mark(entry(7, 8, 9))
    assert sides(resync.merged(new, None))[0].td_end == 7
    s = sides(resync.merged(new, entry()))[0]
    assert (s.td_end, s.td_maxwin, s.flags & RESYNC) == (7, 9, RESYNC)
    assert resync.merged(new, entry()) == new
    # a side the new table never set takes the old one's window whole
    s = sides(resync.merged(resync.mark(entry()), entry(5, 6, 7)))[0]
    assert (s.td_end, s.td_maxend, s.td_maxwin) == (5, 6, 7)
    assert ctypes.sizeof(abi.CtEntry) == len(new)
