"""The expiry index on the real datapath: what the datapath writes into the
ct_timers ring (read back through ctbpf.datapath.ringbuf's mmap consumer), and the
sweep program's CT_SWEEP_DUE mode.

Invariant under test: every live entry has a record due no later than its
expiry. So a record on creation, a record when a TCP state shortens the
timeout, and none when traffic only pushes the expiry later."""

import os
import time

import pytest

from ctbpf import abi
from ctbpf.agent.expiry import ExpiryIndex, KEY_SIZE, TIMER_SIZE
from ctbpf.datapath import bpfsys, configmap, ringbuf
from ctbpf.datapath.ringbuf import RingReader, record_size
from ctbpf.datapath.sweepprog import sweep_due_keys

import packets as P

NS = 1_000_000_000
STRIDE = record_size(TIMER_SIZE)
DESTROY = abi.const("CT_EVENT_DESTROY")


@pytest.fixture
def ring(tracker):
    fd = bpfsys.obj_get(str(tracker.pin_dir / "ct_timers"))
    try:
        reader = RingReader(fd)
    finally:
        os.close(fd)
    _read(reader)                 # what earlier tests left
    yield reader
    reader.close()


def _read(reader) -> list[tuple[bytes, int]]:
    """The (raw key, expires) records waiting in the ring."""
    out = []

    def handle(chunk, n, clean):
        assert clean, "the datapath never discards a record"
        for i in range(n):
            rec = abi.CtTimer.from_buffer_copy(chunk, i * STRIDE + 8)
            out.append((bytes(rec.key), rec.expires))

    while reader.consume_fixed(TIMER_SIZE, 1024, handle):
        pass
    return out


def _raw_key(tracker, match=None) -> bytes:
    return bytes(tracker.entry(match).key)


def test_a_new_flow_is_registered_once_with_its_expiry(tracker, ring):
    before = time.monotonic_ns()
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    (rec,) = _read(ring)
    raw = tracker.entry()
    assert rec == (bytes(raw.key), raw.entry.expires)
    # udp_timeout 30: the tick after the packet's instant + 30 s (ct_deadline)
    assert abi.ticks(before + 30 * NS) < rec[1] <= abi.ticks(time.monotonic_ns() + 30 * NS) + 1
    # More traffic only pushes the expiry later: no record.
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    tracker.send(P.frame(P.udp(P.B4, P.A4, 53, 40000)))
    assert _read(ring) == []


def test_ipv6_flows_are_registered_too(tracker, ring):
    tracker.send(P.frame(P.udp(P.A6, P.B6, 40000, 53)))
    (rec,) = _read(ring)
    assert rec[0] == _raw_key(tracker)


def test_a_shorter_tcp_timeout_registers_again(tracker, ring):
    d = P.TcpDialog(P.A4, P.B4, 40010, 80)
    tracker.send(d.frame(P.ORIG, "S"))            # SYN_SENT, 120 s: created
    tracker.send(d.frame(P.REPLY, "SA"))          # SYN_RECV, 60 s: earlier
    recs = _read(ring)
    assert len(recs) == 2 and recs[1][1] < recs[0][1]
    tracker.send(d.frame(P.ORIG, "A"))            # ESTABLISHED, 5 days: later
    assert _read(ring) == []
    tracker.send(d.frame(P.ORIG, "FA"))           # FIN_WAIT, 120 s: earlier
    (rec,) = _read(ring)
    raw = tracker.entry()
    assert rec == (bytes(raw.key), raw.entry.expires)
    assert abi.TCP_STATE_NAMES[raw.entry.state] == "FIN_WAIT"


def test_an_invalid_packet_registers_nothing(tracker, ring):
    tracker.send(P.frame(P.tcp("SF", P.A4, P.B4, 40020, 80)))   # SYN+FIN: INVALID
    assert tracker.flows() == []
    assert _read(ring) == []


