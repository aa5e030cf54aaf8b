"""Enforce mode on the real datapath: a policy on the loopback interface
(ifindex 1, named in the XDP context BPF_PROG_TEST_RUN starts from), the
XDP verdict of each frame, and what a dropped packet leaves in the tables
(nothing new, nothing changed)."""

import struct

import pytest
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6

from ctbpf import abi
from ctbpf.datapath import bpfsys
from ctbpf.errors import UsageError
from ctbpf.policy import mapio, model

import packets as P

XDP_DROP, XDP_PASS = 1, 2
LO = 1
DROP = abi.const("CT_STAT_DROP")


def _pol(**keys):
    pol, _ = model.parse_interface_policy("in", "lo", keys, "test")
    return pol


@pytest.fixture
def lo_policy(tracker):
    """set(mode, **keys) puts a policy on lo; removed after the test."""
    def put(mode="enforce", **keys):
        mapio.apply(tracker.pin_dir, model.PolicySet(mode, [_pol(**keys)]), {"in.lo"})
        tracker.verdicts_before = _counts(tracker)
    yield put
    mapio.apply(tracker.pin_dir, model.PolicySet("observe", []))


def arrive(tracker, frm: bytes, ifindex: int = LO) -> int:
    """The XDP verdict on frm arriving on ifindex."""
    ctx = struct.pack("=6I", 0, len(frm), 0, ifindex, 0, 0)
    return bpfsys.prog_test_run(tracker.prog_fd, frm, ctx=ctx).retval


def _counts(tracker) -> dict:
    return {(s, v): n for name, s, v, n in mapio.verdict_counts(tracker.pin_dir)
            if name == "in.lo"}


def verdicts(tracker) -> dict:
    """Packets lo's policy judged since it was put, by (state, verdict)."""
    before = getattr(tracker, "verdicts_before", {})
    return {k: n - before.get(k, 0) for k, n in _counts(tracker).items()
            if n - before.get(k, 0)}


SPEC = dict(accept=["established", "related"], new=["tcp/22", "icmp"], new_requires_syn=True)


def test_the_specs_firewall_drops_before_tracking(tracker, lo_policy):
    lo_policy(**SPEC)
    web = P.TcpDialog(P.A4, P.B4, 40000, 80)
    assert arrive(tracker, web.frame(P.ORIG, "S")) == XDP_DROP       # NEW, not allowed
    assert tracker.entries() == []
    ssh = P.TcpDialog(P.A4, P.B4, 40001, 22)
    assert arrive(tracker, ssh.frame(P.ORIG, "S")) == XDP_PASS       # NEW to tcp/22
    assert arrive(tracker, ssh.frame(P.REPLY, "SA")) == XDP_PASS     # ESTABLISHED
    assert arrive(tracker, ssh.frame(P.ORIG, "A")) == XDP_PASS
    (flow,) = tracker.flows()
    assert flow.state == "ESTABLISHED" and flow.assured
    # RELATED: an ICMP error quoting the tracked flow passes.
    err = P.icmp_error(P.tcp("A", P.A4, P.B4, 40001, 22), P.R4, P.A4)
    assert arrive(tracker, P.frame(err)) == XDP_PASS
    # NEW without SYN (picked up with tcp_loose=1) is refused when asked.
    assert arrive(tracker, P.frame(P.tcp("A", P.A4, P.B4, 40002, 22))) == XDP_DROP
    # INVALID (SYN+FIN) is not accepted.
    assert arrive(tracker, P.frame(P.tcp("SF", P.A4, P.B4, 40003, 22))) == XDP_DROP
    assert len(tracker.entries()) == 1
    got = verdicts(tracker)
    assert got[("new", "drop")] == 2 and got[("invalid", "drop")] == 1
    assert got[("new", "accept")] == 1 and got[("established", "accept")] == 2
    assert got[("related", "accept")] == 1
    assert tracker.counters()[DROP] >= 3


def test_observe_mode_counts_would_drop_and_passes_everything(tracker, lo_policy):
    lo_policy("observe", **SPEC)
    web = P.TcpDialog(P.A4, P.B4, 40010, 80)
    assert arrive(tracker, web.frame(P.ORIG, "S")) == XDP_PASS
    assert len(tracker.entries()) == 1
    assert verdicts(tracker) == {("new", "would_drop"): 1}


def test_a_refused_packet_changes_no_entry(tracker, lo_policy):
    d = P.TcpDialog(P.A4, P.B4, 40020, 80)
    assert arrive(tracker, d.frame(P.ORIG, "S")) == XDP_PASS      # no policy yet
    before = tracker.entry()
    lo_policy(accept=["established"])                              # no NEW any more
    assert arrive(tracker, d.frame(P.ORIG, "S", seq=d.isn[P.ORIG])) == XDP_DROP  # SYN retransmit: NEW
    after = tracker.entry()
    assert bytes(after.entry) == bytes(before.entry)               # not a byte changed
    assert arrive(tracker, d.frame(P.REPLY, "SA")) == XDP_PASS     # the answer is ESTABLISHED
    assert tracker.entry().flow().state == "SYN_RECV"


