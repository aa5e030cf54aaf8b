"""Malformed frames: each is INVALID with its own reason counter and creates
nothing.

Truncation is tried at every header boundary (and inside each header) of a
set of well-formed frames, two ways:

* raw: the frame is cut and nothing else changes, so once the IP header
  is whole, the IP length field lies about the frame (ip_len);
* fixed: the IPv4 total length / IPv6 payload length is rewritten to end at
  the cut, so the datagram is consistent and the header under the cut is
  what is short (ip6_exthdr, trunc_l4, tcp_doff).

A frame shorter than an Ethernet header cannot be tested: the kernel's
BPF_PROG_TEST_RUN refuses it (EINVAL), as no NIC delivers one.
"""

from __future__ import annotations

import errno

import pytest

import packets as P
from ctbpf.datapath import bpfsys
from scapy.layers.inet import TCP

# --------------------------------------------------------------------------
# truncation at every boundary

BASES = {
    "tcp4": lambda: P.frame(P.tcp("S")),
    "tcp4-ipopts": lambda: P.frame(P.tcp("S", options=P.ipv4_options())),
    "tcp4-tcpopts": lambda: P.frame(P.tcp("S", tcp_options=[("MSS", 1460), ("SAckOK", b""),
                                                           ("WScale", 7), ("NOP", None)])),
    "udp4": lambda: P.frame(P.udp()),
    "icmp4": lambda: P.frame(P.icmp_echo()),
    "icmp4-error": lambda: P.frame(P.icmp_error(P.udp(), P.R4, P.A4)),
    "tcp6": lambda: P.frame(P.tcp("S", P.A6, P.B6)),
    "udp6": lambda: P.frame(P.udp(P.A6, P.B6)),
    "icmp6": lambda: P.frame(P.icmp_echo(P.A6, P.B6)),
    "tcp6-hop-by-hop": lambda: P.frame(P.tcp("S", P.A6, P.B6, ext=[P.hop_by_hop()])),
    "udp6-routing": lambda: P.frame(P.udp(P.A6, P.B6, ext=[P.routing()])),
    "tcp6-dest-opts": lambda: P.frame(P.tcp("S", P.A6, P.B6, ext=[P.dest_opts()])),
    "tcp6-fragment": lambda: P.frame(P.fragment6(TCP(sport=1, dport=2, flags="S") /
                                                 P.Raw(b"x" * 40), keep=32)),
    "udp6-chain": lambda: P.frame(P.udp(P.A6, P.B6, ext=[P.hop_by_hop(), P.routing(),
                                                         P.dest_opts()])),
    "tcp4-802.1q": lambda: P.frame(P.tcp("S"), P.DOT1Q),
    "udp6-qinq": lambda: P.frame(P.udp(P.A6, P.B6), P.QINQ),
}


def expected_reason(frm: bytes, hdr: P.Header, cut: int, fixed: bool) -> str:
    """The oracle: which reason a frame cut at `cut` (inside `hdr`) earns."""
    if hdr.name == "vlan":
        return "trunc_l2"
    if hdr.name in ("ipv4", "ipv6"):
        return "trunc_ip"
    if not fixed:
        return "ip_len"
    l3 = next(h for h in P.layout(frm) if h.name in ("ipv4", "ipv6"))
    if l3.name == "ipv6" and cut == l3.end:
        return "ip_len"  # payload length 0: a jumbogram, never in a frame
    if hdr.name in ("hop-by-hop", "routing", "dest-opts", "fragment", "ah"):
        return "ip6_exthdr"
    if hdr.name == "tcp" and cut >= hdr.start + 20:
        return "tcp_doff"  # options announced, not there
    return "trunc_l4"


