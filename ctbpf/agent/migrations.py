"""Layout migrations: how pinned maps of an older layout version are carried
into this build's (CT_LAYOUT_VERSION in bpf/abi.h).

Each migration converts raw keys, entries, config and counters of one older
version; a rebuild (ctbpf.agent.rebuild) applies it. A layout change in
bpf/abi.h adds its `@register(old_version)` here: without one, a restart on
old maps refuses and names `--discard-state`.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass
from typing import Callable

from ctbpf import abi
from ctbpf.datapath.rawmaps import STATS_SIZE

# --------------------------------------------------------------------------
# migrations between layout versions


@dataclass(frozen=True)
class Migration:
    """How to carry entries of an older layout into this one.

    convert(table, key, entry) -> (key, entry, acct) in this build's layout
    (acct: the flow's raw ct_acct record, or None when it has no counters;
    a (key, entry) pair means None), or None to drop the entry (counted and
    reported). table is "ct_new" or
    "ct_assured"; the result goes to the table the converted entry's flags
    say (ASSURED and not closing: ct_assured), else where it was.
    config(raw) -> raw ct_config of this layout, or None for this build's
    defaults (plus the config file). counters(raw of one CPU) -> raw
    ct_counters of this layout, or None to start the counters at zero."""

    from_version: int
    convert: Callable[[str, bytes, bytes], tuple[bytes, bytes, bytes | None] | None]
    config: Callable[[bytes], bytes | None] | None = None
    counters: Callable[[bytes], bytes | None] | None = None


#: from_version -> Migration into this build's CT_LAYOUT_VERSION.
MIGRATIONS: dict[int, Migration] = {}


def register(from_version: int, config=None, counters=None):
    """Decorator: `@register(1)` over convert(table, key, entry)."""
    def wrap(convert):
        if from_version == abi.LAYOUT_VERSION:
            raise ValueError(f"layout version {from_version} is this build's own")
        MIGRATIONS[from_version] = Migration(from_version, convert, config, counters)
        return convert
    return wrap


def _counters_from_layout_1(raw: bytes) -> bytes:
    """Layout 1 had 48 counters; the invalid reasons from ip_opts on start at 0."""
    return raw[:8 * 48].ljust(STATS_SIZE, b"\0")


# Layout 1 -> 2 was: ct_stats grew from 48 to 64 counters (CT_INV_IP_OPTS,
# and room for the window checks' reasons); nothing else changed.


# The entry of layout 3 (120 bytes), and its first 56 bytes, layouts 1 and
# 2's whole entry. Times were u64 ns; the counters were in the entry; each
# window side kept its scale and flags.
class _SideV3(ctypes.Structure):
    _fields_ = [("td_end", ctypes.c_uint32), ("td_maxend", ctypes.c_uint32),
                ("td_maxwin", ctypes.c_uint32), ("td_maxack", ctypes.c_uint32),
                ("td_scale", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 6)]


class _EntryV3(ctypes.Structure):
    _fields_ = [("expires_ns", ctypes.c_uint64), ("created_ns", ctypes.c_uint64),
                ("packets", ctypes.c_uint64 * 2), ("bytes", ctypes.c_uint64 * 2),
                ("last_end", ctypes.c_uint32), ("state", ctypes.c_uint8),
                ("flags", ctypes.c_uint8), ("last_class", ctypes.c_uint8),
                ("last_dir", ctypes.c_uint8), ("side", _SideV3 * 2),
                ("last_seq", ctypes.c_uint32), ("last_ack", ctypes.c_uint32),
                ("last_win", ctypes.c_uint16), ("last_wscale", ctypes.c_uint8),
                ("last_flags", ctypes.c_uint8), ("retrans", ctypes.c_uint8),
                ("pad", ctypes.c_uint8 * 3)]


assert ctypes.sizeof(_EntryV3) == 120
_OLD_ENTRY_SIZE = 56
_PROTO_OFFSET = abi.CtKey.proto.offset
_F_CLOSE_INIT_V2 = abi.const("CT_F_CLOSE_INIT_V2")
_F_ACCT = abi.const("CT_F_ACCT")
_PICKUP_FLAGS = abi.const("CT_TS_SACK_PERM") | abi.const("CT_TS_BE_LIBERAL")
_TS_CLOSE_INIT = abi.const("CT_TS_CLOSE_INIT")
_TICK = 1 << abi.TICK_SHIFT


def _from_v3(key: bytes, old: _EntryV3, windows: bool) -> tuple[bytes, bytes | None]:
    """A layout-3 entry (windows=False: its first 56 bytes, layouts 1 and 2)
    in this layout, with its counters as a ct_acct record (None when all
    are zero: the flow was made while acct was off)."""
    e = abi.CtEntry()
    # The expiry rounds up, so that no entry ends before its old expiry.
    e.expires = (old.expires_ns + _TICK - 1) >> abi.TICK_SHIFT
    e.created = old.created_ns >> abi.TICK_SHIFT
    e.state, e.flags = old.state, old.flags & ~_F_CLOSE_INIT_V2 & 0xFF
    e.last_class, e.last_dir = old.last_class, old.last_dir
    counters = (old.packets[0], old.packets[1], old.bytes[0], old.bytes[1])
    acct = None
    if any(counters):
        e.flags |= _F_ACCT
        acct = bytes(abi.CtAcct(packets=counters[:2], bytes=counters[2:]))
    if windows:
        for d in range(2):
            s, o = e.side[d], old.side[d]
            s.td_end, s.td_maxend, s.td_maxwin, s.td_maxack = \
                o.td_end, o.td_maxend, o.td_maxwin, o.td_maxack
            e.td_scale[d], e.td_flags[d] = o.td_scale, o.flags
        e.last_seq, e.last_ack, e.last_end, e.last_win = \
            old.last_seq, old.last_ack, old.last_end, old.last_win
        e.retrans = old.retrans
        e.last_opts = (old.last_flags & 0x0F) | ((old.last_wscale & 0x0F) << 4)
    elif key[_PROTO_OFFSET] == socket.IPPROTO_TCP:
        # Layouts 1 and 2 had no windows: a migrated TCP flow's start as the
        # kernel's do for a connection picked up mid-stream (tcp_new with
        # tcp_loose): nothing known on either side, SACK permitted and
        # liberal, so its next segments set the windows and none of them is
        # judged on guesses.
        e.td_flags[0] = e.td_flags[1] = _PICKUP_FLAGS
        e.last_end = old.last_end
        if old.flags & _F_CLOSE_INIT_V2:
            # Only "either side began the close" was kept; the reopen rule
            # asks exactly that.
            e.td_flags[0] |= _TS_CLOSE_INIT
    return bytes(e), acct


# Layout 3 -> 4: the entry shrank from 120 to 64 bytes. Times became u32
# ticks (CT_TICK_SHIFT), the counters moved to ct_acct (CT_F_ACCT), each
# side's scale and flags moved into the entry's td_scale[] and td_flags[],
# an ignored SYN's options became one byte (last_opts). Keys, ct_config (the
# new CT_CFG_RESYNC_HOLD slot was 0) and ct_stats are byte for byte the same.
@register(3, config=lambda raw: raw, counters=lambda raw: raw)
def _entries_from_layout_3(table: str, key: bytes, entry: bytes):
    if len(entry) != ctypes.sizeof(_EntryV3):
        raise ValueError(f"a layout 3 entry is {ctypes.sizeof(_EntryV3)} bytes, not {len(entry)}")
    e, acct = _from_v3(key, _EntryV3.from_buffer_copy(entry), windows=True)
    return key, e, acct


def _entries_from_layouts_1_2(table: str, key: bytes, entry: bytes):
    if len(entry) != _OLD_ENTRY_SIZE:
        raise ValueError(f"a layout 1/2 entry is {_OLD_ENTRY_SIZE} bytes, not {len(entry)}")
    old = _EntryV3.from_buffer_copy(entry.ljust(ctypes.sizeof(_EntryV3), b"\0"))
    e, acct = _from_v3(key, old, windows=False)
    return key, e, acct


# Layouts 1 and 2 -> 4: their 56-byte entry is layout 3's first 56 bytes,
# without the windows (added in 3). Layout 1 had 48 counters (above).
register(2, config=lambda raw: raw, counters=lambda raw: raw)(_entries_from_layouts_1_2)
register(1, config=lambda raw: raw, counters=_counters_from_layout_1)(_entries_from_layouts_1_2)
