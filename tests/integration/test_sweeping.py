"""The sweeper for real.

In the lab: a tracker with short sweep intervals and udp_timeout=1 s; UDP
flows that go quiet leave the maps themselves (not only the listing) and
are counted in CT_STAT_SWEPT, while a flow kept alive by traffic every
200 ms is never swept: its entry keeps its creation time and every packet.

On a datapath of our own (no lab traffic): an entry refreshed between the
sweeper's read and the kernel's delete survives, and each swept entry
produces exactly one DESTROY event (reason EXPIRED).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from types import SimpleNamespace

import pytest

from ctbpf import abi, tunables
from ctbpf.agent.sweepcore import KEY_SIZE
from ctbpf.agent.sweeper import Sweeper
from ctbpf.datapath import bpfsys, configmap, stats, table
from ctbpf.datapath.configmap import read_config, write_config

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

SWEPT = abi.const("CT_STAT_SWEPT")
NS = 1_000_000_000
SINK_PORT, KEEP_PORT = 47001, 47002
QUIET_FLOWS = 20
QUIET_BASE, KEEP_SPORT = 41000, 42000
KEEP_INTERVAL, KEEP_COUNT = 0.2, 20     # 4 s of traffic, 1 s timeout


def raw_udp(pin_dir) -> dict[tuple[int, int], abi.CtEntry]:
    """Every UDP entry of both maps, expired or not, by (orig sport, dport)."""
    out = {}
    for name in table.TABLES:
        keys, values, count = table.read_raw(pin_dir, name)
        for i in range(count):
            key = abi.CtKey.from_buffer_copy(keys, i * table.KEY_SIZE)
            entry = abi.CtEntry.from_buffer_copy(values, i * table.ENTRY_SIZE)
            if key.proto != 17:
                continue
            flow = table.decode(key, entry, 0, name)
            out[(flow.orig.sport, flow.orig.dport)] = entry
            entry.raw_key = bytes(key)
    return out


SINK = """
import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    socks.append(s)
time.sleep(60)
"""

SEND = """
import socket, sys, time
host, dport, first, count, every, times = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
socks = []
for sport in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    socks.append(s)
for n in range(times):
    if n:
        time.sleep(every)
    for s in socks:
        s.sendto(b"sweep-test", (host, dport))
