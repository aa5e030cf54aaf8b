"""What sits between the IP header and L4: IPv6 extension headers, IPv4
options, and fragments. Headers are skipped and the flow is tracked as
without them; a non-first fragment carries no L4 header and is UNTRACKED;
a first fragment is tracked by the L4 header it carries."""

from __future__ import annotations

import struct

import pytest

import packets as P
from scapy.layers.inet import TCP, UDP

ORIG, REPLY = P.ORIG, P.REPLY

CHAINS = {
    "hop-by-hop": lambda: [P.hop_by_hop()],
    "routing": lambda: [P.routing()],
    "dest-opts": lambda: [P.dest_opts()],
    "hbh+routing+dest": lambda: [P.hop_by_hop(), P.routing(), P.dest_opts()],
    "hbh+dest+routing+dest": lambda: [P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts()],
    "five-headers": lambda: [P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts(),
                             P.dest_opts()],
    "padded-dest-opts": lambda: [P.dest_opts(pad=20)],
}
CHAIN_PARAMS = [pytest.param(make, id=name) for name, make in CHAINS.items()] + [
    pytest.param(lambda: [P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts(),
                          P.dest_opts(), P.dest_opts()], id="six-headers")]


def _ah(next_header: int, payload: bytes) -> bytes:
    """An authentication header (RFC 4302) of 24 bytes: payload len 4."""
    return struct.pack("!BBHII", next_header, 4, 0, 0x1000, 1) + b"\x11" * 12 + payload


@pytest.mark.parametrize("make", CHAIN_PARAMS)
def test_tcp_behind_extension_headers(tracker, make):
    d = P.TcpDialog(P.A6, P.B6, ext=make())
    plain = P.TcpDialog(P.A6, P.B6)
    assert tracker.send(d.frame(ORIG, "S")).state == "new"
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.orig.src == P.A6 and f.orig.dport == 80
    assert tracker.send(d.frame(REPLY, "SA")).state == "established"
    assert tracker.flow().state == "SYN_RECV"
    # headers are not part of the flow: a packet without them is the same flow
    plain.nxt = dict(d.nxt)
    assert tracker.send(plain.frame(ORIG, "A")).state == "established"
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured and f.packets == (2, 1)


@pytest.mark.parametrize("make", CHAIN_PARAMS)
def test_udp_behind_extension_headers(tracker, make):
    out = tracker.send(P.frame(P.udp(P.A6, P.B6, 40000, 53, ext=make())))
    assert out.state == "new"
    out = tracker.send(P.frame(P.udp(P.B6, P.A6, 53, 40000)))
    assert out.state == "established"
    f = tracker.flow()
    assert f.proto_name == "udp" and not f.unreplied


def test_icmpv6_echo_behind_hop_by_hop(tracker):
    out = tracker.send(P.frame(P.icmp_echo(P.A6, P.B6, id=3, ext=[P.hop_by_hop()])))
    assert out.state == "new" and tracker.flow().orig.type == 128


def test_tcp_behind_an_authentication_header(tracker):
    seg = bytes(TCP(sport=40000, dport=80, flags="S", seq=1))
    pkt = P.IPv6(src=P.A6, dst=P.B6, nh=51) / P.Raw(_ah(P.IPPROTO_TCP, seg))
    assert tracker.send(P.frame(pkt)).state == "new"
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.orig.dport == 80


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_non_first_fragment_is_untracked(tracker, v6):
    a, b, *_ = P.other_addrs(v6)
    l4 = TCP(sport=40000, dport=80, flags="S") / P.Raw(b"z" * 64)
    frag = P.fragment6(l4, a, b, first=False) if v6 else P.fragment4(l4, a, b, first=False)
    out = tracker.send(P.frame(frag))
    assert out.state == "untracked" and out.moved("fragment") == 1
    assert out.moved("insert") == 0 and tracker.flows() == []


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_non_first_fragment_of_a_tracked_flow_changes_nothing(tracker, v6):
    a, b, *_ = P.other_addrs(v6)
    d = P.TcpDialog(a, b)
    tracker.send(d.frame(ORIG, "S"))
    tracker.age(expires_in=40)
    l4 = TCP(sport=40000, dport=80, flags="A") / P.Raw(b"z" * 64)
    frag = P.fragment6(l4, a, b, first=False) if v6 else P.fragment4(l4, a, b, first=False)
    assert tracker.send(P.frame(frag)).state == "untracked"
    f = tracker.flow()
    assert f.packets == (1, 0) and tracker.timeout_is(f, 40)


