"""Layout migrations: how pinned maps of an older layout version are carried
into this build's (CT_LAYOUT_VERSION in bpf/abi.h).

Each migration converts raw keys, entries, config and counters of one older
version; a rebuild (ctbpf.agent.rebuild) applies it. A layout change in
bpf/abi.h adds its `@register(old_version)` here: without one, a restart on
old maps refuses and names `--discard-state`.
"""

from __future__ import annotations

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


# Layout 1 -> 2: ct_stats grew from 48 to 64 counters (CT_INV_IP_OPTS, and
# room for the window checks' reasons). Keys, entries and ct_config are
# byte for byte the same.
@register(1, config=lambda raw: raw, counters=_counters_from_layout_1)
def _entries_from_layout_1(table: str, key: bytes, entry: bytes) -> tuple[bytes, bytes]:
    return key, entry
