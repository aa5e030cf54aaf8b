"""The flow tables read chunk by chunk and decoded column-wise with numpy:
what `ctbpf list` and `ctbpf top` use at a million entries.

Each batch read lands in fixed buffers whose numpy views (dtypes taken from
abi.CtKey and abi.CtEntry, so only field names are written here) are
decoded into a Chunk of columns, one row per live flow. A Chunk is only
valid until the next read reuses the buffers: memory stays at one chunk
whatever the table size. table.decode() is the per-flow reference, and
tests/unit/datapath/test_tablestream.py holds this module to it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ctbpf import abi
from ctbpf.datapath import bpfsys
from ctbpf.datapath.table import (ACCT_MAP, F_ACCT, F_ASSURED, F_ORIG_IS_HI, F_SEEN_REPLY,
                                  FAMILY_IPV4, ICMP_REPLY, ICMPV6_REPLY, TABLES, Flow, Tuple,
                                  _new, read_raw)

KEY_DTYPE = np.dtype(abi.CtKey)
ENTRY_DTYPE = np.dtype(abi.CtEntry)
ACCT_DTYPE = np.dtype(abi.CtAcct)
NS = 1_000_000_000
FIRST_CHUNK = 2048     # small, so the first line is out before the bulk is read
CHUNK = 65536          # then big: a batch syscall and numpy call per 64k flows
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
PORTS, QUERY, BARE = 0, 1, 2       # Chunk.kind: what a tuple shows after its addresses


# -- the entry's fields, named here and nowhere else in this module --------------------

def entry_clock(entries: np.ndarray) -> np.ndarray:
    """Each entry's expiry in ns of CLOCK_MONOTONIC, as int64."""
    names = entries.dtype.names
    if "expires_ns" in names:
        return entries["expires_ns"].astype(np.int64)
    return entries["expires"].astype(np.int64) << abi.TICK_SHIFT   # u32 ticks (abi.h)


