"""Protocols without a tracker of their own (here 253, reserved for
experiments, and GRE 47): one entry per address pair and protocol,
generic_timeout (600 s), UNREPLIED until the other side speaks, never
ASSURED. (The kernel has a GRE tracker of its own: docs/datapath.md lists
that difference.)"""

from __future__ import annotations

import pytest

import packets as P
from ctbpf import tunables

T_GENERIC = tunables.defaults()["generic_timeout"]

PROTOS = [pytest.param(("proto253", lambda a, b: P.generic(a, b, 253), 253), id="proto253"),
          pytest.param(("gre", lambda a, b: P.gre(a, b), 47), id="gre")]
FAMILIES = [pytest.param((P.A4, P.B4, P.C4), id="ipv4"), pytest.param((P.A6, P.B6, P.C6), id="ipv6")]


@pytest.mark.parametrize("addrs", FAMILIES)
@pytest.mark.parametrize("proto", PROTOS)
def test_generic_flow(tracker, proto, addrs):
    _, build, number = proto
    a, b, c = addrs
    out = tracker.send(P.frame(build(a, b)))
    assert out.state == "new" and out.moved("insert") == 1
    f = tracker.flow()
    assert f.proto == number and f.state is None and f.unreplied and not f.assured
    assert f.orig.as_dict() == {"src": a, "dst": b} and f.reply.as_dict() == {"src": b, "dst": a}
    assert tracker.timeout_is(f, T_GENERIC)

    assert tracker.send(P.frame(build(a, b))).state == "new"
    assert tracker.flow().packets == (2, 0)

    out = tracker.send(P.frame(build(b, a)))
    assert out.state == "established"
    f = tracker.flow()
    assert not f.unreplied and not f.assured and f.table == "new"
    assert tracker.timeout_is(f, T_GENERIC)

    # long-lived and two-way: still never ASSURED
    tracker.age(created_ago=3600)
    for src, dst in ((a, b), (b, a), (a, b)):
        assert tracker.send(P.frame(build(src, dst))).state == "established"
    f = tracker.flow()
    assert not f.assured and f.table == "new" and f.packets == (4, 2)
    assert tracker.timeout_is(f, T_GENERIC)

    # another address pair is another flow
    assert tracker.send(P.frame(build(a, c))).state == "new"
    assert len(tracker.flows()) == 2


def test_one_entry_per_address_pair_and_protocol(tracker):
    tracker.send(P.frame(P.generic(P.A4, P.B4, 253, payload=b"one")))
    tracker.send(P.frame(P.generic(P.A4, P.B4, 253, payload=b"another payload")))
    tracker.send(P.frame(P.generic(P.A4, P.B4, 254)))
    tracker.send(P.frame(P.gre(P.A4, P.B4)))
    assert sorted(f.proto for f in tracker.flows()) == [47, 253, 254]


def test_generic_timeout_is_live(tracker):
    tracker.set(generic_timeout=61)
    tracker.send(P.frame(P.generic()))
    assert tracker.timeout_is(tracker.flow(), 61)


def test_icmp_inside_ipv6_and_icmpv6_inside_ipv4_are_generic(tracker):
    """Protocol 1 in IPv6 and 58 in IPv4 are not the family's ICMP."""
    tracker.send(P.frame(P.generic(P.A6, P.B6, P.IPPROTO_ICMP, payload=b"\x08\0\0\0\0\1\0\1")))
    tracker.send(P.frame(P.generic(P.A4, P.B4, P.IPPROTO_ICMPV6, payload=b"\x80\0\0\0\0\1\0\1")))
    flows = tracker.flows()
    assert sorted(f.proto for f in flows) == [1, 58]
    assert all(f.orig.type is None and tracker.timeout_is(f, T_GENERIC) for f in flows)
