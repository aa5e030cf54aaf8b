"""Table operations on the pinned maps, like conntrack -G/-D/-F/-C: find a
flow by its original tuple, find flows by filter together with their raw
keys, delete them from both tables in batches, count them.

The datapath keeps running meanwhile. A flow that sees a packet after it
was deleted comes back as NEW, as it does after `conntrack -D`. A flow may
move between the two tables (promotion to ct_assured, demotion as it
closes) between our read and our delete; a key missing from the table it
was read from is then tried in the other one, so it is still deleted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ctbpf import abi
from ctbpf.datapath import bpfsys, flowkey, occupancy
from ctbpf.datapath.sweepprog import user_delete_keys
from ctbpf.datapath.table import (ENTRY_SIZE, Flow, ICMPV6_REPLY, ICMP_REPLY, KEY_SIZE, TABLES,
                                  decode, read_acct, read_raw)

ICMP_PROTOS = {1: ICMP_REPLY, 58: ICMPV6_REPLY}



class Selection(Protocol):
    """Which flows a scan keeps (the CLI's filters are one)."""

    def matches(self, flow: Flow) -> bool: ...

    def everything(self) -> bool: ...


@dataclass(frozen=True)
class Match:
    """A flow with the raw key and the table it was read from."""

    table: str    # "ct_new" or "ct_assured"
    key: bytes
    flow: Flow


@dataclass(frozen=True)
class TupleSpec:
    """A flow's original tuple, as conntrack -G takes it."""

    proto: int
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int = 0
    icmp_id: int | None = None

    def key(self):
        """The datapath's key for this tuple (see bpf/flow.h and parse.h)."""
        if self.proto in ICMP_PROTOS:
            # the requester's port holds the id, the responder's its complement
            return flowkey.key_from_tuple(self.src, self.dst, self.proto, self.icmp_id,
                                          self.icmp_id ^ 0xFFFF,
                                          self.icmp_type << 8 | self.icmp_code)[0]
        return flowkey.key_from_tuple(self.src, self.dst, self.proto, self.sport, self.dport)[0]

    def is_original_of(self, f: Flow) -> bool:
        """True when this tuple is the flow's original direction (conntrack
        -G does not find a flow by its reply tuple)."""
        o = f.orig
        if (o.src, o.dst) != (self.src, self.dst):
            return False
        if self.proto in ICMP_PROTOS:
            return (o.type, o.code, o.id) == (self.icmp_type, self.icmp_code, self.icmp_id)
        if self.proto in (6, 17):
            return (o.sport, o.dport) == (self.sport, self.dport)
        return True


def _open(pin_dir: Path, table: str) -> int:
    return bpfsys.obj_get(str(pin_dir / table))


def lookup(pin_dir: Path, spec: TupleSpec) -> Match | None:
    """The live flow whose original tuple is spec (one lookup per table)."""
    key = spec.key()
    entry = abi.CtEntry()
    for table in TABLES:
        fd = _open(pin_dir, table)
        try:
            found = bpfsys.lookup(fd, key, entry)
        finally:
            os.close(fd)
        if not found:
            continue
        now = time.monotonic_ns()
        if abi.tick_ns(entry.expires) <= now:
            continue  # expired: absent, as for the datapath
        flow = decode(key, entry, now, table, read_acct(pin_dir).get(bytes(key)))
        return Match(table, bytes(key), flow) if spec.is_original_of(flow) else None
    return None


def scan(pin_dir: Path, flt: Selection | None = None,
         include_expired: bool = False) -> list[Match]:
    """Every live flow of both tables that flt matches, with its raw key."""
    raw = {table: read_raw(pin_dir, table) for table in TABLES}
    acct = read_acct(pin_dir)
    now = time.monotonic_ns()  # after the read, as table.read_flows does
    out, seen = [], set()
    for table, (keys, values, n) in raw.items():
        for i in range(n):
            raw_key = keys[i * KEY_SIZE:(i + 1) * KEY_SIZE]
            entry = abi.CtEntry.from_buffer_copy(values, i * ENTRY_SIZE)
            # A flow caught mid-move between the tables shows in both: once.
            if (abi.tick_ns(entry.expires) <= now and not include_expired) or raw_key in seen:
                continue
            seen.add(raw_key)
            flow = decode(abi.CtKey.from_buffer_copy(raw_key), entry, now, table,
                          acct.get(raw_key))
            if flt is None or flt.matches(flow):
                out.append(Match(table, raw_key, flow))
    return out


def delete(pin_dir: Path, matches: list[Match]) -> list[Match]:
    """Delete these flows from whichever table holds them now, in the kernel
    (the pinned sweep program: DESTROY events with reason "user", counted as
    CT_STAT_USER_DELETE). Returns the ones actually deleted: a flow that
    vanished meanwhile is not counted."""
    if not matches:
        return []
    done = user_delete_keys(pin_dir, b"".join(m.key for m in matches))
    return [m for m, ok in zip(matches, done) if ok]


def flush(pin_dir: Path) -> int:
    """Delete every entry of both tables, expired or not; returns how many."""
    keys = b"".join(read_raw(pin_dir, table)[0] for table in TABLES)
    return sum(user_delete_keys(pin_dir, keys)) if keys else 0


def count(pin_dir: Path, flt: Selection | None = None) -> int:
    """Live entries, all or those flt matches."""
    if flt is None or flt.everything():
        return sum(occupancy.live_counts(pin_dir)[0].values())
    return len(scan(pin_dir, flt))
