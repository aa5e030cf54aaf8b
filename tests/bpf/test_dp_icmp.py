"""ICMP and ICMPv6 queries: a request opens a flow keyed by id (and query
type), its reply answers it; replies never open anything; nothing is ever
ASSURED. Neighbour discovery and MLD are untracked."""

from __future__ import annotations

import pytest

import packets as P
from ctbpf import tunables

D = tunables.defaults()

ECHO = [pytest.param((P.A4, P.B4, 8, 0, "icmp", "icmp_timeout"), id="icmp-echo"),
        pytest.param((P.A6, P.B6, 128, 129, "icmpv6", "icmpv6_timeout"), id="icmpv6-echo")]


@pytest.mark.parametrize("case", ECHO)
def test_echo_request_and_reply(tracker, case):
    a, b, req, rep, name, timeout = case
    out = tracker.send(P.frame(P.icmp_echo(a, b, id=0x1234)))
    assert out.state == "new" and out.moved("insert") == 1
    f = tracker.flow()
    assert f.proto_name == name and f.state is None
    assert f.orig.as_dict() == {"src": a, "dst": b, "type": req, "code": 0, "id": 0x1234}
    assert f.reply.as_dict() == {"src": b, "dst": a, "type": rep, "code": 0, "id": 0x1234}
    assert f.unreplied and not f.assured and f.table == "new"
    assert tracker.timeout_is(f, D[timeout])

    out = tracker.send(P.frame(P.icmp_echo(b, a, id=0x1234, reply=True)))
    assert out.state == "established"
    f = tracker.flow()
    assert not f.unreplied and not f.assured and f.packets == (1, 1)
    assert tracker.timeout_is(f, D[timeout])

    # more pings with the same id: same flow, never assured
    tracker.age(created_ago=10)
    out = tracker.send(P.frame(P.icmp_echo(a, b, id=0x1234, seq=2)))
    assert out.state == "established"
    f = tracker.flow()
    assert not f.assured and f.table == "new" and f.packets == (2, 1)


@pytest.mark.parametrize("case", ECHO)
def test_echo_reply_without_request_is_invalid(tracker, case):
    a, b, *_ = case
    out = tracker.send(P.frame(P.icmp_echo(b, a, id=0x1234, reply=True)))
    assert (out.state, out.reason) == ("invalid", "icmp_type")
    assert tracker.flows() == []


@pytest.mark.parametrize("case", ECHO)
def test_requests_from_each_side_are_separate_flows(tracker, case):
    a, b, *_ = case
    tracker.send(P.frame(P.icmp_echo(a, b, id=7)))
    out = tracker.send(P.frame(P.icmp_echo(b, a, id=7)))
    assert out.state == "new" and out.moved("insert") == 1
    flows = tracker.flows()
    assert sorted(f.orig.src for f in flows) == sorted([a, b])
    assert all(f.unreplied for f in flows)


@pytest.mark.parametrize("case", ECHO)
def test_different_ids_are_separate_flows(tracker, case):
    a, b, *_ = case
    tracker.send(P.frame(P.icmp_echo(a, b, id=1)))
    tracker.send(P.frame(P.icmp_echo(a, b, id=2)))
    tracker.send(P.frame(P.icmp_echo(b, a, id=2, reply=True)))
    flows = {f.orig.id: f for f in tracker.flows()}
    assert set(flows) == {1, 2}
    assert flows[1].unreplied and not flows[2].unreplied


def test_echo_id_zero_from_both_sides_are_separate_flows(tracker):
    tracker.send(P.frame(P.icmp_echo(P.A4, P.B4, id=0)))
    out = tracker.send(P.frame(P.icmp_echo(P.B4, P.A4, id=0)))
    assert out.state == "new"
    assert len(tracker.flows()) == 2


