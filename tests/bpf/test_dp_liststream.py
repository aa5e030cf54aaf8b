"""`ctbpf list` streamed from the real, loaded datapath's maps: every flow
the per-flow reader (table.read_flows + formats) shows, in each format,
with filters, sorted or in table order, chunk by chunk."""

from __future__ import annotations

import ctypes
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

import pytest

from ctbpf import abi
from ctbpf.cli.filters import FlowFilter, parse_addr
from ctbpf.datapath import bpfsys, formats, table, tablestream
from ctbpf.datapath.flowkey import key_from_tuple

from conftest import NS

PER_TABLE = 1000        # below the test datapath's ct_new (1024): nothing evicted
F = {name: abi.const(f"CT_F_{name}") for name in ("SEEN_REPLY", "ASSURED", "ORIG_IS_HI", "ACCT")}


def _flow(rng: random.Random, i: int, assured: bool, now: int):
    v6 = i % 4 == 0
    a = f"fd00::{i % 50 + 1:x}" if v6 else f"10.1.{i % 3}.{i % 200 + 1}"
    b = f"fd00:1::{i % 7 + 1:x}" if v6 else f"10.2.0.{i % 9 + 1}"
    kind = i % 5
    if kind in (0, 1, 2):
        key, hi = key_from_tuple(a, b, 6 if kind < 2 else 17, 1024 + i, rng.choice([80, 443, 53]))
    elif kind == 3:
        key, hi = key_from_tuple(a, b, 58 if v6 else 1, i, i ^ 0xFFFF, (128 if v6 else 8) << 8)
    else:
        key, hi = key_from_tuple(a, b, 47)
    e = abi.CtEntry()
    # nine tenths of a second past the second (less a tick, 0.13 s, once kept
    # in ticks): a listed timeout does not move between two reads
    e.expires = abi.ticks(now + (rng.randrange(10, 4000) * NS + NS * 9 // 10 if i % 11 else -NS))
    e.state = 3 if assured else rng.randrange(1, 11)
    e.flags = (F["SEEN_REPLY"] | F["ASSURED"] if assured else rng.choice([0, F["SEEN_REPLY"]]))
    e.flags |= F["ORIG_IS_HI"] if hi else 0
    acct = None
    if i % 3:           # two in three made while acct was on: counters in ct_acct
        e.flags |= F["ACCT"]
        acct = abi.CtAcct(packets=(i, i // 2), bytes=(60 * i, 30 * i))
    return key, e, acct


def _fill(pin_dir, name: str, flows) -> None:
    pairs = [(k, e) for k, e, _ in flows]
    _put(pin_dir, name, pairs)
    counted = [(k, a) for k, _, a in flows if a is not None]
    if counted:
        _put(pin_dir, table.ACCT_MAP, counted)


def _put(pin_dir, name: str, pairs) -> None:
    keys = b"".join(bytes(k) for k, _ in pairs)
    values = b"".join(bytes(e) for _, e in pairs)
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    fd = bpfsys.obj_get(str(pin_dir / name))
    try:
        assert bpfsys.update_batch(fd, ctypes.addressof(kbuf), ctypes.addressof(vbuf),
                                   len(pairs)) == len(pairs)
    finally:
        os.close(fd)


@pytest.fixture
def filled(tracker):
    """Both tables holding PER_TABLE flows each of every kind, one in 11 expired."""
    rng = random.Random(15)
    now = time.monotonic_ns()
    _fill(tracker.pin_dir, "ct_assured", [_flow(rng, i, True, now) for i in range(PER_TABLE)])
    _fill(tracker.pin_dir, "ct_new", [_flow(rng, i, False, now)
                                      for i in range(PER_TABLE, 2 * PER_TABLE)])
    return tracker


def _cli(pin_dir, *args: str) -> subprocess.CompletedProcess:
    cp = subprocess.run([sys.executable, "-m", "ctbpf", "list", "--pin-dir", str(pin_dir), *args],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp


def _untimed(lines):
    """Lines without their timeout: a second may pass between two reads."""
    return [" ".join(w if i != 2 else "T" for i, w in enumerate(line.split(" ")))
            for line in lines]


def _untimed_json(objs):
    return [{k: v for k, v in o.items() if k != "timeout"} for o in objs]


def _old_sort(flows):
    return sorted(flows, key=lambda f: (f.proto, f.orig.src, f.orig.sport or 0, f.orig.dst,
                                        f.orig.dport or 0))


def test_stream_in_small_chunks_is_every_flow(filled):
    # chunks of 1 and 7: many batch reads, and ENOSPC retries where a bucket holds more
    want = table.read_flows(filled.pin_dir)
    assert len(want) > PER_TABLE
    for first, size in ((1, 7), (2048, 65536)):
        got = [f for c in tablestream.stream(filled.pin_dir, tablestream.acct_counters(filled.pin_dir),
                                                          first=first, size=size)
               for f in c.flows()]
        assert Counter(got) == Counter(want)


@pytest.mark.parametrize("output, line", [("proc", formats.proc_line),
                                          ("conntrack", formats.conntrack_line)])
def test_cli_text_is_the_reference_lines_unsorted(filled, output, line):
    cp = _cli(filled.pin_dir, "-o", output)
    want = [line(f) for f in table.read_flows(filled.pin_dir)]
    assert Counter(_untimed(cp.stdout.splitlines())) == Counter(_untimed(want))
    if output == "conntrack":
        assert f": {len(want)} flow entries have been shown." in cp.stderr


def test_cli_json_and_sort(filled):
    flows = _old_sort(table.read_flows(filled.pin_dir))
    got = json.loads(_cli(filled.pin_dir, "-o", "json", "--sort").stdout)
    assert _untimed_json(got) == _untimed_json([formats.flow_dict(f) for f in flows])
    assert all(w.timeout - 1 <= g["timeout"] <= w.timeout for g, w in zip(got, flows))
    sorted_proc = _cli(filled.pin_dir, "--sort").stdout.splitlines()
    assert _untimed(sorted_proc) == _untimed([formats.proc_line(f) for f in flows])
    unsorted = _untimed_json(json.loads(_cli(filled.pin_dir, "-o", "json").stdout))
    assert sorted(map(json.dumps, unsorted)) == sorted(
        map(json.dumps, _untimed_json(formats.flow_dict(f) for f in flows)))


@pytest.mark.parametrize("args", [
    ("-p", "tcp"), ("-p", "udp", "--dport", "53"), ("--state", "ESTABLISHED"),
    ("--state", "SYN_SENT", "-p", "tcp"), ("--src", "10.1.1.0/24"), ("--dst", "10.2.0.3"),
    ("--src", "fd00::/112", "-p", "icmpv6"), ("--sport", "1030"), ("-p", "gre"),
    ("--dst", "fd00:1::/32", "--dport", "443")], ids=lambda a: " ".join(a))
def test_filters_on_the_streamed_path(filled, args):
    names = dict(zip(args[::2], args[1::2]))
    flt = FlowFilter(
        proto=None if "-p" not in names else {"tcp": 6, "udp": 17, "icmpv6": 58,
                                              "gre": 47}[names["-p"]],
        state=names.get("--state"),
        src=parse_addr(names["--src"]) if "--src" in names else None,
        dst=parse_addr(names["--dst"]) if "--dst" in names else None,
        sport=int(names["--sport"]) if "--sport" in names else None,
        dport=int(names["--dport"]) if "--dport" in names else None)
    want = [formats.proc_line(f) for f in table.read_flows(filled.pin_dir) if flt.matches(f)]
    assert want, f"the fill has no flow for {args}"
    assert Counter(_untimed(_cli(filled.pin_dir, *args).stdout.splitlines())) == \
        Counter(_untimed(want))


def test_empty_tables(tracker):
    assert _cli(tracker.pin_dir).stdout == ""
    assert json.loads(_cli(tracker.pin_dir, "-o", "json").stdout) == []
