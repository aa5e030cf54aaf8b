"""UDP (nf_conntrack_udp_packet): udp_timeout until the flow is answered
and still alive 2 s after it began, then udp_timeout_stream and ASSURED,
and the entry moves to the assured table. Clocks are edited, never slept."""

from __future__ import annotations

import pytest

import packets as P
from ctbpf import abi, tunables

D = tunables.defaults()
T_UDP, T_STREAM = D["udp_timeout"], D["udp_timeout_stream"]

FAMILIES = [pytest.param((P.A4, P.B4), id="ipv4"), pytest.param((P.A6, P.B6), id="ipv6")]


def query(a, b, **kw):
    return P.frame(P.udp(a, b, 40000, 53, **kw))


def answer(a, b, **kw):
    return P.frame(P.udp(b, a, 53, 40000, **kw))


@pytest.mark.parametrize("addrs", FAMILIES)
def test_udp_stream_lifecycle(tracker, addrs):
    a, b = addrs
    out = tracker.send(query(a, b))
    assert out.state == "new" and out.moved("insert") == 1
    f = tracker.flow()
    assert f.proto_name == "udp" and f.unreplied and not f.assured and f.table == "new"
    assert (f.orig.src, f.orig.sport, f.orig.dst, f.orig.dport) == (a, 40000, b, 53)
    assert tracker.timeout_is(f, T_UDP), f

    out = tracker.send(answer(a, b))
    assert out.state == "established"
    f = tracker.flow()
    assert not f.unreplied and not f.assured and f.table == "new"
    assert tracker.timeout_is(f, T_UDP), f

    # within 2 s of creation: answered, but no stream yet
    out = tracker.send(query(a, b))
    assert out.state == "established"
    f = tracker.flow()
    assert not f.assured and tracker.timeout_is(f, T_UDP)

    tracker.age(created_ago=3)
    out = tracker.send(query(a, b))
    assert out.state == "established" and out.moved("promote") == 1
    f = tracker.flow()
    assert f.assured and f.flags == ["ASSURED"] and f.table == "assured"
    assert tracker.timeout_is(f, T_STREAM), f
    assert f.packets == (3, 1)
    assert len(tracker.entries()) == 1

    out = tracker.send(answer(a, b))
    assert out.state == "established" and out.moved("promote") == 0
    assert tracker.timeout_is(tracker.flow(), T_STREAM)


def test_first_reply_after_two_seconds_is_not_yet_a_stream(tracker):
    """The kernel sets SEEN_REPLY after the tracker ran, so the first reply
    still gets udp_timeout; the packet after it makes the stream."""
    tracker.send(query(P.A4, P.B4))
    tracker.age(created_ago=5)
    out = tracker.send(answer(P.A4, P.B4))
    assert out.state == "established"
    f = tracker.flow()
    assert not f.assured and tracker.timeout_is(f, T_UDP)
    tracker.send(answer(P.A4, P.B4))
    f = tracker.flow()
    assert f.assured and tracker.timeout_is(f, T_STREAM)


def test_unanswered_flow_never_becomes_a_stream(tracker):
    tracker.send(query(P.A4, P.B4))
    tracker.age(created_ago=10)
    for _ in range(3):
        out = tracker.send(query(P.A4, P.B4))
        assert out.state == "new"
    f = tracker.flow()
    assert f.unreplied and not f.assured and tracker.timeout_is(f, T_UDP)


def test_udp_timeouts_are_live(tracker):
    tracker.set(udp_timeout=50, udp_timeout_stream=500)
    tracker.send(query(P.A4, P.B4))
    assert tracker.timeout_is(tracker.flow(), 50)
    tracker.send(answer(P.A4, P.B4))
    tracker.age(created_ago=3)
    tracker.send(query(P.A4, P.B4))
    assert tracker.timeout_is(tracker.flow(), 500)


def test_ports_make_separate_flows_and_both_directions_share_one(tracker):
    tracker.send(query(P.A4, P.B4))
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40001, 53)))
    tracker.send(P.frame(P.udp(P.A4, P.C4, 40000, 53)))
    assert len(tracker.flows()) == 3
    tracker.send(answer(P.A4, P.B4))
    assert len(tracker.flows()) == 3
    replied = [f for f in tracker.flows() if not f.unreplied]
    assert len(replied) == 1 and replied[0].orig.sport == 40000 and replied[0].orig.dst == P.B4


def test_udp_without_payload(tracker):
    out = tracker.send(P.frame(P.udp(payload=b"")))
    assert out.state == "new" and tracker.flow().bytes == (28, 0)


def test_acct_decides_at_creation_as_the_kernels_does(tracker):
    """nf_conntrack_acct adds the counters extension to the flows made while
    it is on, and those count until they end whatever it is switched to;
    flows made while it is off never count. So switching it live loses and
    corrupts no counter."""
    tracker.set(acct=0)
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    tracker.set(acct=1)
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40001, 53)))
    tracker.set(acct=0)
    for _ in range(3):
        for port in (40000, 40001):
            tracker.send(P.frame(P.udp(P.B4, P.A4, 53, port)))
            tracker.send(P.frame(P.udp(P.A4, P.B4, port, 53)))
    flows = {f.orig.sport: f for f in tracker.flows()}
    assert (flows[40000].packets, flows[40000].bytes) == (None, None)
    assert not flows[40000].unreplied           # tracked all the same
    size = len(bytes(P.udp(P.A4, P.B4, 40001, 53)))   # L3 bytes of one datagram
    assert (flows[40001].packets, flows[40001].bytes) == ((4, 3), (4 * size, 3 * size))
    assert tracker.counters()[abi.const("CT_STAT_PKT_ESTABLISHED")] >= 12
