"""The column decoder and the chunk formats against the per-flow reference:
table.decode() and ctbpf.datapath.formats, field by field and byte for
byte, on raw entries of every kind (no BPF needed)."""

import ctypes
import json
import random

import numpy as np
import pytest

from ctbpf import abi
from ctbpf.datapath import formats, listtext, tablestream
from ctbpf.datapath.flowkey import key_from_tuple
from ctbpf.datapath.table import decode

NOW = 50_000 * 1_000_000_000
F = {name: abi.const(f"CT_F_{name}") for name in ("SEEN_REPLY", "ASSURED", "ORIG_IS_HI")}


def _entry(rng, src_is_hi, expired=False):
    e = abi.CtEntry()
    names = {f[0] for f in abi.CtEntry._fields_}
    if "expires_ns" in names:
        e.expires_ns = NOW - rng.randrange(1, 10**10) if expired else \
            NOW + rng.randrange(0, 500_000 * 10**9)
    else:
        e.expires = NOW // 10**9 - rng.randrange(0, 10) if expired else \
            NOW // 10**9 + rng.randrange(1, 500_000)
    e.state = rng.randrange(0, 11)
    e.flags = (rng.choice([0, F["SEEN_REPLY"], F["SEEN_REPLY"] | F["ASSURED"]])
               | (F["ORIG_IS_HI"] if src_is_hi else 0))
    if "packets" in names:
        e.packets[:] = [rng.randrange(0, 10**rng.randrange(1, 20)) for _ in range(2)]
        e.bytes[:] = [rng.randrange(0, 2**64) for _ in range(2)]
    return e


