"""Frames for the datapath tests: scapy builds the well-formed ones, byte
surgery makes the malformed ones.

Builders come in two layers:

* L3 builders (`tcp`, `udp`, `icmp_echo`, `icmp_error`, `generic`, ...)
  return scapy packets that start at the IP header, so one can be embedded
  in an ICMP error or turned into a frame. The family follows the source
  address (``":"`` in it means IPv6).
* `frame(l3, vlans=...)` wraps an L3 packet (or raw L3 bytes) in Ethernet,
  with any number of VLAN tags, and returns the bytes BPF_PROG_TEST_RUN gets.

Surgery works on frame bytes: `layout()` finds where each header sits (a
small parser of our own, independent of scapy's dissectors and of the
datapath), `truncate()` cuts a frame, optionally rewriting the IP length
fields so that only the cut header is short, and the `set_*` helpers
overwrite one field.

Checksums are whatever scapy computes; the datapath does not verify them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import ARP, GRE
from scapy.packet import Packet, Raw

# --------------------------------------------------------------------------
# addresses

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"

#: Client (opener), server, and a router that reports ICMP errors.
A4, B4, R4, C4 = "10.1.1.1", "10.2.2.2", "10.9.9.9", "10.3.3.3"
A6, B6, R6, C6 = "2001:db8:1::1", "2001:db8:2::2", "2001:db8:9::9", "2001:db8:3::3"

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

ETH_HLEN = 14
VLAN_HLEN = 4

#: Tag stacks for `frame(vlans=...)`: (TPID, VLAN id) outermost first.
DOT1Q = ((ETH_P_8021Q, 100),)
QINQ = ((ETH_P_8021AD, 100), (ETH_P_8021Q, 200))
TRIPLE = ((ETH_P_8021AD, 100), (ETH_P_8021Q, 200), (ETH_P_8021Q, 300))

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_GRE, IPPROTO_ICMPV6 = 1, 6, 17, 47, 58


def is_v6(addr: str) -> bool:
    return ":" in addr


def other_addrs(v6: bool) -> tuple[str, str, str, str]:
    """(client, server, router, third host) of a family."""
    return (A6, B6, R6, C6) if v6 else (A4, B4, R4, C4)


# --------------------------------------------------------------------------
# Ethernet


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def ether(payload: bytes, ethertype: int, vlans=(), src: str = MAC_A, dst: str = MAC_B) -> bytes:
    """An Ethernet header, VLAN tags (outermost first), the ethertype, payload."""
    hdr = _mac(dst) + _mac(src)
    for tpid, vid in vlans:
        hdr += struct.pack("!HH", tpid, vid & 0x0FFF)
    return hdr + struct.pack("!H", ethertype) + payload


def l3_bytes(pkt) -> bytes:
    return pkt if isinstance(pkt, (bytes, bytearray)) else bytes(pkt)


def frame(pkt, vlans=()) -> bytes:
    """An L3 packet (scapy or bytes) in an Ethernet frame; the ethertype
    follows the IP version nibble."""
    raw = l3_bytes(pkt)
    ethertype = ETH_P_IPV6 if raw and raw[0] >> 4 == 6 else ETH_P_IP
    return ether(raw, ethertype, vlans)


def l3_of(frm: bytes) -> bytes:
    """The L3 bytes of a frame built here (skips Ethernet and VLAN tags)."""
    return frm[_l2_len(frm):]


def _l2_len(frm: bytes) -> int:
    off = 12
    while struct.unpack_from("!H", frm, off)[0] in (ETH_P_8021Q, ETH_P_8021AD):
        off += VLAN_HLEN
    return off + 2


def arp(vlans=()) -> bytes:
    req = ARP(op=1, hwsrc=MAC_A, psrc=A4, pdst=B4, hwdst="00:00:00:00:00:00")
    return ether(bytes(req), ETH_P_ARP, vlans, dst="ff:ff:ff:ff:ff:ff")


# --------------------------------------------------------------------------
# L3 builders


def ip(src: str, dst: str, ext=(), options=None, **kw) -> Packet:
    """IPv4 (with options) or IPv6 (with extension headers, scapy layers
    stacked in order) from src to dst."""
    if is_v6(src):
        assert not options, "IPv4 options on an IPv6 packet"
        hdr = IPv6(src=src, dst=dst, **kw)
        for e in ext:
            hdr = hdr / e
        return hdr
    assert not ext, "extension headers on an IPv4 packet"
    if options:
        kw["options"] = options
    return IP(src=src, dst=dst, **kw)


def tcp(flags: str, src: str = A4, dst: str = B4, sport: int = 40000, dport: int = 80,
        seq: int = 1000, ack: int = 0, payload: bytes = b"", window: int = 64240,
        tcp_options=None, dataofs: int | None = None, **ipkw) -> Packet:
    """A TCP segment. flags uses scapy letters: S A F R P U E C."""
    kw = {}
    if tcp_options is not None:
        kw["options"] = tcp_options
    if dataofs is not None:
        kw["dataofs"] = dataofs
    seg = TCP(sport=sport, dport=dport, flags=flags, seq=seq & 0xFFFFFFFF,
              ack=ack & 0xFFFFFFFF, window=window, **kw)
    pkt = ip(src, dst, **ipkw) / seg
    return pkt / Raw(payload) if payload else pkt


def udp(src: str = A4, dst: str = B4, sport: int = 40000, dport: int = 53,
        payload: bytes = b"query", **ipkw) -> Packet:
    pkt = ip(src, dst, **ipkw) / UDP(sport=sport, dport=dport)
    return pkt / Raw(payload) if payload else pkt


def icmp_echo(src: str = A4, dst: str = B4, id: int = 0x1234, seq: int = 1,
              reply: bool = False, payload: bytes = b"ping", **ipkw) -> Packet:
    """ICMP echo request/reply, or ICMPv6 echo for IPv6 addresses."""
    if is_v6(src):
        body = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=id, seq=seq, data=payload)
        return ip(src, dst, **ipkw) / body
    return ip(src, dst, **ipkw) / ICMP(type=0 if reply else 8, id=id, seq=seq) / Raw(payload)


def icmp_timestamp(src: str = A4, dst: str = B4, id: int = 0x4321, seq: int = 1,
                   reply: bool = False) -> Packet:
    """ICMP timestamp request (13) or reply (14)."""
    return ip(src, dst) / ICMP(type=14 if reply else 13, id=id, seq=seq, ts_ori=1, ts_rx=2,
                               ts_tx=3)


def icmp_raw(src: str, dst: str, type: int, code: int = 0, rest: bytes = b"\0\0\0\0",
             payload: bytes = b"") -> Packet:
    """Any ICMP (or ICMPv6) message as type, code, checksum 0 and raw bytes."""
    body = struct.pack("!BBH", type, code, 0) + rest + payload
    if is_v6(src):
        return ip(src, dst, nh=IPPROTO_ICMPV6) / Raw(body)
    return ip(src, dst, proto=IPPROTO_ICMP) / Raw(body)


#: Error kinds: (ICMP type, code) for IPv4 and IPv6.
ICMP4_ERRORS = {"dest-unreach": (3, 3), "time-exceeded": (11, 0), "frag-needed": (3, 4),
                "param-problem": (12, 0)}
ICMP6_ERRORS = {"dest-unreach": (1, 4), "packet-too-big": (2, 0), "time-exceeded": (3, 0),
                "param-problem": (4, 0)}


def icmp_error(inner, src: str, dst: str, kind: str = "dest-unreach",
               keep: int | None = None) -> Packet:
    """An ICMP/ICMPv6 error from src to dst quoting inner (an L3 packet or
    its bytes), truncated to `keep` bytes of the inner packet if given."""
    quoted = l3_bytes(inner)
    if keep is not None:
        quoted = quoted[:keep]
    if is_v6(src):
        type_, code = ICMP6_ERRORS[kind]
        cls = {1: ICMPv6DestUnreach, 2: ICMPv6PacketTooBig, 3: ICMPv6TimeExceeded}.get(type_)
        if cls is ICMPv6PacketTooBig:
            body = cls(mtu=1280)
        elif cls is not None:
            body = cls(code=code)
        else:
            return icmp_raw(src, dst, type_, code, payload=quoted)
        return ip(src, dst) / body / Raw(quoted)
    type_, code = ICMP4_ERRORS[kind]
    return ip(src, dst) / ICMP(type=type_, code=code) / Raw(quoted)


def generic(src: str = A4, dst: str = B4, proto: int = 253, payload: bytes = b"generic!") -> Packet:
    if is_v6(src):
        return ip(src, dst, nh=proto) / Raw(payload)
    return ip(src, dst, proto=proto) / Raw(payload)


def gre(src: str = A4, dst: str = B4) -> Packet:
    """GRE (version 0) carrying an IPv4 packet."""
    inner = IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=1, dport=2)
    if is_v6(src):
        return ip(src, dst) / GRE(proto=ETH_P_IP) / inner
    return ip(src, dst) / GRE(proto=ETH_P_IP) / inner


# IPv6 extension headers, one 8-byte header each unless padded.
def hop_by_hop() -> Packet:
    return IPv6ExtHdrHopByHop()


def routing() -> Packet:
    return IPv6ExtHdrRouting(type=0, segleft=0, addresses=[])


def dest_opts(pad: int = 0) -> Packet:
    """Destination options; with pad, a PadN option of that many bytes
    (the header grows past 8 bytes)."""
    if pad:
        return IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * pad)])
    return IPv6ExtHdrDestOpt()


def frag6(offset: int = 0, more: bool = True, id: int = 0x77) -> Packet:
    """IPv6 fragment header; offset in 8-byte units."""
    return IPv6ExtHdrFragment(offset=offset, m=int(more), id=id)


EXT_HEADERS = {"hop-by-hop": hop_by_hop, "routing": routing, "dest-opts": dest_opts}


def ipv4_options() -> list:
    """A record-route option and padding: IHL 6 or more."""
    return [IPOption_RR(), IPOption_NOP()]


def fragment4(l4: Packet, src: str = A4, dst: str = B4, first: bool = True,
              keep: int | None = None) -> Packet:
    """An IPv4 fragment of l4 (a scapy L4 layer). The first fragment holds
    the first `keep` bytes of l4 (default: all but the last 8) with MF set;
    a non-first fragment holds raw bytes at offset 8 bytes x 185."""
    proto = {TCP: IPPROTO_TCP, UDP: IPPROTO_UDP, ICMP: IPPROTO_ICMP}[type(l4)]
    data = bytes(l4)
    if first:
        keep = keep if keep is not None else max(8, (len(data) - 8) // 8 * 8)
        return IP(src=src, dst=dst, proto=proto, flags="MF", frag=0, id=0x77) / Raw(data[:keep])
    return IP(src=src, dst=dst, proto=proto, flags=0, frag=185, id=0x77) / Raw(b"\xab" * 16)


def fragment6(l4: Packet, src: str = A6, dst: str = B6, first: bool = True,
              keep: int | None = None, before=()) -> Packet:
    """An IPv6 fragment of l4, with optional extension headers before the
    fragment header."""
    proto = {TCP: IPPROTO_TCP, UDP: IPPROTO_UDP}[type(l4)]
    data = bytes(l4)
    pkt = ip(src, dst, ext=before)
    if first:
        keep = keep if keep is not None else max(8, (len(data) - 8) // 8 * 8)
        return pkt / IPv6ExtHdrFragment(nh=proto, offset=0, m=1, id=0x77) / Raw(data[:keep])
    return pkt / IPv6ExtHdrFragment(nh=proto, offset=185, m=0, id=0x77) / Raw(b"\xab" * 16)


# --------------------------------------------------------------------------
# where the headers are


@dataclass(frozen=True)
class Header:
    name: str     # eth, vlan, ipv4, ipv6, hop-by-hop, routing, dest-opts, fragment, ah, tcp, udp, icmp, icmpv6
    start: int    # offset in the frame
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


_EXT_NAMES = {0: "hop-by-hop", 43: "routing", 60: "dest-opts", 44: "fragment", 51: "ah"}


def layout(frm: bytes) -> list[Header]:
    """The headers of a well-formed frame, outermost first, up to and
    including the L4 header (TCP, UDP, ICMP, ICMPv6; nothing for another
    protocol or a non-first fragment). The IP and extension headers must be
    whole; a cut TCP header is listed with 20 bytes."""
    out = [Header("eth", 0, ETH_HLEN)]
    off = 12
    ethertype = struct.unpack_from("!H", frm, off)[0]
    while ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        out.append(Header("vlan", off + 2, VLAN_HLEN))
        off += VLAN_HLEN
        ethertype = struct.unpack_from("!H", frm, off)[0]
    off += 2
    if ethertype == ETH_P_IP:
        ihl = (frm[off] & 0x0F) * 4
        proto = frm[off + 9]
        nonfirst = struct.unpack_from("!H", frm, off + 6)[0] & 0x1FFF
        out.append(Header("ipv4", off, ihl))
        off += ihl
        if nonfirst:
            return out
    elif ethertype == ETH_P_IPV6:
        out.append(Header("ipv6", off, 40))
        proto = frm[off + 6]
        off += 40
        while proto in _EXT_NAMES:
            name = _EXT_NAMES[proto]
            nxt, hlen = frm[off], frm[off + 1]
            if name == "fragment":
                length = 8
                nonfirst = struct.unpack_from("!H", frm, off + 2)[0] & 0xFFF8
            elif name == "ah":
                length, nonfirst = (hlen + 2) * 4, 0
            else:
                length, nonfirst = (hlen + 1) * 8, 0
            out.append(Header(name, off, length))
            off += length
            proto = nxt
            if nonfirst:
                return out
    else:
        return out
    if proto == IPPROTO_TCP:
        doff = (frm[off + 12] >> 4) * 4 if off + 12 < len(frm) else 20
        out.append(Header("tcp", off, doff))
    elif proto == IPPROTO_UDP:
        out.append(Header("udp", off, 8))
    elif proto == IPPROTO_ICMP and ethertype == ETH_P_IP:
        out.append(Header("icmp", off, 8))
    elif proto == IPPROTO_ICMPV6 and ethertype == ETH_P_IPV6:
        out.append(Header("icmpv6", off, 8))
    return out


def header(frm: bytes, name: str, nth: int = 0) -> Header:
    found = [h for h in layout(frm) if h.name == name]
    return found[nth]


def _l3(frm: bytes) -> Header:
    for h in layout(frm):
        if h.name in ("ipv4", "ipv6"):
            return h
    raise ValueError("no IP header in frame")


# --------------------------------------------------------------------------
# surgery


def truncate(frm: bytes, at: int, fix_lengths: bool = False) -> bytes:
    """The first `at` bytes of a frame. With fix_lengths, the IPv4 total
    length or IPv6 payload length is rewritten to end where the frame now
    ends (when the IP fixed header survived the cut), so the datagram is
    consistent and only the header under the cut is short."""
    out = bytearray(frm[:at])
    if fix_lengths:
        l3 = _l3(frm)
        if l3.name == "ipv4" and at >= l3.start + 20:
            struct.pack_into("!H", out, l3.start + 2, at - l3.start)
        elif l3.name == "ipv6" and at >= l3.start + 40:
            struct.pack_into("!H", out, l3.start + 4, at - l3.start - 40)
    return bytes(out)


def poke(frm: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(frm)
    struct.pack_into("!" + fmt, out, offset, value)
    return bytes(out)


def set_ihl(frm: bytes, ihl: int) -> bytes:
    h = header(frm, "ipv4")
    return poke(frm, h.start, "B", (frm[h.start] & 0xF0) | (ihl & 0x0F))


def set_ip_version(frm: bytes, version: int) -> bytes:
    h = _l3(frm)
    return poke(frm, h.start, "B", (frm[h.start] & 0x0F) | (version << 4))


def set_ip_total_length(frm: bytes, length: int) -> bytes:
    return poke(frm, header(frm, "ipv4").start + 2, "H", length)


def set_ip6_payload_length(frm: bytes, length: int) -> bytes:
    return poke(frm, header(frm, "ipv6").start + 4, "H", length)


def set_tcp_doff(frm: bytes, words: int) -> bytes:
    h = header(frm, "tcp")
    return poke(frm, h.start + 12, "B", (words << 4) | (frm[h.start + 12] & 0x0F))


def set_tcp_flags(frm: bytes, flags: int) -> bytes:
    return poke(frm, header(frm, "tcp").start + 13, "B", flags)


def set_udp_length(frm: bytes, length: int) -> bytes:
    return poke(frm, header(frm, "udp").start + 4, "H", length)


def ip_datagram_length(frm: bytes) -> int:
    h = _l3(frm)
    if h.name == "ipv4":
        return struct.unpack_from("!H", frm, h.start + 2)[0]
    return 40 + struct.unpack_from("!H", frm, h.start + 4)[0]


TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
                 "C": 0x80}


def flag_bits(letters: str) -> int:
    bits = 0
    for ch in letters:
        bits |= TCP_FLAG_BITS[ch]
    return bits


# --------------------------------------------------------------------------
# a TCP conversation with consistent sequence numbers

ORIG, REPLY = "orig", "reply"


class TcpDialog:
    """Both ends of one TCP connection. `l3(direction, flags)` builds the
    next segment of that side: seq is the side's next sequence number, ack
    (when A is set) the other side's, and the side's next sequence number
    advances by payload + SYN + FIN, so that seq + len ("last_end" in the
    tracker) is what the peer would acknowledge.

    A SYN without ACK from a side that has already sent starts over with a
    fresh ISN (a reopen, or a SYN the tracker ignores); a SYN/ACK from a
    side that sent a SYN before reuses that SYN's ISN (retransmission,
    simultaneous open)."""

    def __init__(self, client: str = A4, server: str = B4, cport: int = 40000, sport: int = 80,
                 isn: tuple[int, int] = (1000, 500000), vlans=(), **ipkw) -> None:
        self.addr = {ORIG: (client, cport), REPLY: (server, sport)}
        self.isn = {ORIG: isn[0], REPLY: isn[1]}
        self.nxt = dict(self.isn)
        self.sent = {ORIG: False, REPLY: False}
        self.syn_sent = {ORIG: False, REPLY: False}
        self.vlans = vlans
        self.ipkw = ipkw

    @staticmethod
    def other(direction: str) -> str:
        return REPLY if direction == ORIG else ORIG

    def l3(self, direction: str, flags: str, payload: bytes = b"", seq: int | None = None,
           ack: int | None = None) -> Packet:
        src, sport = self.addr[direction]
        dst, dport = self.addr[self.other(direction)]
        if seq is None:
            if "S" in flags and "A" not in flags and self.sent[direction]:
                self.isn[direction] = (self.nxt[direction] + 1_000_000) & 0xFFFFFFFF
                seq = self.isn[direction]
            elif "S" in flags and self.syn_sent[direction]:
                seq = self.isn[direction]
            else:
                seq = self.nxt[direction]
        if ack is None:
            ack = self.nxt[self.other(direction)] if "A" in flags else 0
        self.nxt[direction] = (seq + len(payload) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF
        self.sent[direction] = True
        if "S" in flags:
            self.syn_sent[direction] = True
        return tcp(flags, src, dst, sport, dport, seq=seq, ack=ack, payload=payload, **self.ipkw)

    def frame(self, direction: str, flags: str, payload: bytes = b"", **kw) -> bytes:
        return frame(self.l3(direction, flags, payload, **kw), self.vlans)
