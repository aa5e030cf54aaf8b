"""802.1Q and QinQ frames are tracked exactly as untagged ones (the tags are
not part of the flow); a third tag is INVALID (vlan_depth)."""

from __future__ import annotations

import pytest

import packets as P

ORIG, REPLY = P.ORIG, P.REPLY

TAGS = {"untagged": (), "802.1q": P.DOT1Q, "qinq": P.QINQ,
        "double-802.1q": ((P.ETH_P_8021Q, 10), (P.ETH_P_8021Q, 20)),
        "single-802.1ad": ((P.ETH_P_8021AD, 4094),)}
TAG_PARAMS = [pytest.param(v, id=k) for k, v in TAGS.items()]
FAMILIES = [pytest.param((P.A4, P.B4), id="ipv4"), pytest.param((P.A6, P.B6), id="ipv6")]


def _lifecycle(tracker, dialog):
    seen = []
    for direction, flags in ((ORIG, "S"), (REPLY, "SA"), (ORIG, "A"), (ORIG, "FA")):
        out = tracker.send(dialog.frame(direction, flags))
        f = tracker.flow()
        seen.append((out.state, f.state, f.unreplied, f.assured, f.table, f.packets, f.bytes,
                     f.orig, f.timeout))
    return seen


@pytest.mark.parametrize("addrs", FAMILIES)
@pytest.mark.parametrize("vlans", TAG_PARAMS)
def test_tagged_tcp_is_tracked_like_untagged(tracker, addrs, vlans):
    tagged = _lifecycle(tracker, P.TcpDialog(*addrs, vlans=vlans))
    tracker.reset()
    untagged = _lifecycle(tracker, P.TcpDialog(*addrs))
    # The listed timeout is whole seconds of an expiry kept in ticks: two
    # runs a moment apart may list it a second apart.
    assert [t[:-1] for t in tagged] == [u[:-1] for u in untagged]
    assert all(abs(t[-1] - u[-1]) <= 1 for t, u in zip(tagged, untagged)), (tagged, untagged)


@pytest.mark.parametrize("vlans", TAG_PARAMS)
def test_tagged_udp_and_icmp(tracker, vlans):
    assert tracker.send(P.frame(P.udp(P.A6, P.B6), vlans)).state == "new"
    assert tracker.send(P.frame(P.udp(P.B6, P.A6, 53, 40000), vlans)).state == "established"
    assert tracker.send(P.frame(P.icmp_echo(P.A4, P.B4, id=9), vlans)).state == "new"
    assert tracker.send(P.frame(P.icmp_echo(P.B4, P.A4, id=9, reply=True), vlans)).state \
        == "established"
    flow = P.udp(P.A4, P.B4, 1, 2)
    assert tracker.send(P.frame(flow, vlans)).state == "new"
    assert tracker.send(P.frame(P.icmp_error(flow, P.R4, P.A4), vlans)).state == "related"
    assert len(tracker.flows()) == 3


def test_tags_are_not_part_of_the_flow(tracker):
    d = P.TcpDialog()
    tracker.send(P.frame(d.l3(ORIG, "S"), P.QINQ))
    tracker.send(P.frame(d.l3(REPLY, "SA"), P.DOT1Q))
    tracker.send(P.frame(d.l3(ORIG, "A")))
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured and f.packets == (2, 1)


@pytest.mark.parametrize("tags", [P.TRIPLE, ((P.ETH_P_8021Q, 1),) * 3, ((P.ETH_P_8021AD, 1),) * 4],
                         ids=["qinq+802.1q", "3x802.1q", "4x802.1ad"])
def test_too_many_tags_are_invalid(tracker, tags):
    out = tracker.send(P.frame(P.tcp("S"), tags))
    assert (out.state, out.reason) == ("invalid", "vlan_depth")
    assert tracker.flows() == []