def _flows(n, seed=7):
    """(key, entry) pairs of every kind: TCP/UDP, ICMP queries, ICMP without
    a query, other protocols; IPv4 and IPv6; some expired."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v6 = rng.random() < 0.3
        a = f"fd00::{rng.randrange(1, 40):x}" if v6 else f"10.{rng.randrange(0, 3)}.0.{rng.randrange(1, 30)}"
        b = f"fd00:1::{rng.randrange(1, 40):x}" if v6 else f"192.168.{rng.randrange(0, 2)}.{rng.randrange(1, 250)}"
        kind = rng.choice(["tcp", "udp", "icmp", "icmp0", "gre"])
        if kind in ("tcp", "udp"):
            key, hi = key_from_tuple(a, b, 6 if kind == "tcp" else 17, rng.randrange(0, 65536),
                                     rng.randrange(0, 65536))
        elif kind == "icmp":
            ident = rng.randrange(0, 65536)
            req = rng.choice([128, 139]) if v6 else rng.choice([8, 13, 15, 17, 42])
            key, hi = key_from_tuple(a, b, 58 if v6 else 1, ident, ident ^ 0xFFFF,
                                     (req << 8) | rng.randrange(0, 3))
        elif kind == "icmp0":
            key, hi = key_from_tuple(a, b, 58 if v6 else 1)
        else:
            key, hi = key_from_tuple(a, b, rng.choice([47, 132, 50]))
        out.append((key, _entry(rng, hi, expired=rng.random() < 0.1)))
    return out


def _arrays(pairs):
    keys = np.frombuffer(b"".join(bytes(k) for k, _ in pairs), tablestream.KEY_DTYPE)
    entries = np.frombuffer(b"".join(bytes(e) for _, e in pairs), tablestream.ENTRY_DTYPE)
    return keys, entries


def _live(pairs):
    return [decode(k, e, NOW, "ct_assured") for k, e in pairs
            if tablestream.entry_clock(np.frombuffer(bytes(e), tablestream.ENTRY_DTYPE))[0] > NOW]


@pytest.fixture(scope="module")
def pairs():
    return _flows(3000)


@pytest.fixture(scope="module")
def chunk(pairs):
    return tablestream.decode(*_arrays(pairs), NOW, "ct_assured")


def test_decoder_matches_the_reference_field_by_field(pairs, chunk):
    want = _live(pairs)
    got = chunk.flows()
    assert 0 < len(got) == len(want) < len(pairs)   # some were expired and left out
    for g, w in zip(got, want):
        for field in ("proto", "family", "state", "timeout", "unreplied", "assured",
                      "packets", "bytes", "table"):
            assert getattr(g, field) == getattr(w, field), (field, g, w)
        for side in ("orig", "reply"):
            assert getattr(g, side).as_dict() == getattr(w, side).as_dict(), (side, g, w)


@pytest.mark.parametrize("name, line", [("proc", formats.proc_line),
                                        ("conntrack", formats.conntrack_line)])
def test_chunk_text_is_the_per_flow_text_byte_for_byte(pairs, chunk, name, line):
    want = "".join(line(f) + "\n" for f in _live(pairs)).encode()
    assert listtext.FORMATS[name](chunk) == want


def test_chunk_json_is_flow_json_byte_for_byte(pairs, chunk):
    flows = _live(pairs)
    text = listtext.json_lines(chunk).decode()
    assert text == "".join(formats.flow_json(f) + ",\n" for f in flows)
    assert json.loads("[" + text[:-2] + "]") == [formats.flow_dict(f) for f in flows]


def test_include_expired_keeps_every_row(pairs):
    keys, entries = _arrays(pairs)
    c = tablestream.decode(keys, entries, NOW, "ct_new", include_expired=True)
    assert len(c) == len(pairs) and c.table == "new"
    assert (c.timeout >= 0).all()


def test_flows_without_counters_show_none(pairs):
    keys, entries = _arrays(pairs[:50])
    present = np.arange(50) % 2 == 0

    def half(k, e):   # a CounterSource with records for every other row
        return tablestream.Counters(np.ones((len(k), 2), np.uint64),
                                    np.full((len(k), 2), 9, np.uint64), present)

    c = tablestream.decode(keys, entries, NOW, "ct_new", counters=half, include_expired=True)
    flows = c.flows()
    assert [f.packets is not None for f in flows] == present.tolist()
    assert listtext.conntrack_lines(c).decode() == "".join(
        formats.conntrack_line(f) + "\n" for f in flows)
    assert listtext.json_lines(c).decode() == "".join(formats.flow_json(f) + ",\n" for f in flows)
    bare = next(f for f in flows if f.packets is None)
    assert "packets=" not in formats.conntrack_line(bare)
    assert "packets" not in formats.flow_dict(bare)

    none = tablestream.decode(keys, entries, NOW, "ct_new", counters=lambda k, e: None,
                              include_expired=True)
    assert none.packets is None and all(f.packets is None for f in none.flows())
    assert " packets=" not in listtext.conntrack_lines(none).decode()


def test_select_and_address_book_reuse(pairs, chunk):
    book = tablestream.AddressBook(limit=4)
    keys, entries = _arrays(pairs)
    a = tablestream.decode(keys[:1000], entries[:1000], NOW, "ct_assured", book=book)
    b = tablestream.decode(keys[1000:], entries[1000:], NOW, "ct_assured", book=book)
    assert [f.orig for f in a.flows() + b.flows()] == [f.orig for f in chunk.flows()]
    mask = chunk.proto == 6
    assert [f.orig for f in chunk.select(mask).flows()] == \
        [f.orig for f in chunk.flows() if f.proto == 6]


def test_numbers_of_every_width():
    values = np.array([0, 7, 10, 99, 65535, 65536, 431999, 10**19, 2**64 - 1], np.uint64)
    out = listtext.Lines(len(values))
    out.number(values)
    out.text("\n")
    assert out.bytes().decode().split() == [str(int(v)) for v in values]


def test_empty_chunk():
    keys, entries = np.zeros(0, tablestream.KEY_DTYPE), np.zeros(0, tablestream.ENTRY_DTYPE)
    c = tablestream.decode(keys, entries, NOW, "ct_new")
    assert len(c) == 0 and c.flows() == [] and listtext.proc_lines(c) == b""
    assert ctypes.sizeof(abi.CtKey) == tablestream.KEY_DTYPE.itemsize


@pytest.mark.parametrize("name", sorted(listtext.FORMATS))
def test_tables_made_in_any_order(pairs, name):
    # short timeouts: the first number of a line comes from the small-number table
    keys, entries = _arrays(pairs)
    entries = entries.copy()
    clock = "expires_ns" if "expires_ns" in entries.dtype.names else "expires"
    entries[clock] = NOW + 1000 * 10**9 if clock == "expires_ns" else NOW // 10**9 + 1000
    listtext._NUMBERS.clear()
    c = tablestream.decode(keys, entries, NOW, "ct_new")
    ref = {"proc": formats.proc_line, "conntrack": formats.conntrack_line,
           "json": lambda f: formats.flow_json(f) + ","}[name]
    assert listtext.FORMATS[name](c) == "".join(ref(f) + "\n" for f in c.flows()).encode()