def _truncations():
    for base, build in BASES.items():
        frm = build()
        for hdr in P.layout(frm)[1:]:
            cuts = sorted({hdr.start, hdr.start + 1, hdr.start + hdr.length // 2, hdr.end - 1,
                           *((hdr.start + 20,) if hdr.name in ("ipv4", "tcp") and hdr.length > 20
                             else ())})
            for cut in cuts:
                for fixed in (False, True):
                    if fixed and hdr.name in ("vlan", "ipv4", "ipv6"):
                        continue  # no whole IP header to fix
                    reason = expected_reason(frm, hdr, cut, fixed)
                    name = f"{base}-{hdr.name}+{cut - hdr.start}-{'fixed' if fixed else 'raw'}"
                    yield pytest.param(base, cut, fixed, reason, id=name)


TRUNCATIONS = list(_truncations())


@pytest.mark.parametrize("base,cut,fixed,reason", TRUNCATIONS)
def test_truncated(tracker, base, cut, fixed, reason):
    frm = P.truncate(BASES[base](), cut, fix_lengths=fixed)
    out = tracker.send(frm)
    assert (out.state, out.reason) == ("invalid", reason), out
    assert out.moved("insert") == 0 and tracker.flows() == []


@pytest.mark.parametrize("base", list(BASES))
def test_the_untruncated_bases_are_valid(tracker, base):
    out = tracker.send(BASES[base]())
    if base == "icmp4-error":  # well formed, but about a flow nobody tracks
        assert (out.state, out.reason) == ("invalid", "icmp_no_flow")
    else:
        assert out.state == "new", out


def test_every_header_kind_is_truncated_somewhere():
    kinds = {h.name for base in BASES.values() for h in P.layout(base())}
    assert kinds >= {"eth", "vlan", "ipv4", "ipv6", "hop-by-hop", "routing", "dest-opts",
                     "fragment", "tcp", "udp", "icmp", "icmpv6"}
    assert len(TRUNCATIONS) > 150


@pytest.mark.parametrize("size", [0, 1, 6, 12, 13])
def test_frames_shorter_than_ethernet_are_refused_by_the_kernel(tracker, size):
    with pytest.raises(bpfsys.BpfError) as exc:
        bpfsys.prog_test_run(tracker.prog_fd, P.frame(P.tcp("S"))[:size])
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("ethertype,reason", [(P.ETH_P_8021Q, "trunc_l2"),
                                              (P.ETH_P_8021AD, "trunc_l2"),
                                              (P.ETH_P_IP, "trunc_ip"),
                                              (P.ETH_P_IPV6, "trunc_ip")],
                         ids=["802.1q", "802.1ad", "ipv4", "ipv6"])
def test_bare_ethernet_header(tracker, ethertype, reason):
    out = tracker.send(P.ether(b"", ethertype))
    assert (out.state, out.reason) == ("invalid", reason)


# --------------------------------------------------------------------------
# fields that lie


def _tcp4():
    return P.frame(P.tcp("S"))


def _tcp6():
    return P.frame(P.tcp("S", P.A6, P.B6))


def _udp4():
    return P.frame(P.udp(payload=b"0123456789"))


def _udp6():
    return P.frame(P.udp(P.A6, P.B6, payload=b"0123456789"))


def _len4(frm):
    return len(frm) - P.header(frm, "ipv4").start


def _len6(frm):
    return len(frm) - P.header(frm, "ipv6").end


def _ext_too_long():
    frm = P.frame(P.udp(P.A6, P.B6, ext=[P.dest_opts()]))
    return P.poke(frm, P.header(frm, "dest-opts").start + 1, "B", 10)  # 88 bytes announced


def _seven_ext_headers():
    return P.frame(P.udp(P.A6, P.B6, ext=[P.dest_opts() for _ in range(7)]))


def _tot_len_cuts(frm, keep_l4):
    """IPv4 total length ending `keep_l4` bytes into L4, frame left whole."""
    return P.set_ip_total_length(frm, P.header(frm, "ipv4").length + keep_l4)


def _payload_len_cuts(frm, keep_l4):
    l4 = P.layout(frm)[-1]
    return P.set_ip6_payload_length(frm, l4.start - P.header(frm, "ipv6").end + keep_l4)


