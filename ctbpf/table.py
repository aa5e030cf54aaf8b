"""Read the flow tables: raw batch reads of the pinned maps, decoded once
into immutable Flow records with both tuples spelled out."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import abi, bpfsys

F_SEEN_REPLY = abi.const("CT_F_SEEN_REPLY")
F_ASSURED = abi.const("CT_F_ASSURED")
F_ORIG_IS_HI = abi.const("CT_F_ORIG_IS_HI")
FAMILY_IPV4 = abi.const("CT_FAMILY_IPV4")

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
ICMP_PROTOS = {1, 58}
# ICMP request type -> reply type (the kernel's invmap)
ICMP_REPLY = {8: 0, 13: 14, 15: 16, 17: 18}
ICMPV6_REPLY = {128: 129, 139: 140}

KEY_SIZE = ctypes.sizeof(abi.CtKey)
ENTRY_SIZE = ctypes.sizeof(abi.CtEntry)
TABLES = ("ct_assured", "ct_new")


@dataclass(frozen=True)
class Tuple:
    """One direction of a flow, as conntrack prints it."""

    src: str
    dst: str
    sport: int | None = None   # TCP/UDP
    dport: int | None = None
    type: int | None = None    # ICMP
    code: int | None = None
    id: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Flow:
    proto: int
    family: int
    state: str | None        # TCP state name, None for other protocols
    timeout: int             # seconds left
    orig: Tuple
    reply: Tuple
    unreplied: bool
    assured: bool
    packets: tuple[int, int]  # original, reply
    bytes: tuple[int, int]
    table: str               # "assured" or "new"

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, "unknown")

    @property
    def flags(self) -> list[str]:
        return (["UNREPLIED"] if self.unreplied else []) + (["ASSURED"] if self.assured else [])


def _addr(words, family: int) -> str:
    raw = bytes(words) if not isinstance(words, bytes) else words
    return str(ipaddress.IPv4Address(raw[:4]) if family == FAMILY_IPV4 else ipaddress.IPv6Address(raw))


def _ntohs(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "little"), "big")


def decode(key, entry, now_ns: int, table: str) -> Flow:
    """One Flow from a raw key and entry."""
    fam = key.family
    lo = (_addr(bytes(key.addr_lo), fam), _ntohs(key.port_lo))
    hi = (_addr(bytes(key.addr_hi), fam), _ntohs(key.port_hi))
    opener, answerer = (hi, lo) if entry.flags & F_ORIG_IS_HI else (lo, hi)
    if key.proto in ICMP_PROTOS and key.icmp_query:
        req_type, code = key.icmp_query >> 8, key.icmp_query & 0xFF
        reply_type = (ICMPV6_REPLY if key.proto == 58 else ICMP_REPLY).get(req_type, 0)
        qid = opener[1]
        orig = Tuple(opener[0], answerer[0], type=req_type, code=code, id=qid)
        reply = Tuple(answerer[0], opener[0], type=reply_type, code=code, id=qid)
    elif key.proto in (6, 17):
        orig = Tuple(opener[0], answerer[0], sport=opener[1], dport=answerer[1])
        reply = Tuple(answerer[0], opener[0], sport=answerer[1], dport=opener[1])
    else:
        orig = Tuple(opener[0], answerer[0])
        reply = Tuple(answerer[0], opener[0])
    remaining = (entry.expires_ns - now_ns) // 1_000_000_000
    return Flow(
        proto=key.proto, family=fam,
        state=abi.TCP_STATE_NAMES.get(entry.state) if key.proto == 6 else None,
        timeout=int(max(remaining, 0)), orig=orig, reply=reply,
        unreplied=not entry.flags & F_SEEN_REPLY, assured=bool(entry.flags & F_ASSURED),
        packets=(entry.packets[0], entry.packets[1]), bytes=(entry.bytes[0], entry.bytes[1]),
        table=table.removeprefix("ct_"))


def read_raw(pin_dir: Path, table: str) -> tuple[bytes, bytes, int]:
    """(keys, values, count) of one table, read in batches."""
    fd = bpfsys.obj_get(str(pin_dir / table))
    try:
        info = bpfsys.map_info(fd)
        return bpfsys.lookup_batch(fd, KEY_SIZE, ENTRY_SIZE, info.max_entries)
    finally:
        os.close(fd)


def read_flows(pin_dir: Path, include_expired: bool = False) -> list[Flow]:
    """Every live flow of both tables. An expired entry that no sweep has
    reclaimed yet counts as absent, as it does for the datapath."""
    raw = {table: read_raw(pin_dir, table) for table in TABLES}
    now = time.monotonic_ns()  # after the read: no timeout shows more than it has left
    flows = []
    for table, (keys, values, count) in raw.items():
        for i in range(count):
            key = abi.CtKey.from_buffer_copy(keys, i * KEY_SIZE)
            entry = abi.CtEntry.from_buffer_copy(values, i * ENTRY_SIZE)
            if entry.expires_ns <= now and not include_expired:
                continue
            flows.append(decode(key, entry, now, table))
    return flows
