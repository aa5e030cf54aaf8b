"""Read the flow tables: raw batch reads of the pinned maps, decoded once
into immutable Flow records with both tuples spelled out."""

from __future__ import annotations

import ctypes
import gc
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys

F_SEEN_REPLY = abi.const("CT_F_SEEN_REPLY")
F_ASSURED = abi.const("CT_F_ASSURED")
F_ORIG_IS_HI = abi.const("CT_F_ORIG_IS_HI")
F_ACCT = abi.const("CT_F_ACCT")  # the flow's counters are in ct_acct
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
    packets: tuple[int, int] | None  # original, reply; None: no accounting record
    bytes: tuple[int, int] | None
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


def decode(key, entry, now_ns: int, table: str, acct=None) -> Flow:
    """One Flow from a raw key and entry, and its counters (abi.CtAcct, or
    a (packets orig, packets reply, bytes orig, bytes reply) tuple) when it
    has them."""
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
    remaining = (abi.tick_ns(entry.expires) - now_ns) // 1_000_000_000
    if not entry.flags & F_ACCT:
        acct = None         # a record left by a flow that had the key before
    if acct is not None and not isinstance(acct, tuple):
        acct = (acct.packets[0], acct.packets[1], acct.bytes[0], acct.bytes[1])
    return Flow(
        proto=key.proto, family=fam,
        state=abi.TCP_STATE_NAMES.get(entry.state) if key.proto == 6 else None,
        timeout=int(max(remaining, 0)), orig=orig, reply=reply,
        unreplied=not entry.flags & F_SEEN_REPLY, assured=bool(entry.flags & F_ASSURED),
        packets=None if acct is None else (acct[0], acct[1]),
        bytes=None if acct is None else (acct[2], acct[3]),
        table=table.removeprefix("ct_"))


ACCT_MAP = "ct_acct"
_ACCT = struct.Struct("=QQQQ")


def read_acct(pin_dir: Path) -> dict[bytes, tuple[int, int, int, int]]:
    """Raw key -> (packets orig, packets reply, bytes orig, bytes reply) of
    every flow with counters (made while acct was on)."""
    keys, values, count = read_raw(pin_dir, ACCT_MAP)
    kv = memoryview(keys)
    return {bytes(kv[i * KEY_SIZE:(i + 1) * KEY_SIZE]): c
            for i, c in enumerate(_ACCT.iter_unpack(memoryview(values)[:count * _ACCT.size]))}


def read_raw(pin_dir: Path, table: str) -> tuple[bytes, bytes, int]:
    """(keys, values, count) of one table, read in batches."""
    fd = bpfsys.obj_get(str(pin_dir / table))
    try:
        info = bpfsys.map_info(fd)
        return bpfsys.lookup_batch(fd, info.key_size, info.value_size, info.max_entries)
    finally:
        os.close(fd)


def read_flows(pin_dir: Path, include_expired: bool = False) -> list[Flow]:
    """Every live flow of both tables. An expired entry that no sweep has
    reclaimed yet counts as absent, as it does for the datapath."""
    raw = {table: read_raw(pin_dir, table) for table in TABLES}
    acct = read_acct(pin_dir)
    now = time.monotonic_ns()  # after the read: no timeout shows more than it has left
    flows: list[Flow] = []
    # A million Flows are a million young objects: the cyclic collector
    # would walk them over and over while they are made, and they hold no
    # cycles.
    paused = gc.isenabled()
    gc.disable()
    try:
        for table, (keys, values, count) in raw.items():
            flows += decode_raw(keys, values, count, now, table, include_expired, acct)
    finally:
        if paused:
            gc.enable()
    return flows


# -- the fast path: decode() for whole batch buffers, a few us per flow --------

_KEY = struct.Struct("=16s16sHHBBH")
_ENTRY = struct.Struct("=IIBB54x")  # expires, created, state, flags; the TCP state is not listed
assert (_KEY.size, _ENTRY.size) == (KEY_SIZE, ENTRY_SIZE), "ct_key/ct_entry layout changed"
assert (abi.CtKey.port_lo.offset, abi.CtKey.proto.offset, abi.CtEntry.state.offset) == \
    (32, 36, 8), "ct_key/ct_entry field order changed"