"""


def test_quiet_flows_are_swept_from_the_maps_and_live_ones_never(lab, pin_dir, start_tracker):
    tr = start_tracker(pin_dir, extra=["--sweep-min-interval", "0.2",
                                       "--sweep-max-interval", "0.5"])
    values = tunables.from_config(read_config(pin_dir))
    values["udp_timeout"] = 1
    write_config(pin_dir, values)
    assert tunables.from_config(read_config(pin_dir))["udp_timeout"] == 1

    lab.popen("server", [sys.executable, "-c", SINK, SINK_PORT, KEEP_PORT])
    assert lab.wait_listening("server", SINK_PORT, "udp")
    assert lab.wait_listening("server", KEEP_PORT, "udp")
    swept_before = stats.read_counters(pin_dir)[SWEPT]

    keeper = lab.popen("client", [sys.executable, "-c", SEND, lab.server_ip, KEEP_PORT,
                                  KEEP_SPORT, 1, KEEP_INTERVAL, KEEP_COUNT])
    cp = lab.exec("client", [sys.executable, "-c", SEND, lab.server_ip, SINK_PORT,
                             QUIET_BASE, QUIET_FLOWS, 0, 1])
    assert cp.returncode == 0, cp.stderr
    quiet = {(QUIET_BASE + i, SINK_PORT) for i in range(QUIET_FLOWS)}
    keep = (KEEP_SPORT, KEEP_PORT)

    seen = raw_udp(pin_dir)
    assert quiet <= set(seen), f"quiet flows not tracked: {sorted(quiet - set(seen))}"

    # The quiet flows expire after 1 s; with passes every 0.2-0.5 s they must
    # leave the maps (not just the listing) within a few seconds.
    first_keep = None
    deadline = time.monotonic() + 6.0
    while True:
        now = raw_udp(pin_dir)
        if first_keep is None and keep in now:
            first_keep = now[keep]
        if first_keep is not None:
            # the kept-alive flow is there at every look, the same entry
            assert keep in now, "the flow kept alive by traffic was swept"
            assert now[keep].created == first_keep.created, "kept-alive flow recreated"
        left = quiet & set(now)
        if not left:
            break
        assert time.monotonic() < deadline, f"{len(left)} expired flows still in the maps"
        time.sleep(0.1)
    swept = stats.read_counters(pin_dir)[SWEPT] - swept_before
    assert swept >= QUIET_FLOWS

    keeper.wait(timeout=KEEP_INTERVAL * KEEP_COUNT + 10)
    assert keeper.returncode == 0, keeper.stderr.read()
    final = raw_udp(pin_dir)
    assert keep in final, "the flow kept alive by traffic was swept"
    entry = final[keep]
    # never swept and recreated: one entry saw every datagram
    assert entry.created == first_keep.created
    assert table.read_acct(pin_dir)[entry.raw_key][0] == KEEP_COUNT   # packets, orig
    # ... and once quiet it goes too
    deadline = time.monotonic() + 6.0
    while keep in raw_udp(pin_dir):
        assert time.monotonic() < deadline, "the kept-alive flow was not swept once quiet"
        time.sleep(0.1)
    listing = tr.list_json("-p", "udp")
    assert not [f for f in listing if f["orig"].get("dport") in (SINK_PORT, KEEP_PORT)]
    tr.stop()


# --------------------------------------------------------------------------
# on a datapath of our own


@pytest.fixture
def datapath(pin_dir, need_root):
    from ctbpf.datapath.loader import Datapath, remove_pins  # noqa: PLC0415

    dp = Datapath(pin_dir, max_entries=4096).load()
    try:
        yield dp
    finally:
        dp.close()
        remove_pins(pin_dir)


def _key(n: int) -> abi.CtKey:
    k = abi.CtKey(port_lo=1000 + n, port_hi=2000, proto=17, family=abi.const("CT_FAMILY_IPV4"))
    k.addr_lo[0], k.addr_hi[0] = 0x0100000A, 0x0200000A + (n << 24)
    return k


def _put(pin_dir, name: str, key, expires_ns: int) -> None:
    fd = bpfsys.obj_get(str(pin_dir / name))
    try:
        bpfsys.update(fd, key, abi.CtEntry(expires=abi.ticks(expires_ns),
                                           created=abi.ticks(expires_ns - NS)))
    finally:
        os.close(fd)


def _present(pin_dir, name: str, key) -> bool:
    fd = bpfsys.obj_get(str(pin_dir / name))
    try:
        return bpfsys.lookup(fd, key, abi.CtEntry())
    finally:
        os.close(fd)


def test_refreshed_between_read_and_delete_survives_and_destroy_is_reported(datapath, pin_dir):
    now = time.monotonic_ns()
    expired = {"ct_new": [_key(i) for i in range(10)],
               "ct_assured": [_key(i) for i in range(10, 20)]}
    live = [_key(i) for i in range(20, 25)]
    for name, keys in expired.items():
        for k in keys:
            _put(pin_dir, name, k, now - NS)
    for k in live:
        _put(pin_dir, "ct_assured", k, now + 600 * NS)
    # Traffic on two expired flows after the sweeper read them, before the
    # kernel deletes them: the datapath stamps a new expiry.
    refreshed = {"ct_new": expired["ct_new"][3], "ct_assured": expired["ct_assured"][7]}

    class Racing:
        def __init__(self, dp):
            self.dp = dp

        def sweep(self, table_id, keys):
            name = "ct_new" if table_id == abi.const("CT_TABLE_NEW") else "ct_assured"
            assert bytes(refreshed[name]) in {keys[i:i + KEY_SIZE]
                                             for i in range(0, len(keys), KEY_SIZE)}
            _put(pin_dir, name, refreshed[name], time.monotonic_ns() + 60 * NS)
            return self.dp.sweep(table_id, keys)

    events = []
    datapath.open_events(lambda ev: events.append((ev.type, ev.reason, bytes(ev.key))))
    datapath.poll_events(0)
    events.clear()
    configmap.set_event_listeners(pin_dir, 1)     # as the daemon does for a client
    before = stats.read_counters(pin_dir)[SWEPT]

    owner = SimpleNamespace(pin_dir=pin_dir, datapath=None)
    owner.datapath = Racing(datapath)
    sw = Sweeper(1.0, 30.0)
    sw.start(owner)
    snap = sw.sweep_now()

    assert (snap["last_scanned"], snap["last_expired"], snap["last_deleted"]) == (25, 20, 18)
    assert snap["kept_total"] == 2
    assert snap["deleted_by_table"] == {"ct_new": 9, "ct_assured": 9}
    for name, keys in expired.items():
        for k in keys:
            assert _present(pin_dir, name, k) == (k is refreshed[name])
    assert all(_present(pin_dir, "ct_assured", k) for k in live)
    assert stats.read_counters(pin_dir)[SWEPT] - before == 18

    datapath.poll_events(100)
    destroy = abi.const("CT_EVENT_DESTROY"), abi.const("CT_DESTROY_EXPIRED")
    gone = {bytes(k) for keys in expired.values() for k in keys} - {bytes(k) for k in
                                                                     refreshed.values()}
    assert sorted(e[2] for e in events if e[:2] == destroy) == sorted(gone)
    assert len(events) == 18


def test_a_sweep_of_empty_tables_is_cheap(datapath, pin_dir):
    sw = Sweeper(1.0, 30.0)
    sw.start(SimpleNamespace(pin_dir=pin_dir, datapath=datapath))
    t0 = time.perf_counter()
    snap = sw.sweep_now()
    assert snap["last_scanned"] == 0 and snap["last_deleted"] == 0
    assert time.perf_counter() - t0 < 0.05
    assert sw.interval == 2.0


# --------------------------------------------------------------------------
# the expiry index: flows the datapath itself created and registered


def _udp_frame(sport: int) -> bytes:
    """Ethernet + IPv4 + UDP 10.1.0.1:sport -> 10.2.0.2:53, 8 bytes of payload."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 0, 0, 64, 17, 0,
                     bytes([10, 1, 0, 1]), bytes([10, 2, 0, 2]))
    return (b"\x02\0\0\0\0\x0b\x02\0\0\0\0\x0a\x08\x00" + ip +
            struct.pack("!HHHH", sport, 53, 16, 0) + bytes(8))