def test_timestamp_request_and_reply(tracker):
    out = tracker.send(P.frame(P.icmp_timestamp(P.A4, P.B4, id=99)))
    assert out.state == "new"
    f = tracker.flow()
    assert (f.orig.type, f.orig.code, f.orig.id, f.reply.type) == (13, 0, 99, 14)
    assert tracker.timeout_is(f, D["icmp_timeout"])
    out = tracker.send(P.frame(P.icmp_timestamp(P.B4, P.A4, id=99, reply=True)))
    assert out.state == "established" and not tracker.flow().unreplied


def test_timestamp_reply_without_request_is_invalid(tracker):
    out = tracker.send(P.frame(P.icmp_timestamp(P.B4, P.A4, id=99, reply=True)))
    assert (out.state, out.reason) == ("invalid", "icmp_type")
    assert tracker.flows() == []


def test_echo_and_timestamp_with_one_id_stay_apart(tracker):
    tracker.send(P.frame(P.icmp_echo(P.A4, P.B4, id=5)))
    tracker.send(P.frame(P.icmp_timestamp(P.A4, P.B4, id=5)))
    # an echo reply must answer the echo, not the timestamp query
    tracker.send(P.frame(P.icmp_echo(P.B4, P.A4, id=5, reply=True)))
    flows = {f.orig.type: f for f in tracker.flows()}
    assert set(flows) == {8, 13}
    assert not flows[8].unreplied and flows[13].unreplied


@pytest.mark.parametrize("type_", [15, 17], ids=["information", "address-mask"])
def test_other_ipv4_queries_open_flows(tracker, type_):
    out = tracker.send(P.frame(P.icmp_raw(P.A4, P.B4, type_, rest=b"\x00\x09\x00\x01")))
    assert out.state == "new"
    assert tracker.flow().orig.type == type_ and tracker.flow().reply.type == type_ + 1
    out = tracker.send(P.frame(P.icmp_raw(P.B4, P.A4, type_ + 1, rest=b"\x00\x09\x00\x01")))
    assert out.state == "established"


@pytest.mark.parametrize("src,type_", [(P.A4, 9), (P.A4, 10), (P.A4, 42), (P.A4, 255),
                                       (P.A6, 200), (P.A6, 137), (P.A6, 255)],
                         ids=["v4-router-adv", "v4-router-sol", "v4-type-42", "v4-type-255",
                              "v6-type-200", "v6-redirect", "v6-type-255"])
def test_types_that_cannot_start_a_flow_are_invalid(tracker, src, type_):
    dst = P.B6 if P.is_v6(src) else P.B4
    out = tracker.send(P.frame(P.icmp_raw(src, dst, type_)))
    assert (out.state, out.reason) == ("invalid", "icmp_type")
    assert tracker.flows() == []


@pytest.mark.parametrize("type_", [130, 131, 132, 133, 134, 135, 136, 143],
                         ids=lambda t: f"icmpv6-{t}")
def test_neighbour_discovery_and_mld_are_untracked(tracker, type_):
    out = tracker.send(P.frame(P.icmp_raw("fe80::1", "ff02::1", type_)))
    assert out.state == "untracked" and out.moved("fragment") == 0
    assert tracker.flows() == []


def test_icmp_timeouts_are_live(tracker):
    tracker.set(icmp_timeout=11, icmpv6_timeout=22)
    tracker.send(P.frame(P.icmp_echo(P.A4, P.B4)))
    tracker.send(P.frame(P.icmp_echo(P.A6, P.B6)))
    timeouts = {f.proto_name: f for f in tracker.flows()}
    assert tracker.timeout_is(timeouts["icmp"], 11)
    assert tracker.timeout_is(timeouts["icmpv6"], 22)


def test_icmpv6_node_information_query(tracker):
    out = tracker.send(P.frame(P.icmp_raw(P.A6, P.B6, 139, rest=b"\x00\x03\x00\x00")))
    assert out.state == "new"
    f = tracker.flow()
    assert (f.orig.type, f.reply.type) == (139, 140)
    out = tracker.send(P.frame(P.icmp_raw(P.B6, P.A6, 140, rest=b"\x00\x03\x00\x00")))
    assert out.state == "established"
