"""conntrack_max changed on a running tracker: new maps, every entry and
counter kept, tracking never stopped; a size below the live entry count is
refused with nothing changed. Real traffic through the lab's router: held
TCP connections (ct_assured) and half-open ones (ct_new)."""

from __future__ import annotations

import ctypes
import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from conftest import run_in
from test_restart import Conns, all_established, listed, stop_keeping, total_packets, wait_for

from ctbpf import abi
from ctbpf.datapath import bpfsys, sizing, table

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

CONNS = 40
HALF_OPEN = 20
DROP_PORT = 81


def table_size(pin_dir: Path) -> dict[str, int]:
    out = {}
    for name in ("ct_new", "ct_assured"):
        fd = bpfsys.obj_get(str(pin_dir / name))
        try:
            out[name] = bpfsys.map_info(fd).max_entries
        finally:
            import os  # noqa: PLC0415
            os.close(fd)
    return out


def sized(max_entries: int) -> dict[str, int]:
    """The tables' sizes for a max: ct_new its default part, ct_assured the rest."""
    sz = sizing.sizes(max_entries)
    return {"ct_new": sz.new_max, "ct_assured": sz.assured}


def still_marked(pin_dir: Path) -> int:
    """ESTABLISHED entries with a side that still carries the rebuild's
    resync mark (ctbpf/agent/resync.py): none once both ends have sent."""
    n = 0
    for name in ("ct_new", "ct_assured"):
        keys, values, count = table.read_raw(pin_dir, name)
        for i in range(count):
            e = abi.CtEntry.from_buffer_copy(values, i * ctypes.sizeof(abi.CtEntry))
            if e.state == abi.const("CT_TCP_ESTABLISHED") and \
                    any(f & abi.const("CT_TS_RESYNC") for f in e.td_flags):
                n += 1
    return n


def resize(lab, pin_dir: Path, new_max: int):
    """The resize as users run it (the same function `ctbpf set max=N` calls)."""
    return run_in(lab, "router", [sys.executable, "-m", "ctbpf.agent.resize", new_max,
                                  "--pin-dir", pin_dir], timeout=180)


def half_open(lab) -> None:
    """HALF_OPEN SYNs the server never answers (dropped in its input): they
    stay SYN_SENT [UNREPLIED] in ct_new for 120 s."""
    lab.nft("server", "table inet rsz {\n chain input {\n"
                      "  type filter hook input priority -10; policy accept;\n"
                      f"  tcp dport {DROP_PORT} drop\n }}\n}}\n")
    cp = lab.exec("client", ["hping3", "-q", "-S", "-p", DROP_PORT, "-s", 30000, "-i", "u1000",
                             "-c", HALF_OPEN, lab.server_ip], timeout=30)
    assert cp.returncode in (0, 1), cp.stderr   # 1: no replies, as intended


def snapshot(flows: list[dict]) -> dict[tuple, dict]:
    def key(f):
        o = f["orig"]
        return (f["proto"], o["src"], o["dst"], o.get("sport"), o.get("dport"), o.get("id"))
    return {key(f): f for f in flows}


def check_kept(before: dict[tuple, dict], after: dict[tuple, dict]) -> None:
    missing = set(before) - set(after)
    assert not missing, f"{len(missing)} flows lost: {sorted(missing)[:5]}"
    for k, f in before.items():
        g = after[k]
        assert (g["state"], g["flags"], g["table"]) == (f["state"], f["flags"], f["table"]), (f, g)
        assert total_packets(g) >= total_packets(f)
        assert g["timeout"] <= f["timeout"] + 1     # absolute expiry: never lengthened by a copy