LIES = {
    **{f"ipv4-ihl-{n}": (lambda n=n: P.set_ihl(_tcp4(), n), "ip_hdr") for n in range(5)},
    "ipv4-ihl-beyond-frame": (lambda: P.set_ihl(P.truncate(_tcp4(), 14 + 30, True), 15),
                              "trunc_ip"),
    "ipv4-version-6": (lambda: P.set_ip_version(_tcp4(), 6), "ip_hdr"),
    "ipv4-version-0": (lambda: P.set_ip_version(_tcp4(), 0), "ip_hdr"),
    "ipv6-version-4": (lambda: P.set_ip_version(_tcp6(), 4), "ip_hdr"),
    "ipv4-total-length-frame+1": (lambda: P.set_ip_total_length(_tcp4(), _len4(_tcp4()) + 1),
                                  "ip_len"),
    "ipv4-total-length-65535": (lambda: P.set_ip_total_length(_tcp4(), 65535), "ip_len"),
    "ipv4-total-length-19": (lambda: P.set_ip_total_length(_tcp4(), 19), "ip_len"),
    "ipv4-total-length-0": (lambda: P.set_ip_total_length(_tcp4(), 0), "ip_len"),
    "ipv4-total-length-below-options": (
        lambda: P.set_ip_total_length(P.frame(P.tcp("S", options=P.ipv4_options())), 20),
        "ip_len"),
    "ipv6-payload-length-frame+1": (
        lambda: P.set_ip6_payload_length(_tcp6(), _len6(_tcp6()) + 1), "ip_len"),
    "ipv6-payload-length-65535": (lambda: P.set_ip6_payload_length(_tcp6(), 65535), "ip_len"),
    "ipv6-payload-length-0": (lambda: P.set_ip6_payload_length(_tcp6(), 0), "ip_len"),
    **{f"tcp4-doff-{n}": (lambda n=n: P.set_tcp_doff(_tcp4(), n), "tcp_doff") for n in range(5)},
    **{f"tcp6-doff-{n}": (lambda n=n: P.set_tcp_doff(_tcp6(), n), "tcp_doff") for n in (0, 4)},
    "tcp4-doff-6-no-room": (lambda: P.set_tcp_doff(_tcp4(), 6), "tcp_doff"),
    "tcp4-doff-15-no-room": (lambda: P.set_tcp_doff(_tcp4(), 15), "tcp_doff"),
    "tcp6-doff-15-no-room": (lambda: P.set_tcp_doff(_tcp6(), 15), "tcp_doff"),
    "tcp4-doff-past-total-length": (
        lambda: P.set_tcp_doff(P.set_ip_total_length(P.frame(P.tcp("S", payload=b"x" * 40)),
                                                     20 + 20 + 4), 8), "tcp_doff"),
    "tcp4-total-length-cuts-header": (lambda: _tot_len_cuts(_tcp4(), 10), "trunc_l4"),
    "tcp6-payload-length-cuts-header": (lambda: _payload_len_cuts(_tcp6(), 10), "trunc_l4"),
    "udp4-total-length-cuts-header": (lambda: _tot_len_cuts(_udp4(), 6), "trunc_l4"),
    "icmp4-total-length-cuts-header": (lambda: _tot_len_cuts(P.frame(P.icmp_echo()), 4),
                                       "trunc_l4"),
    "icmp6-payload-length-cuts-header": (
        lambda: _payload_len_cuts(P.frame(P.icmp_echo(P.A6, P.B6)), 4), "trunc_l4"),
    "udp4-length-datagram+1": (lambda: P.set_udp_length(_udp4(), 8 + 10 + 1), "udp_len"),
    "udp4-length-65535": (lambda: P.set_udp_length(_udp4(), 65535), "udp_len"),
    "udp4-length-7": (lambda: P.set_udp_length(_udp4(), 7), "udp_len"),
    "udp4-length-0": (lambda: P.set_udp_length(_udp4(), 0), "udp_len"),
    "udp6-length-datagram+1": (lambda: P.set_udp_length(_udp6(), 8 + 10 + 1), "udp_len"),
    "udp6-length-0": (lambda: P.set_udp_length(_udp6(), 0), "udp_len"),
    "udp4-length-past-total-length": (
        lambda: _tot_len_cuts(_udp4(), 8 + 2), "udp_len"),
    "ipv6-ext-header-longer-than-packet": (_ext_too_long, "ip6_exthdr"),
    "ipv6-seven-ext-headers": (_seven_ext_headers, "ip6_exthdr"),
    "vlan-depth-3": (lambda: P.frame(P.tcp("S"), P.TRIPLE), "vlan_depth"),
    "icmp4-error-inner-ip-truncated": (
        lambda: P.frame(P.icmp_error(P.udp(), P.R4, P.A4, keep=12)), "icmp_inner"),
    "icmp4-error-inner-l4-truncated": (
        lambda: P.frame(P.icmp_error(P.tcp("S"), P.R4, P.A4, keep=22)), "icmp_inner"),
    "icmp4-error-inner-empty": (
        lambda: P.frame(P.icmp_error(P.tcp("S"), P.R4, P.A4, keep=0)), "icmp_inner"),
    "icmp4-error-inner-ihl-4": (
        lambda: P.frame(P.icmp_error(b"\x44" + bytes(P.tcp("S"))[1:], P.R4, P.A4)),
        "icmp_inner"),
    "icmp4-error-inner-is-ipv6": (
        lambda: P.frame(P.icmp_error(P.tcp("S", P.A6, P.B6), P.R4, P.A4)), "icmp_inner"),
    "icmp6-error-inner-ip-truncated": (
        lambda: P.frame(P.icmp_error(P.udp(P.A6, P.B6), P.R6, P.A6, keep=30)), "icmp_inner"),
    "icmp6-error-inner-l4-truncated": (
        lambda: P.frame(P.icmp_error(P.udp(P.A6, P.B6), P.R6, P.A6, "packet-too-big",
                                     keep=43)), "icmp_inner"),
    "icmp6-error-inner-echo-truncated": (
        lambda: P.frame(P.icmp_error(P.icmp_echo(P.A6, P.B6), P.R6, P.A6, keep=44)),
        "icmp_inner"),
}