def _send(dp, sports) -> None:
    for sport in sports:
        bpfsys.prog_test_run(dp.prog_fd(), _udp_frame(sport))


def _set(pin_dir, **values) -> None:
    configmap.write_values(pin_dir, values)


def _udp_sports(pin_dir) -> set[int]:
    return {sport for sport, _ in raw_udp(pin_dir)}


def test_index_passes_look_only_at_what_is_due(datapath, pin_dir):
    datapath.open_events(lambda ev: None)
    _send(datapath, range(30000, 30050))             # 50 flows, udp_timeout 30 s
    sw = Sweeper(1.0, 30.0)
    sw.start(SimpleNamespace(pin_dir=pin_dir, datapath=datapath))
    snap = sw.sweep_now()
    assert snap["last_kind"] == "seed" and snap["last_scanned"] == 50
    assert snap["index_keys"] == 50               # filed from the walk; ring records on top
    _set(pin_dir, udp_timeout=1)
    _send(datapath, range(31000, 31020))             # 20 flows due in 1 s
    _set(pin_dir, udp_timeout=4)
    _send(datapath, [31007])                         # one of them lives on: expiry now 4 s
    time.sleep(2.1)

    snap = sw.sweep_now()

    # Only the 20 due keys went to the kernel, not the 70 entries.
    assert snap["last_kind"] == "index"
    assert (snap["last_scanned"], snap["last_deleted"]) == (20, 19)
    assert snap["kept_total"] >= 1
    assert _udp_sports(pin_dir) == set(range(30000, 30050)) | {31007}
    time.sleep(3.1)                                  # 31007's new expiry (T+4 s) and its slot pass
    snap = sw.sweep_now()
    assert snap["last_kind"] == "index" and snap["last_deleted"] == 1
    assert _udp_sports(pin_dir) == set(range(30000, 30050))
    assert snap["index_passes"] == 2 and snap["walks"] == 1


def test_lost_registrations_make_the_next_pass_rebuild_the_index(pin_dir, need_root):
    from ctbpf.datapath.loader import Datapath, remove_pins  # noqa: PLC0415

    dp = Datapath(pin_dir, max_entries=4096, timers_bytes=4096).load()   # ~70 records
    try:
        sw = Sweeper(1.0, 30.0)
        sw.start(SimpleNamespace(pin_dir=pin_dir, datapath=dp))
        assert sw.sweep_now()["last_kind"] == "seed"
        _set(pin_dir, udp_timeout=1)
        _send(dp, range(32000, 32200))               # 200 registrations: most lost
        lost = stats.read_counters(pin_dir)[abi.const("CT_STAT_TIMER_LOST")]
        assert 100 < lost < 200
        # 1 s, and the expiry's rounding up to the tick after it (abi.ticks)
        time.sleep(1.0 + 2 * abi.tick_ns(1) / NS + 0.05)

        snap = sw.sweep_now()

        assert snap["last_kind"] == "seed" and snap["seeds"] == 2
        assert snap["last_deleted"] == 200 and _udp_sports(pin_dir) == set()
        assert snap["timer_lost_seen"] == lost
        assert sw.sweep_now()["last_kind"] == "index"   # rebuilt: back to the index
    finally:
        dp.close()
        remove_pins(pin_dir)