def test_ports_prefixes_and_families_of_new_rules(tracker, lo_policy):
    lo_policy(accept=["established"], new=["udp/1000-1002 from 10.1.0.0/16", "tcp/443 to 2001:db8:2::/48"])
    assert arrive(tracker, P.frame(P.udp(P.A4, P.B4, 5000, 1001))) == XDP_PASS     # 10.1.1.1
    assert arrive(tracker, P.frame(P.udp(P.A4, P.B4, 5000, 1003))) == XDP_DROP     # port
    assert arrive(tracker, P.frame(P.udp(P.C4, P.B4, 5000, 1001))) == XDP_DROP     # 10.3.3.3
    assert arrive(tracker, P.frame(P.tcp("S", P.A6, P.B6, 5000, 443))) == XDP_PASS
    assert arrive(tracker, P.frame(P.tcp("S", P.A6, P.C6, 5000, 443))) == XDP_DROP
    assert arrive(tracker, P.frame(P.tcp("S", P.A4, P.B4, 5000, 443))) == XDP_DROP  # IPv4
    assert len(tracker.entries()) == 2


def test_neighbour_discovery_passes_whatever_the_policy(tracker, lo_policy):
    lo_policy(accept=["established"])
    ns = P.frame(IPv6(src=P.A6, dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt=P.B6))
    assert arrive(tracker, ns) == XDP_PASS
    assert arrive(tracker, P.frame(P.udp(P.A4, P.B4, 5000, 53))) == XDP_DROP


def test_a_policy_judges_only_its_own_direction(tracker):
    out_only, _ = model.parse_interface_policy("out", "lo", {"accept": ["established"]}, "t")
    mapio.apply(tracker.pin_dir, model.PolicySet("enforce", [out_only]))
    try:
        # Arriving on lo (XDP, "in"): no policy there, so it passes and is tracked.
        assert arrive(tracker, P.frame(P.udp(P.A4, P.B4, 5000, 53))) == XDP_PASS
        assert len(tracker.entries()) == 1
    finally:
        mapio.apply(tracker.pin_dir, model.PolicySet("observe", []))


def test_default_accept_makes_the_policy_count_only(tracker, lo_policy):
    lo_policy(accept=["established"], default="accept")
    assert arrive(tracker, P.frame(P.udp(P.A4, P.B4, 5000, 53))) == XDP_PASS
    assert verdicts(tracker) == {("new", "accept"): 1}


def test_cutting_established_off_needs_force(tracker):
    cut = model.PolicySet("enforce", [_pol(accept=["new"])])
    with pytest.raises(UsageError, match="force"):
        mapio.apply(tracker.pin_dir, cut)
    assert mapio.read(tracker.pin_dir)[0].policies == []          # nothing written
    mapio.apply(tracker.pin_dir, cut, {"in.lo"})
    try:
        assert [p.accept for p in mapio.read(tracker.pin_dir)[0].policies] == [{"new"}]
    finally:
        mapio.apply(tracker.pin_dir, model.PolicySet("observe", []))


def test_the_map_round_trips_the_policy(tracker, lo_policy):
    lo_policy(**SPEC)
    (got,), = [mapio.read(tracker.pin_dir)[0].policies]
    assert got == _pol(**SPEC)


def _fragments(l3, size):
    from scapy.layers.inet import fragment
    from scapy.layers.inet6 import IPv6ExtHdrFragment, fragment6

    if l3.version == 4:
        return [P.frame(f) for f in fragment(l3, fragsize=size)]
    pkt = IPv6(src=l3.src, dst=l3.dst) / IPv6ExtHdrFragment(id=0x1234) / l3.payload
    return [P.frame(f) for f in fragment6(pkt, size + 48)]


@pytest.mark.parametrize("src, dst", [(P.A4, P.B4), (P.A6, P.B6)], ids=["ipv4", "ipv6"])
def test_later_fragments_follow_their_first_fragments_verdict(tracker, lo_policy, src, dst):
    from scapy.packet import Raw
    lo_policy(accept=["established", "related"], new=["udp/53"])
    allowed = _fragments(P.udp(src, dst, 5000, 53) / Raw(bytes(1500)), 512)
    refused = _fragments(P.udp(src, dst, 5001, 54) / Raw(bytes(1500)), 512)
    assert len(allowed) >= 3 and len(refused) >= 3
    assert [arrive(tracker, f) for f in allowed] == [XDP_PASS] * len(allowed)
    assert [arrive(tracker, f) for f in refused] == [XDP_DROP] * len(refused)
    # A later fragment whose first one never came is judged as untracked: dropped.
    stray = _fragments(P.udp(src, dst, 5002, 53) / Raw(bytes(1500)), 512)[1:]
    if src == P.A4:
        stray = [_with_ip_id(f, 777) for f in stray]
    else:
        stray = [_with_ip6_frag_id(f, 777) for f in stray]
    assert [arrive(tracker, f) for f in stray] == [XDP_DROP] * len(stray)
    assert len(tracker.entries()) == 1          # the allowed datagram's flow
    got = verdicts(tracker)
    assert got[("untracked", "accept")] == len(allowed) - 1
    assert got[("untracked", "drop")] == len(refused) - 1 + len(stray)


def _with_ip_id(frm: bytes, ip_id: int) -> bytes:
    b = bytearray(frm)
    b[14 + 4:14 + 6] = ip_id.to_bytes(2, "big")
    return bytes(b)


def _with_ip6_frag_id(frm: bytes, frag_id: int) -> bytes:
    b = bytearray(frm)
    b[14 + 40 + 4:14 + 40 + 8] = frag_id.to_bytes(4, "big")
    return bytes(b)