#: network-order u16 read as native -> its value (the datapath stores ports raw)
_SWAP = [((v & 0xFF) << 8) | (v >> 8) for v in range(65536)]


class _Addrs(dict):
    """Raw address bytes -> text, each address formatted once per read."""

    def __missing__(self, raw: bytes) -> str:
        text = (socket.inet_ntop(socket.AF_INET, raw[:4]) if len(raw) == 4
                else socket.inet_ntop(socket.AF_INET6, raw))
        self[raw] = text
        return text


def _new(cls, **fields):
    """A frozen dataclass instance without its per-field __setattr__ cost."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def decode_raw(keys, values, count: int, now_ns: int, table: str,
               include_expired: bool = False, acct: dict | None = None) -> list[Flow]:
    """decode() of every entry of one batch read (raw key and value buffers),
    skipping expired ones unless asked, with counters from `acct` (raw key
    -> read_acct's tuple); the same Flows, many times faster."""
    acct = acct or {}
    now_tick = abi.ticks(now_ns)
    addrs = _Addrs()
    states = abi.TCP_STATE_NAMES
    short = table.removeprefix("ct_")
    out = []
    entries = _ENTRY.iter_unpack(memoryview(values)[:count * ENTRY_SIZE])
    kv = memoryview(keys)
    for i, ((alo, ahi, plo, phi, proto, fam, query), (exp, _c, st, fl)) \
            in enumerate(zip(_KEY.iter_unpack(kv[:count * KEY_SIZE]), entries)):
        if exp <= now_tick and not include_expired:
            continue
        counters = acct.get(bytes(kv[i * KEY_SIZE:(i + 1) * KEY_SIZE])) \
            if acct and fl & F_ACCT else None
        if fam == FAMILY_IPV4:
            lo_a, hi_a = addrs[alo[:4]], addrs[ahi[:4]]
        else:
            lo_a, hi_a = addrs[alo], addrs[ahi]
        if fl & F_ORIG_IS_HI:
            o_a, o_p, a_a, a_p = hi_a, _SWAP[phi], lo_a, _SWAP[plo]
        else:
            o_a, o_p, a_a, a_p = lo_a, _SWAP[plo], hi_a, _SWAP[phi]
        if proto == 6 or proto == 17:
            orig = _new(Tuple, src=o_a, dst=a_a, sport=o_p, dport=a_p, type=None, code=None,
                        id=None)
            reply = _new(Tuple, src=a_a, dst=o_a, sport=a_p, dport=o_p, type=None, code=None,
                         id=None)
        elif proto in ICMP_PROTOS and query:
            req, code = query >> 8, query & 0xFF
            rep = (ICMPV6_REPLY if proto == 58 else ICMP_REPLY).get(req, 0)
            orig = _new(Tuple, src=o_a, dst=a_a, sport=None, dport=None, type=req, code=code,
                        id=o_p)
            reply = _new(Tuple, src=a_a, dst=o_a, sport=None, dport=None, type=rep, code=code,
                         id=o_p)
        else:
            orig = _new(Tuple, src=o_a, dst=a_a, sport=None, dport=None, type=None, code=None,
                        id=None)
            reply = _new(Tuple, src=a_a, dst=o_a, sport=None, dport=None, type=None, code=None,
                         id=None)
        remaining = (abi.tick_ns(exp) - now_ns) // 1_000_000_000
        out.append(_new(Flow, proto=proto, family=fam,
                        state=states.get(st) if proto == 6 else None,
                        timeout=remaining if remaining > 0 else 0, orig=orig, reply=reply,
                        unreplied=not fl & F_SEEN_REPLY, assured=bool(fl & F_ASSURED),
                        packets=None if counters is None else counters[:2],
                        bytes=None if counters is None else counters[2:], table=short))
    return out
