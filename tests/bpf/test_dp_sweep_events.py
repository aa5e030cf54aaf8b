"""The sweep program, the demotion of closing ASSURED flows and the event
ring buffer, on the real datapath."""

import pytest

from ctbpf import abi
from ctbpf.datapath import configmap, table

import packets as P

NEW, UPDATE, DESTROY = (abi.const(f"CT_EVENT_{n}") for n in ("NEW", "UPDATE", "DESTROY"))


@pytest.fixture
def events(tracker):
    got = []
    tracker.dp.open_events(got.append)
    tracker.dp.poll_events(0)
    got.clear()
    configmap.set_event_listeners(tracker.pin_dir, 1)   # as the daemon does for a client

    def read():
        tracker.dp.poll_events(0)
        out = list(got)
        got.clear()
        return out
    return read


def _handshake(tracker, sport=40000):
    d = P.TcpDialog(P.A4, P.B4, sport, 80)
    for direction, flags in ((P.ORIG, "S"), (P.REPLY, "SA"), (P.ORIG, "A")):
        tracker.send(d.frame(direction, flags))
    return d


def test_events_follow_a_connection(tracker, events):
    d = _handshake(tracker)
    evs = events()
    assert [e.type for e in evs] == [NEW, UPDATE, UPDATE]
    states = [abi.TCP_STATE_NAMES[e.entry.state] for e in evs]
    assert states == ["SYN_SENT", "SYN_RECV", "ESTABLISHED"]
    assert evs[-1].entry.flags & abi.const("CT_F_ASSURED")
    tracker.send(d.frame(P.ORIG, "A"))          # no change: no event
    assert events() == []
    tracker.send(d.frame(P.ORIG, "RA"))         # established RST: CLOSE, an UPDATE
    (ev,) = events()
    assert ev.type == UPDATE and abi.TCP_STATE_NAMES[ev.entry.state] == "CLOSE"


def test_refused_connection_reports_destroy_with_reason(tracker, events):
    d = P.TcpDialog(P.A4, P.B4, 40001, 81)
    tracker.send(d.frame(P.ORIG, "S"))
    tracker.send(d.frame(P.REPLY, "RA"))
    evs = events()
    assert [e.type for e in evs] == [NEW, DESTROY]
    assert evs[1].reason == abi.const("CT_DESTROY_RST")


def test_no_event_is_emitted_while_nobody_listens(tracker, events):
    configmap.set_event_listeners(tracker.pin_dir, 0)
    _handshake(tracker, 40005)
    assert events() == []
    assert tracker.counters()[abi.const("CT_STAT_EVENT_LOST")] == 0
    configmap.set_event_listeners(tracker.pin_dir, 2)
    _handshake(tracker, 40006)
    assert [e.type for e in events()] == [NEW, UPDATE, UPDATE]


def test_events_off_emits_nothing(tracker, events):
    tracker.set(events=0)
    _handshake(tracker)
    assert events() == []


def test_closing_assured_flow_moves_back_to_the_evictable_table(tracker):
    d = _handshake(tracker)
    assert tracker.flow().table == "assured"
    out = tracker.send(d.frame(P.ORIG, "FA"))
    f = tracker.flow()
    assert (f.state, f.assured, f.table) == ("FIN_WAIT", True, "new")
    assert out.moved("demote") == 1


def _raw_keys(tracker, name):
    keys, _, count = table.read_raw(tracker.pin_dir, name)
    return keys, count


def test_sweep_deletes_only_entries_still_expired(tracker, events):
    _handshake(tracker, 40010)                               # assured
    d2 = P.TcpDialog(P.A4, P.B4, 40011, 80)
    tracker.send(d2.frame(P.ORIG, "S"))                      # new
    d3 = P.TcpDialog(P.A4, P.B4, 40012, 80)
    tracker.send(d3.frame(P.ORIG, "S"))                      # new, stays alive
    events()
    for sport in (40010, 40011, 40012):
        tracker.expire(match=lambda f, sport=sport: f.orig.sport == sport)
    new_keys, n_new = _raw_keys(tracker, "ct_new")            # the sweeper's read
    assured_keys, n_assured = _raw_keys(tracker, "ct_assured")
    # traffic after the read: 40012 is refreshed and must survive the sweep
    tracker.age(expires_in=100, match=lambda f: f.orig.sport == 40012)
    assert (n_new, n_assured) == (2, 1)
    deleted = (tracker.dp.sweep(abi.const("CT_TABLE_NEW"), new_keys)
               + tracker.dp.sweep(abi.const("CT_TABLE_ASSURED"), assured_keys))
    assert deleted == 2
    left = [e.flow() for e in tracker.entries()]
    assert [f.orig.sport for f in left] == [40012]
    evs = events()
    assert sorted(e.type for e in evs) == [DESTROY, DESTROY]
    assert all(e.reason == abi.const("CT_DESTROY_EXPIRED") for e in evs)


def test_sweep_handles_more_keys_than_one_batch(tracker):
    batch = abi.const("CT_SWEEP_BATCH")
    n = batch * 2 + 5
    for i in range(n):
        tracker.send(P.frame(P.udp(P.A4, P.B4, 20000 + i, 53)))
    for i in range(n):
        tracker.expire(match=lambda f, port=20000 + i: f.orig.sport == port)
    keys, count = _raw_keys(tracker, "ct_new")
    assert count == n
    assert tracker.dp.sweep(abi.const("CT_TABLE_NEW"), keys) == n
    assert _raw_keys(tracker, "ct_new")[1] == 0


def test_user_delete_takes_keys_from_either_table_and_reports_them(tracker, events):
    from ctbpf.datapath.sweepprog import user_delete_keys

    _handshake(tracker, 40020)                               # assured
    d = P.TcpDialog(P.A4, P.B4, 40021, 80)
    tracker.send(d.frame(P.ORIG, "S"))                       # new
    events()
    keys = b"".join(bytes(e.key) for e in tracker.entries())
    missing = bytes(keys[:40])                               # deleted twice: second time absent
    before = tracker.counters()[abi.const("CT_STAT_USER_DELETE")]
    assert user_delete_keys(tracker.pin_dir, keys + missing) == [True, True, False]
    assert tracker.entries() == []
    assert tracker.counters()[abi.const("CT_STAT_USER_DELETE")] - before == 2
    evs = events()
    assert [e.type for e in evs] == [DESTROY, DESTROY]
    assert all(e.reason == abi.const("CT_DESTROY_USER") for e in evs)