def entry_state_flags(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return entries["state"], entries["flags"]


def slim(entries: np.ndarray) -> np.ndarray:
    """A compact copy of the fields decode() reads but the counters: enough to
    decode the flows again later (top keeps it for its talkers' labels)."""
    from numpy.lib import recfunctions  # noqa: PLC0415

    names = [n for n in ("expires_ns", "expires", "state", "flags") if n in entries.dtype.names]
    return recfunctions.repack_fields(entries[names])


@dataclass(frozen=True)
class Counters:
    """packets and bytes, (n, 2) u64 by enum ct_dir; `present` marks the
    rows that have a record (None: all of them)."""

    packets: np.ndarray
    bytes: np.ndarray
    present: np.ndarray | None = None


#: keys, entries -> Counters for those rows, or None when no row has any
CounterSource = Callable[[np.ndarray, np.ndarray], "Counters | None"]


def entry_counters(keys: np.ndarray, entries: np.ndarray) -> Counters | None:
    """Counters kept in the entry itself; None for a layout without them
    (counters in a map of their own are another CounterSource)."""
    if "packets" not in entries.dtype.names:
        return None
    return Counters(entries["packets"], entries["bytes"])


def acct_counters(pin_dir: Path) -> CounterSource:
    """The counters in ct_acct (the flows made while acct was on: CT_F_ACCT),
    read once and joined to each chunk by key. What is held is what the map
    holds, 72 bytes a record, and nothing when acct is off."""
    raw_keys, raw_values, count = read_raw(pin_dir, ACCT_MAP)
    if count == 0:
        return lambda keys, entries: None
    # Fixed-width byte strings order and compare as the raw keys do (all
    # are KEY_SIZE long, so numpy's trailing-NUL rule never joins two).
    held = np.frombuffer(raw_keys, f"S{KEY_DTYPE.itemsize}", count)
    order = np.argsort(held, kind="stable")
    held = held[order]
    values = np.frombuffer(raw_values, ACCT_DTYPE, count)[order]

    def source(keys: np.ndarray, entries: np.ndarray) -> Counters | None:
        want = np.ascontiguousarray(keys).view(f"S{KEY_DTYPE.itemsize}").reshape(-1)
        at = np.minimum(np.searchsorted(held, want), count - 1)
        found = (held[at] == want) & ((entries["flags"] & F_ACCT) != 0)
        if not found.any():
            return None
        zero = np.zeros((len(keys), 2), np.uint64)
        return Counters(np.where(found[:, None], values["packets"][at], zero),
                        np.where(found[:, None], values["bytes"][at], zero), found)
    return source


# -- reading ---------------------------------------------------------------------------


class _Buffers:
    def __init__(self, count: int) -> None:
        self.count = count
        self.keys = np.zeros(count, KEY_DTYPE)
        self.entries = np.zeros(count, ENTRY_DTYPE)


def read_chunks(pin_dir: Path, tables=TABLES, first: int = FIRST_CHUNK,
                size: int = CHUNK) -> Iterator[tuple[str, np.ndarray, np.ndarray, int]]:
    """(table, keys, entries, now_ns) per batch read, the arrays being views
    of buffers the next read overwrites; now_ns is taken after the read, so
    no timeout shows more than it has left."""
    bufs = _Buffers(max(first, size))
    token = ctypes.create_string_buffer(max(KEY_DTYPE.itemsize, 8))
    next_token = ctypes.create_string_buffer(max(KEY_DTYPE.itemsize, 8))
    want = first
    for name in tables:
        fd = bpfsys.obj_get(str(pin_dir / name))
        try:
            max_entries = bpfsys.map_info(fd).max_entries
            start = 0
            # bounded: every read but the last returns at least one entry of at most
            # max_entries, or raises; +2 for the final empty read and an ENOSPC retry
            for _ in range(max_entries + 2):
                try:
                    n, done = bpfsys.lookup_batch_at(
                        fd, start, ctypes.addressof(next_token), bufs.keys.ctypes.data,
                        bufs.entries.ctypes.data, min(want, bufs.count))
                except bpfsys.BpfError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    # one hash bucket holds more entries than we asked for
                    if want < bufs.count:
                        want = bufs.count
                    else:
                        bufs = _Buffers(bufs.count * 2)
                        want = bufs.count
                    continue
                now = time.monotonic_ns()
                if n:
                    yield name, bufs.keys[:n], bufs.entries[:n], now
                    want = size
                if done:
                    break
                ctypes.memmove(token, next_token, len(token))
                start = ctypes.addressof(token)
        finally:
            os.close(fd)


def read_all(pin_dir: Path, table: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(keys, entries, now_ns) of a whole table, copied: for sorting, and
    for tests."""
    parts = [(k.copy(), e.copy(), now) for _, k, e, now in read_chunks(pin_dir, (table,))]
    if not parts:
        return np.zeros(0, KEY_DTYPE), np.zeros(0, ENTRY_DTYPE), time.monotonic_ns()
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            parts[-1][2])


# -- decoding --------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Live flows of one table, as columns, in the direction users see:
    src/dst/sport/dport are the original direction's (the reply swaps them).
    For kind QUERY, sport is the ICMP id and dport is unused."""

    table: object              # "assured" or "new"; an S-string per row if mixed (concat)
    proto: np.ndarray          # u8
    family: np.ndarray         # u8, CT_FAMILY_*
    state: np.ndarray          # u8 enum ct_tcp_state (meaningful for TCP only)
    kind: np.ndarray           # u8: PORTS, QUERY or BARE
    src: np.ndarray            # int: index into addr_text / addr_bytes
    dst: np.ndarray
    src_raw: np.ndarray        # (n, 16) u8: the address bytes, network order
    dst_raw: np.ndarray
    sport: np.ndarray          # u16, host order
    dport: np.ndarray
    itype: np.ndarray          # u8: ICMP request type, reply type and code
    rtype: np.ndarray
    code: np.ndarray
    timeout: np.ndarray        # int64 seconds left
    unreplied: np.ndarray      # bool
    assured: np.ndarray        # bool
    packets: np.ndarray | None  # (n, 2) u64, orig and reply; None: no counters
    bytes: np.ndarray | None
    counted: np.ndarray | None  # bool: rows whose counters exist (None: all)
    addr_text: list            # str of each address index
    addr_bytes: np.ndarray     # the same as S-strings, for the text formats

    def __len__(self) -> int:
        return len(self.proto)

    def select(self, rows) -> "Chunk":
        """The chunk's rows at a boolean mask or index array."""
        per_row = {f.name: getattr(self, f.name)[rows] for f in fields(self)
                   if f.name not in ("addr_text", "addr_bytes")
                   and not isinstance(getattr(self, f.name), (str, type(None)))}
        return replace(self, **per_row)

    @staticmethod
    def concat(chunks: list["Chunk"]) -> "Chunk":
        """One chunk of the rows of several, in order, each row keeping its table."""
        if any(c.packets is not None for c in chunks):
            # rows of a chunk without counters stay without them
            chunks = [c if c.packets is not None and c.counted is not None else replace(
                c, packets=np.zeros((len(c), 2), np.uint64) if c.packets is None else c.packets,
                bytes=np.zeros((len(c), 2), np.uint64) if c.bytes is None else c.bytes,
                counted=np.full(len(c), c.packets is not None)) for c in chunks]
        texts, src, dst, tables = [], [], [], []
        for c in chunks:
            src.append(c.src + len(texts))
            dst.append(c.dst + len(texts))
            texts += c.addr_text
            tables.append(np.full(len(c), c.table.encode(), f"S{len(c.table)}")
                          if isinstance(c.table, str) else c.table)
        per_row = {f.name: None if getattr(chunks[0], f.name) is None else
                   np.concatenate([getattr(c, f.name) for c in chunks])
                   for f in fields(Chunk)
                   if f.name not in ("table", "addr_text", "addr_bytes", "src", "dst")}
        return Chunk(table=np.concatenate(tables), src=np.concatenate(src),
                     dst=np.concatenate(dst), addr_text=texts,
                     addr_bytes=np.array([t.encode() for t in texts] or [b""]), **per_row)

    def table_names(self) -> list[str]:
        if isinstance(self.table, str):
            return [self.table] * len(self)
        return [t.decode() for t in self.table.tolist()]

    def flows(self) -> list[Flow]:
        """The rows as table.Flow records (what table.decode makes)."""
        text, states = self.addr_text, abi.TCP_STATE_NAMES
        cols = [c.tolist() for c in (self.proto, self.family, self.state, self.kind, self.src,
                                     self.dst, self.sport, self.dport, self.itype, self.rtype,
                                     self.code, self.timeout, self.unreplied, self.assured)]
        pk = self.packets.tolist() if self.packets is not None else [None] * len(self)
        by = self.bytes.tolist() if self.bytes is not None else [None] * len(self)
        ok = self.counted.tolist() if self.counted is not None else [True] * len(self)
        out = []
        for (proto, fam, st, kind, s, d, sp, dp, it, rt, code, left, unrep, assured), p, b, c, \
                short in zip(zip(*cols), pk, by, ok, self.table_names()):
            s, d = text[s], text[d]
            if kind == PORTS:
                orig = _new(Tuple, src=s, dst=d, sport=sp, dport=dp, type=None, code=None,
                            id=None)
                reply = _new(Tuple, src=d, dst=s, sport=dp, dport=sp, type=None, code=None,
                             id=None)
            elif kind == QUERY:
                orig = _new(Tuple, src=s, dst=d, sport=None, dport=None, type=it, code=code,
                            id=sp)
                reply = _new(Tuple, src=d, dst=s, sport=None, dport=None, type=rt, code=code,
                             id=sp)
            else:
                orig = _new(Tuple, src=s, dst=d, sport=None, dport=None, type=None, code=None,
                            id=None)
                reply = _new(Tuple, src=d, dst=s, sport=None, dport=None, type=None, code=None,
                             id=None)
            counted = p is not None and c
            out.append(_new(Flow, proto=proto, family=fam,
                            state=states.get(st) if proto == TCP else None, timeout=left,
                            orig=orig, reply=reply, unreplied=unrep, assured=assured,
                            packets=tuple(p) if counted else None,
                            bytes=tuple(b) if counted else None, table=short))
        return out


def _reply_types() -> tuple[np.ndarray, np.ndarray]:
    v4, v6 = np.zeros(256, np.uint8), np.zeros(256, np.uint8)
    for req, rep in ICMP_REPLY.items():
        v4[req] = rep
    for req, rep in ICMPV6_REPLY.items():
        v6[req] = rep
    return v4, v6


_REPLY_V4, _REPLY_V6 = _reply_types()


class AddressBook:
    """Address bytes -> text, each address formatted once (inet_ntop, as
    conntrack prints them) and kept for later chunks while the book is
    small; past `limit` addresses it starts over, so its memory is bounded."""

    def __init__(self, limit: int = 1 << 18) -> None:
        self.limit = limit
        self.known: dict = {}

    def texts(self, v4: np.ndarray, v6: np.ndarray) -> list[str]:
        """Texts of unique IPv4 words (u32, network byte order in memory)
        then unique IPv6 addresses ((m, 16) u8)."""
        if len(self.known) > self.limit:
            self.known = {}
        known, out = self.known, []
        for word in v4.tolist():
            text = known.get(word)
            if text is None:
                text = known[word] = socket.inet_ntop(socket.AF_INET, word.to_bytes(4, "little"))
            out.append(text)
        for raw in map(bytes, v6):
            text = known.get(raw)
            if text is None:
                text = known[raw] = socket.inet_ntop(socket.AF_INET6, raw)
            out.append(text)
        return out


def _unique_rows(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first copy, inverse) of (m, 2) u64 rows."""
    order = np.lexsort((words[:, 1], words[:, 0]))
    s = words[order]
    head = np.ones(len(s), bool)
    head[1:] = (s[1:] != s[:-1]).any(axis=1)
    inverse = np.empty(len(s), np.int64)
    inverse[order] = np.cumsum(head) - 1
    return order[head], inverse


def _address_ids(lo: np.ndarray, hi: np.ndarray, v4: np.ndarray, book: AddressBook):
    """(ids of lo, ids of hi, texts, text bytes) for (n, 16) u8 addresses."""
    n = len(lo)
    both = np.concatenate([lo, hi])
    is4 = np.concatenate([v4, v4])
    ids = np.empty(2 * n, np.int64)
    words4 = both[is4, :4].copy().view(np.uint32).ravel()
    uniq4, inv4 = np.unique(words4, return_inverse=True)
    ids[is4] = inv4
    raw6 = both[~is4]
    first6, inv6 = _unique_rows(raw6.view(np.uint64)) if len(raw6) else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    ids[~is4] = inv6 + len(uniq4)
    texts = book.texts(uniq4, raw6[first6])
    width = max((len(t) for t in texts), default=1)
    encoded = np.array([t.encode() for t in texts], dtype=f"S{width}")
    return ids[:n], ids[n:], texts, encoded


def decode(keys: np.ndarray, entries: np.ndarray, now_ns: int, table: str,
           counters: CounterSource = entry_counters, book: AddressBook | None = None,
           include_expired: bool = False) -> Chunk:
    """The live rows of one batch read as a Chunk (expired ones left out,
    as the datapath counts them absent, unless asked)."""
    expires = entry_clock(entries)
    state, flags = entry_state_flags(entries)
    if not include_expired:
        live = expires > now_ns
        if not live.all():
            keys, entries, expires, state, flags = (
                keys[live], entries[live], expires[live], state[live], flags[live])
    n = len(keys)
    proto, family, query = keys["proto"], keys["family"], keys["icmp_query"]
    lo = keys["addr_lo"].view(np.uint8).reshape(n, 16)
    hi = keys["addr_hi"].view(np.uint8).reshape(n, 16)
    lo_id, hi_id, texts, encoded = _address_ids(lo, hi, family == FAMILY_IPV4,
                                                book if book is not None else AddressBook())
    # the datapath stores ports as they are on the wire
    plo = keys["port_lo"].byteswap()
    phi = keys["port_hi"].byteswap()
    flip = (flags & F_ORIG_IS_HI) != 0
    flip2 = flip[:, None]
    is_icmp = (proto == ICMP) | (proto == ICMPV6)
    kind = np.full(n, BARE, np.uint8)
    kind[(proto == TCP) | (proto == UDP)] = PORTS
    kind[is_icmp & (query != 0)] = QUERY
    itype = (query >> 8).astype(np.uint8)
    rtype = np.where(proto == ICMPV6, _REPLY_V6[itype], _REPLY_V4[itype])
    c = counters(keys, entries) if n else None
    return Chunk(
        table=table.removeprefix("ct_"), proto=proto.copy(), family=family.copy(),
        state=state.copy(), kind=kind,
        src=np.where(flip, hi_id, lo_id), dst=np.where(flip, lo_id, hi_id),
        src_raw=np.where(flip2, hi, lo), dst_raw=np.where(flip2, lo, hi),
        sport=np.where(flip, phi, plo), dport=np.where(flip, plo, phi),
        itype=itype, rtype=rtype, code=(query & 0xFF).astype(np.uint8),
        timeout=np.maximum((expires - now_ns) // NS, 0),
        unreplied=(flags & F_SEEN_REPLY) == 0, assured=(flags & F_ASSURED) != 0,
        packets=None if c is None else np.array(c.packets, np.uint64),
        bytes=None if c is None else np.array(c.bytes, np.uint64),
        counted=None if c is None or c.present is None else np.array(c.present, bool),
        addr_text=texts, addr_bytes=encoded)


def sort_order(c: Chunk) -> np.ndarray:
    """Row order by protocol, then the original source address (as text)
    and port, destination address and port: ctbpf list --sort."""
    _, rank = np.unique(np.array(c.addr_text or [""]), return_inverse=True)
    ports = c.kind == PORTS
    return np.lexsort((np.where(ports, c.dport, 0), rank[c.dst], np.where(ports, c.sport, 0),
                       rank[c.src], c.proto))


def stream_sorted(pin_dir: Path, counters: CounterSource = entry_counters,
                  size: int = CHUNK) -> Iterator[Chunk]:
    """stream(), sorted by sort_order(): holds the whole table."""
    book = AddressBook()
    parts = []
    for name in TABLES:
        keys, entries, now = read_all(pin_dir, name)
        parts.append(decode(keys, entries, now, name, counters, book))
    whole = Chunk.concat(parts)
    order = sort_order(whole)
    for at in range(0, len(order), size):
        yield whole.select(order[at:at + size])


def stream(pin_dir: Path, counters: CounterSource = entry_counters, first: int = FIRST_CHUNK,
           size: int = CHUNK) -> Iterator[Chunk]:
    """Every live flow of both tables, chunk by chunk, in table order."""
    book = AddressBook()
    for name, keys, entries, now in read_chunks(pin_dir, TABLES, first, size):
        chunk = decode(keys, entries, now, name, counters, book)
        if len(chunk):
            yield chunk