def test_ipv6_fragment_behind_hop_by_hop_is_untracked(tracker):
    l4 = UDP(sport=40000, dport=53) / P.Raw(b"q" * 64)
    frag = P.fragment6(l4, first=False, before=[P.hop_by_hop()])
    assert tracker.send(P.frame(frag)).state == "untracked"
    assert tracker.flows() == []


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_first_fragment_with_the_tcp_header_is_tracked(tracker, v6):
    a, b, *_ = P.other_addrs(v6)
    l4 = TCP(sport=40000, dport=80, flags="S", seq=9) / P.Raw(b"z" * 64)
    frag = P.fragment6(l4, a, b, keep=32) if v6 else P.fragment4(l4, a, b, keep=32)
    out = tracker.send(P.frame(frag))
    assert out.state == "new" and out.moved("fragment") == 0
    f = tracker.flow()
    assert f.state == "SYN_SENT" and (f.orig.src, f.orig.dport) == (a, 80)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_first_fragment_with_the_udp_header_is_tracked(tracker, v6):
    a, b, *_ = P.other_addrs(v6)
    l4 = UDP(sport=40000, dport=53) / P.Raw(b"q" * 1400)
    frag = P.fragment6(l4, a, b, keep=512) if v6 else P.fragment4(l4, a, b, keep=512)
    out = tracker.send(P.frame(frag))
    assert out.state == "new", out
    f = tracker.flow()
    assert f.proto_name == "udp" and f.orig.dport == 53


def test_ipv4_options_are_skipped(tracker):
    d = P.TcpDialog(options=P.ipv4_options())
    frm = d.frame(ORIG, "S")
    assert P.header(frm, "ipv4").length > 20
    assert tracker.send(frm).state == "new"
    plain = P.TcpDialog()
    plain.nxt = dict(d.nxt)
    assert tracker.send(plain.frame(REPLY, "SA")).state == "established"
    f = tracker.flow()
    assert f.state == "SYN_RECV" and (f.orig.src, f.orig.sport, f.orig.dport) == (P.A4, 40000, 80)


def test_ipv4_maximal_options_are_skipped(tracker):
    opts = [P.IPOption_NOP()] * 40  # IHL 15
    frm = P.frame(P.udp(P.A4, P.B4, 40000, 53, options=opts))
    assert P.header(frm, "ipv4").length == 60
    assert tracker.send(frm).state == "new"
    assert tracker.flow().orig.dport == 53


def test_ethernet_padding_after_the_datagram_is_fine(tracker):
    frm = P.frame(P.tcp("S")) + b"\0" * 6  # a minimum-size frame's padding
    assert tracker.send(frm).state == "new"
    assert tracker.flow().bytes == (40, 0)


# --------------------------------------------------------------------------
# IPv4 options the kernel's IP layer refuses (ip_options_compile): INVALID
# with a reason of their own, and no entry

BAD_IPV4_OPTIONS = {
    # a timestamp option claiming 40 bytes in a 4-byte option space
    "timestamp-overruns": b"\x44\x28\x05\x00",
    "length-0": b"\x83\x00\x00\x00",
    "length-1": b"\x07\x01\x00\x00",
    # three NOPs, then an option type whose length byte is past the header
    "length-byte-missing": b"\x01\x01\x01\x07",
    # a good router-alert option, then a record-route that overruns
    "second-overruns": b"\x94\x04\x00\x00\x07\x08\x04\x00",
    # one byte too long for a full 40-byte option space
    "full-space-plus-one": b"\x07\x29\x04" + b"\0" * 37,
    # the longest walk (32 steps), broken in its very last option
    "slowest-walk-last-bad": b"\x01\x01\x01\x88\x02" * 7 + b"\x01\x01\x01\x88\x03",
}