def test_due_mode_deletes_expired_reports_live_and_gone(tracker, ring, datapath):
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40030, 53)))
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40031, 53)))
    d = P.TcpDialog(P.A4, P.B4, 40032, 80)        # an ASSURED flow: in ct_assured
    for direction, flags in ((P.ORIG, "S"), (P.REPLY, "SA"), (P.ORIG, "A")):
        tracker.send(d.frame(direction, flags))
    def is_port(p):
        return lambda f: f.orig.sport == p
    dead = _raw_key(tracker, is_port(40030))
    live = tracker.entry(is_port(40031))
    assured = tracker.entry(is_port(40032))
    assert assured.table == "ct_assured"
    tracker.expire(is_port(40030))
    tracker.expire(is_port(40032))
    gone = bytearray(dead)
    gone[0] ^= 0xFF                               # a key no table holds
    gone = bytes(gone)
    got = []
    datapath.open_events(got.append)
    datapath.poll_events(0)
    got.clear()
    configmap.set_event_listeners(tracker.pin_dir, 1)   # as the daemon does for a client
    swept_before = tracker.counters()[abi.const("CT_STAT_SWEPT")]

    res = sweep_due_keys(datapath.prog_fd("ctbpf_sweep"),
                         dead + bytes(live.key) + bytes(assured.key) + gone)

    assert (res.deleted, res.gone) == (2, 1)
    assert bytes(res.kept_keys) == bytes(live.key)
    assert res.kept_expiries == [live.entry.expires]
    assert sorted(f.orig.sport for f in tracker.flows()) == [40031]
    assert tracker.counters()[abi.const("CT_STAT_SWEPT")] - swept_before == 2
    datapath.poll_events(100)
    assert sorted(bytes(e.key) for e in got if e.type == DESTROY) == \
        sorted([dead, bytes(assured.key)])


def test_due_mode_handles_more_than_one_batch(tracker, ring, datapath):
    n = abi.const("CT_SWEEP_BATCH") * 2 + 5
    for i in range(n):
        tracker.send(P.frame(P.udp(P.A4, P.B4, 41000 + i, 53)))
    recs = _read(ring)
    assert len(recs) == n
    index = ExpiryIndex()
    for key, expires in recs:
        index.add(key, expires)
    assert index.pop_due(time.monotonic_ns()) == b""     # nothing due yet
    tracker.set(udp_timeout=1)
    for raw in tracker.entries():
        tracker._write(type(raw)(raw.table, raw.key, _expired(raw.entry)))
    keys = index.pop_due(abi.tick_ns(max(e for _, e in recs)) + 2 * NS)
    assert len(keys) == n * KEY_SIZE
    res = sweep_due_keys(datapath.prog_fd("ctbpf_sweep"), keys)
    assert (res.deleted, res.gone, len(res.kept_expiries)) == (n, 0, 0)
    assert tracker.flows() == [] and tracker.entries() == []


def _expired(entry):
    entry.expires = abi.ticks(time.monotonic_ns() - NS)
    return entry


def test_the_consumer_fences_around_real_records(tracker, ring, monkeypatch):
    """Acquire after producer_pos and after the headers, before handle reads
    the payloads; release after handle, before consumer_pos moves on; no
    fence at all when the ring is empty."""
    assert ringbuf.ORDERING == "libatomic fences"
    real, calls = ringbuf._fence, []

    def fence(order):
        calls.append((order, ring.pending()))
        real(order)

    monkeypatch.setattr(ringbuf, "_fence", fence)
    for i in range(3):
        tracker.send(P.frame(P.udp(P.A4, P.B4, 42000 + i, 53)))
    waiting = ring.pending()
    assert waiting == 3 * STRIDE

    def handle(chunk, n, clean):
        calls.append(("handle", n))

    assert ring.consume_fixed(TIMER_SIZE, 1024, handle) == 3
    assert calls == [(ringbuf._ACQUIRE, waiting), (ringbuf._ACQUIRE, waiting),
                     ("handle", 3), (ringbuf._RELEASE, waiting)]
    assert ring.pending() == 0
    calls.clear()
    assert ring.consume_fixed(TIMER_SIZE, 1024, handle) == 0
    assert calls == []
