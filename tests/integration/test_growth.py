"""ct_assured grows with the flows it holds (ctbpf/agent/growth.py): made
small, rebuilt four times larger by the running daemon when seven eighths
full (ct_acct the same with its counter records), every entry kept and tracking never stopped. Real connections through
the lab's router, and ASSURED entries written into the pinned table to fill
it past the mark."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import pytest

from test_restart import Conns, all_established, wait_for
from test_resize import table_size

from ctbpf import abi
from ctbpf.datapath import bpfsys, pincheck, sizing, table
from ctbpf.datapath.flowkey import key_from_tuple

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

MAX = 65536
NS = 1_000_000_000


def fill_assured(pin_dir: Path, n: int, acct: bool = False) -> set[bytes]:
    """n ASSURED UDP streams, alive for an hour, written into ct_assured;
    with acct, made as while acct was on, each with its counter record
    (packets i and 2i, bytes 100 times that)."""
    now = time.monotonic_ns()
    keys, values, counters = bytearray(), bytearray(), bytearray()
    for i in range(n):
        key, hi = key_from_tuple(f"10.77.{i >> 8 & 0xFF}.{i & 0xFF}", "10.78.0.1", 17,
                                 10000 + i % 50000, 53)
        e = abi.CtEntry(expires=abi.ticks(now + 3600 * NS), created=abi.ticks(now))
        e.flags = abi.const("CT_F_ASSURED") | abi.const("CT_F_SEEN_REPLY") | \
            (abi.const("CT_F_ORIG_IS_HI") if hi else 0) | (abi.const("CT_F_ACCT") if acct else 0)
        keys += bytes(key)
        values += bytes(e)
        counters += bytes(abi.CtAcct(packets=(i, 2 * i), bytes=(100 * i, 200 * i)))
    kbuf = ctypes.create_string_buffer(bytes(keys), len(keys))
    # counters first: a flow flagged CT_F_ACCT always has its record
    for name, data in ((("ct_acct", counters),) if acct else ()) + (("ct_assured", values),):
        vbuf = ctypes.create_string_buffer(bytes(data), len(data))
        fd = bpfsys.obj_get(str(pin_dir / name))
        try:
            assert bpfsys.update_batch(fd, ctypes.addressof(kbuf), ctypes.addressof(vbuf), n) == n
        finally:
            os.close(fd)
    size = ctypes.sizeof(abi.CtKey)
    return {bytes(keys[i * size:(i + 1) * size]) for i in range(n)}


def assured_keys(pin_dir: Path) -> set[bytes]:
    keys, _, count = table.read_raw(pin_dir, "ct_assured")
    size = ctypes.sizeof(abi.CtKey)
    return {bytes(keys[i * size:(i + 1) * size]) for i in range(count)}


def test_ct_assured_grows_when_seven_eighths_full(lab, pin_dir, start_tracker):
    first = sizing.sizes(MAX)
    assert first.assured == sizing.ASSURED_START < first.assured_max
    tr = start_tracker(pin_dir, extra=["--max", str(MAX)])
    assert table_size(pin_dir) == {"ct_new": first.new_max, "ct_assured": first.assured}
    conns = Conns(lab, 8)
    wait_for("connections ESTABLISHED and ASSURED", lambda: all_established(conns, tr))
    stats0 = tr.stats()

    written = fill_assured(pin_dir, int(first.assured * sizing.GROW_AT) + 500)
    grown = first.grown()
    wait_for("ct_assured grown", lambda: table_size(pin_dir)["ct_assured"] == grown.assured,
             timeout=60)
    assert table_size(pin_dir)["ct_new"] == first.new_max
    missing = written - assured_keys(pin_dir)
    assert not missing, f"{len(missing)} entries lost in the growth"
    assert conns.check()["ok"] == 8
    stats = tr.stats()
    assert stats["packets"]["invalid"] == stats0["packets"]["invalid"], stats["invalid"]
    assert tr.running
    tr.stop(signal.SIGINT)
    assert f"grown ct_assured from {first.assured} to {grown.assured} entries" in tr.stderr, tr.stderr
    assert "Traceback" not in tr.stderr
    conns.command("quit")


def test_ct_acct_grows_with_its_records_and_keeps_every_counter(lab, pin_dir, start_tracker):
    first = sizing.sizes(MAX)
    assert first.acct == sizing.ACCT_START < first.holds
    tr = start_tracker(pin_dir, extra=["--max", str(MAX)])      # acct=1
    assert pincheck.pinned_size(pin_dir, "ct_acct") == first.acct
    n = int(first.acct * sizing.GROW_AT) + 500
    written = fill_assured(pin_dir, n, acct=True)
    want = first.acct_grown().acct
    wait_for("ct_acct grown", lambda: pincheck.pinned_size(pin_dir, "ct_acct") == want, timeout=60)
    kept = table.read_acct(pin_dir)
    assert written <= set(kept), f"{len(written - set(kept))} counter records lost"
    got = sorted(tuple(kept[k]) for k in written)
    assert got == sorted((i, 2 * i, 100 * i, 200 * i) for i in range(n))
    tr.stop(signal.SIGINT)
    assert f"ct_acct from {first.acct} to {want} entries" in tr.stderr, tr.stderr