GOOD_IPV4_OPTIONS = {
    # END stops the walk: what follows is padding, whatever it holds
    "end-then-garbage": b"\x00\x28\x05\x00",
    "nops-then-end": b"\x01\x01\x01\x00",
    "router-alert": b"\x94\x04\x00\x00",
    "record-route-exact": b"\x07\x07\x04" + b"\0" * 4 + b"\x00",
    # one option filling the whole 40-byte option space
    "full-space": b"\x07\x28\x04" + b"\0" * 37,
    "ra-then-rr": b"\x94\x04\x00\x00\x07\x07\x04" + b"\0" * 4 + b"\x01",
    # the longest walk: three NOOPs and a 2-byte option, eight times
    "slowest-walk": b"\x01\x01\x01\x88\x02" * 8,
    "nops-then-option": b"\x01" * 36 + b"\x94\x04\x00\x00",
}


def _with_options(opts: bytes, flags: str = "S") -> bytes:
    assert len(opts) % 4 == 0 and len(opts) <= 40
    frm = P.frame(P.tcp(flags, options=opts))
    assert P.header(frm, "ipv4").length == 20 + len(opts)
    return frm


@pytest.mark.parametrize("opts", list(BAD_IPV4_OPTIONS.values()), ids=list(BAD_IPV4_OPTIONS))
def test_malformed_ipv4_option_is_invalid_and_creates_nothing(tracker, opts):
    out = tracker.send(_with_options(opts))
    assert (out.state, out.reason) == ("invalid", "ip_opts"), out
    assert out.moved("insert") == 0
    assert tracker.flows() == []


@pytest.mark.parametrize("opts", list(GOOD_IPV4_OPTIONS.values()), ids=list(GOOD_IPV4_OPTIONS))
def test_well_formed_ipv4_options_are_tracked(tracker, opts):
    out = tracker.send(_with_options(opts))
    assert out.state == "new", out
    f = tracker.flow()
    assert f.state == "SYN_SENT" and (f.orig.src, f.orig.dport) == (P.A4, 80)


def test_malformed_option_on_a_tracked_flow_changes_nothing(tracker):
    d = P.TcpDialog()
    assert tracker.send(d.frame(ORIG, "S")).state == "new"
    tracker.age(expires_in=40)
    bad = P.TcpDialog(options=BAD_IPV4_OPTIONS["timestamp-overruns"])
    bad.nxt = dict(d.nxt)
    out = tracker.send(bad.frame(REPLY, "SA"))
    assert (out.state, out.reason) == ("invalid", "ip_opts"), out
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.packets == (1, 0) and tracker.timeout_is(f, 40)


@pytest.mark.parametrize("opts,good", [(BAD_IPV4_OPTIONS["timestamp-overruns"], False),
                                       (GOOD_IPV4_OPTIONS["ra-then-rr"], True)],
                         ids=["bad", "good"])
def test_tc_egress_walks_the_options_too(tracker, opts, good):
    """The egress program copies the options with bpf_skb_load_bytes (XDP
    with bpf_xdp_load_bytes): the same walk, the same verdicts."""
    from ctbpf.datapath import bpfsys  # noqa: PLC0415

    run = bpfsys.prog_test_run(tracker.dp.prog_fd("ctbpf_tc_egress"), _with_options(opts))
    assert run.retval == 0  # TC_ACT_OK: observe mode never drops
    flows = tracker.flows()
    if good:
        assert len(flows) == 1 and flows[0].state == "SYN_SENT", flows
    else:
        assert flows == []