@pytest.mark.parametrize("build,reason", list(LIES.values()), ids=list(LIES))
def test_lying_field(tracker, build, reason):
    out = tracker.send(build())
    assert (out.state, out.reason) == ("invalid", reason), out
    assert out.moved("insert") == 0 and tracker.flows() == []


def test_malformed_packet_does_not_touch_a_tracked_flow(tracker):
    d = P.TcpDialog()
    for direction, flags in ((P.ORIG, "S"), (P.REPLY, "SA"), (P.ORIG, "A")):
        tracker.send(d.frame(direction, flags))
    tracker.age(expires_in=30)
    before = tracker.flow()
    for frm in (P.set_tcp_doff(d.frame(P.ORIG, "FA"), 3),
                P.set_ip_total_length(d.frame(P.REPLY, "R"), 9999),
                P.truncate(d.frame(P.ORIG, "A"), 14 + 20 + 10, fix_lengths=True)):
        assert tracker.send(frm).state == "invalid"
    after = tracker.flow()
    assert (after.state, after.packets) == (before.state, before.packets)
    assert tracker.timeout_is(after, 30)


def test_udp_length_shorter_than_the_datagram_is_accepted(tracker):
    """Trailing bytes after the UDP length are allowed (the kernel's
    udp_error only rejects a length beyond the packet or below 8)."""
    out = tracker.send(P.set_udp_length(_udp4(), 8 + 4))
    assert out.state == "new"


def test_tcp_options_that_fill_the_payload_are_fine(tracker):
    frm = P.set_tcp_doff(P.frame(P.tcp("S", payload=b"\x01" * 8)), 7)
    assert tracker.send(frm).state == "new"
