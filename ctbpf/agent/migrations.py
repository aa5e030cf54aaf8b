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

    convert(table, key, entry) -> (key, entry) in this build's layout, or
    None to drop the entry (counted and reported). table is "ct_new" or
    "ct_assured"; the result goes to the table the converted entry's flags
    say (ASSURED and not closing: ct_assured), else where it was.
    config(raw) -> raw ct_config of this layout, or None for this build's
    defaults (plus the config file). counters(raw of one CPU) -> raw
    ct_counters of this layout, or None to start the counters at zero."""

    from_version: int
    convert: Callable[[str, bytes, bytes], tuple[bytes, bytes] | None]
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


# Layouts 1 and 2 -> 3: the entry grew from 56 to 120 bytes with the TCP
# window state (struct ct_tcp_side side[2] and the retransmission fields),
# appended after the fields it had; CT_F_CLOSE_INIT moved from the entry's
# flags to the closing side's (CT_TS_CLOSE_INIT). Keys and ct_config are
# byte for byte the same (CT_CFG_TCP_IGNORE_INVALID_RST takes a slot that
# was 0, its default). A migrated TCP flow's windows start as the kernel's
# do for a connection picked up mid-stream (tcp_new with tcp_loose): nothing
# known on either side, SACK permitted and liberal, so its next segments
# set the windows and none of them is judged on guesses.
_OLD_ENTRY_SIZE = 56
_PROTO_OFFSET = abi.CtKey.proto.offset
_F_CLOSE_INIT_V2 = abi.const("CT_F_CLOSE_INIT_V2")
_PICKUP_FLAGS = abi.const("CT_TS_SACK_PERM") | abi.const("CT_TS_BE_LIBERAL")
_TS_CLOSE_INIT = abi.const("CT_TS_CLOSE_INIT")


def _entry_to_layout_3(key: bytes, entry: bytes) -> bytes:
    if len(entry) != _OLD_ENTRY_SIZE:
        raise ValueError(f"a layout 1/2 entry is {_OLD_ENTRY_SIZE} bytes, not {len(entry)}")
    e = abi.CtEntry.from_buffer_copy(entry.ljust(ctypes.sizeof(abi.CtEntry), b"\0"))
    if key[_PROTO_OFFSET] == socket.IPPROTO_TCP:
        e.side[0].flags = e.side[1].flags = _PICKUP_FLAGS
        if e.flags & _F_CLOSE_INIT_V2:
            # Only "either side began the close" was kept; the reopen rule
            # asks exactly that.
            e.side[0].flags |= _TS_CLOSE_INIT
    e.flags &= ~_F_CLOSE_INIT_V2 & 0xFF
    return bytes(e)


@register(2, config=lambda raw: raw, counters=lambda raw: raw)
def _entries_from_layout_2(table: str, key: bytes, entry: bytes) -> tuple[bytes, bytes]:
    return key, _entry_to_layout_3(key, entry)


# Layout 1 -> 3: layout 1's counters (48, see above), layout 2's entries.
@register(1, config=lambda raw: raw, counters=_counters_from_layout_1)
def _entries_from_layout_1(table: str, key: bytes, entry: bytes) -> tuple[bytes, bytes]:
    return key, _entry_to_layout_3(key, entry)