def test_resize_bigger_smaller_and_refused(lab, pin_dir, start_tracker):
    tr = start_tracker(pin_dir, extra=["--buckets", "128"])     # max = 8 x 128
    assert table_size(pin_dir) == sized(1024)
    conns = Conns(lab, CONNS)
    wait_for("connections ESTABLISHED and ASSURED", lambda: all_established(conns, tr))
    half_open(lab)
    wait_for("half-open flows", lambda: len([f for f in listed(tr)
                                              if f["orig"].get("dport") == DROP_PORT]) == HALF_OPEN)
    stats0 = tr.stats()

    for new_max in (4096, 256):
        before = snapshot(listed(tr))
        t0 = time.monotonic()
        cp = resize(lab, pin_dir, new_max)
        took = time.monotonic() - t0
        assert cp.returncode == 0, cp.stderr
        assert f"-> {new_max}" in cp.stdout and "entries kept" in cp.stdout, cp.stdout
        assert table_size(pin_dir) == sized(new_max)
        after = snapshot(listed(tr))
        check_kept(before, after)
        assert tr.running, "the daemon must go on running on the new maps"
        check = conns.check()
        assert check["ok"] == CONNS, check
        wait_for("every connection's resync marks cleared by its own packets",
                 lambda: still_marked(pin_dir) == 0)
        stats = tr.stats()
        for name in ("insert", "promote", "found"):
            assert stats["events"][name] >= stats0["events"][name], name
        assert stats["packets"]["established"] > stats0["packets"]["established"]
        assert stats["packets"]["invalid"] == stats0["packets"]["invalid"], \
            {r: n - stats0["invalid"].get(r, 0) for r, n in stats["invalid"].items()
             if n != stats0["invalid"].get(r, 0)}
        print(f"resize to {new_max}: {len(before)} flows kept in {took:.1f} s")

    # Smaller than the live entries: refused, nothing changes.
    before = snapshot(listed(tr))
    cp = resize(lab, pin_dir, 32)
    assert cp.returncode == 1, cp
    assert "smaller than the live entries" in cp.stderr and "nothing changed" in cp.stderr, \
        cp.stderr
    assert f"({CONNS} assured, {HALF_OPEN} new)" in cp.stderr, cp.stderr
    assert table_size(pin_dir) == sized(256)
    check_kept(before, snapshot(listed(tr)))
    assert conns.check()["ok"] == CONNS
    # Out of range: a usage error.
    cp = resize(lab, pin_dir, 3)
    assert cp.returncode == 2 and "out of range" in cp.stderr, cp
    # The events relay and sweeper carried on: a clean stop detaches everything.
    tr.stop(signal.SIGINT)
    assert "Traceback" not in tr.stderr
    conns.command("quit")


def test_resize_with_no_daemon_and_at_restart(lab, pin_dir, start_tracker):
    tr = start_tracker(pin_dir, extra=["--max", "512", "--keep-attached"])
    conns = Conns(lab, 12)
    wait_for("connections ESTABLISHED and ASSURED", lambda: all_established(conns, tr))
    stop_keeping(tr)
    before = snapshot(json.loads(tr.cli("list", "-o", "json").stdout))

    # Not from a namespace where the programs are not attached: they would
    # go on tracking into the old maps.
    cp = run_in(lab, "client", [sys.executable, "-m", "ctbpf.agent.resize", 2048, "--pin-dir", pin_dir],
                timeout=180)
    assert cp.returncode == 1, cp
    assert "this network namespace does not attach" in cp.stderr, cp.stderr
    assert table_size(pin_dir) == sized(512)

    # No daemon: the CLI rebuilds the tables itself and swaps the programs
    # that the stopped daemon left attached.
    cp = resize(lab, pin_dir, 2048)
    assert cp.returncode == 0, cp.stderr
    assert "swapped: XDP on cli0, XDP on srv0" in cp.stdout, cp.stdout
    assert table_size(pin_dir) == sized(2048)
    assert tr.attached() == ["cli0", "srv0"]
    time.sleep(0.5)
    check_kept(before, snapshot(json.loads(tr.cli("list", "-o", "json").stdout)))
    assert conns.check()["ok"] == 12

    # A restart without --max keeps the pinned size (and adopts); one with
    # another --max resizes at start.
    tr2 = start_tracker(pin_dir, extra=["--keep-attached"])
    assert table_size(pin_dir) == sized(2048)
    check_kept(before, snapshot(listed(tr2)))
    stop_keeping(tr2)
    tr3 = start_tracker(pin_dir, extra=["--max", "128"])
    assert table_size(pin_dir) == sized(128)
    check_kept(before, snapshot(listed(tr3)))
    assert conns.check()["ok"] == 12
    tr3.stop(signal.SIGINT)
    assert re.search(r"resized the tables from 2048 \(new_max \d+\) to 128 \(new_max 64\) "
                     r"entries", tr3.stderr), tr3.stderr
    conns.command("quit")
