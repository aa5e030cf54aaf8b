"""Crafted traffic for the conformance scenarios.

`Ctx` is what a scenario function receives: the addresses of the lab,
builders that turn an L3 scapy packet into a frame sent from the client or
the server, and conversation helpers that keep TCP sequence and
acknowledgement numbers consistent (so the kernel's window checks accept
every packet unless a scenario says otherwise).

Sides are "c" (the client namespace, the flow's usual opener) and "s" (the
server namespace).
"""

from __future__ import annotations

import itertools
import time

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
)
from scapy.layers.l2 import GRE, Ether
from scapy.packet import Raw

from conf_harness import Harness, HarnessError, Run, Step

NS = {"c": "client", "s": "server"}
OTHER = {"c": "s", "s": "c"}

# Ports handed out to scenarios, so that no two share a flow by accident.
_ports = itertools.count(40000, 2)
_ids = itertools.count(0x4000)


class Ctx:
    """The toolbox of one scenario run."""

    def __init__(self, h: Harness, run: Run) -> None:
        self.h = h
        self.run = run
        lab = h.lab
        self.addr4 = {"c": lab.client_ip, "s": lab.server_ip}
        self.addr6 = {"c": lab.client_ip6, "s": lab.server_ip6}
        self.router4 = {"c": lab.router_client_ip, "s": lab.router_server_ip}
        self.router6 = {"c": lab.router_client_ip6, "s": lab.router_server_ip6}
        self.mac = {"c": (h.macs[("client", "eth0")], h.macs[("router", "cli0")]),
                    "s": (h.macs[("server", "eth0")], h.macs[("router", "srv0")])}

    # -- addresses and frames ----------------------------------------------

    def addr(self, side: str, v6: bool = False) -> str:
        return (self.addr6 if v6 else self.addr4)[side]

    def ip(self, side: str, v6: bool = False, *, src: str | None = None,
           dst: str | None = None, **kw):
        """An IP header from `side` to the other side (addresses overridable)."""
        src = src or self.addr(side, v6)
        dst = dst or self.addr(OTHER[side], v6)
        if v6:
            kw.setdefault("hlim", 64)
            return IPv6(src=src, dst=dst, **kw)
        kw.setdefault("ttl", 64)
        return IP(src=src, dst=dst, **kw)

    def frame(self, side: str, l3) -> bytes:
        """An Ethernet frame from `side` to the router. Raw L3 bytes get the
        ethertype their version nibble says."""
        src, dst = self.mac[side]
        if isinstance(l3, (bytes, bytearray, Raw)):
            data = bytes(l3)
            etype = 0x86DD if data[:1] and data[0] >> 4 == 6 else 0x0800
            return bytes(Ether(src=src, dst=dst, type=etype)) + data
        return bytes(Ether(src=src, dst=dst) / l3)

    def send(self, side: str, l3, label: str, expect_kernel: int | None = None) -> Step:
        """Send one L3 packet from a side and compare both trackers after it."""
        return self.run.step(label, [(NS[side], self.frame(side, l3))], expect_kernel)

    def send_many(self, side: str, packets, label: str,
                  expect_kernel: int | None = None) -> Step:
        """Several frames (e.g. fragments) as one step."""
        return self.run.step(label, [(NS[side], self.frame(side, p)) for p in packets],
                             expect_kernel)

    def observe_quiet(self, label: str, quiet: float = 0.3, limit: float = 5.0) -> Step:
        """After real traffic: wait until neither side counts anything new
        for `quiet` seconds (at most `limit`), then compare."""
        deadline = time.monotonic() + limit
        last = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            now = (tuple(sorted(self.h.kernel_counters().items())),
                   tuple(sorted(self.h.ctbpf_counters().items())))
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.05)
        return self.run.observe(label, 0, 0, timeout=0)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- conversations -------------------------------------------------------

    def tcp(self, v6: bool = False, **kw) -> "TcpConv":
        return TcpConv(self, v6, **kw)

    def udp(self, v6: bool = False, **kw) -> "UdpConv":
        return UdpConv(self, v6, **kw)

    def new_port(self) -> int:
        return next(_ports)

    def new_id(self) -> int:
        return next(_ids)

    # -- ICMP ------------------------------------------------------------------

    def echo(self, side: str, ident: int, reply: bool = False, v6: bool = False, seq: int = 1,
             label: str | None = None) -> Step:
        if v6:
            body = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident, seq=seq)
        else:
            body = ICMP(type=0 if reply else 8, id=ident, seq=seq)
        what = "echo reply" if reply else "echo request"
        return self.send(side, self.ip(side, v6) / body / Raw(b"ctbpf-conf"),
                         label or f"{side}>{OTHER[side]} {what} id={ident}")

    def icmp_error(self, side: str, inner: bytes, *, v6: bool = False, kind: str = "unreach",
                   src: str | None = None, dst: str | None = None,
                   label: str | None = None) -> Step:
        """An ICMP(v6) error sent from `side`, embedding `inner` (the L3
        bytes of the offending packet). Outer addresses default to this side
        and the other side."""
        if v6:
            err = {"unreach": ICMPv6DestUnreach(code=4),
                   "toobig": ICMPv6PacketTooBig(mtu=1280),
                   "ttl": ICMPv6TimeExceeded(code=0)}[kind]
        else:
            err = {"unreach": ICMP(type=3, code=3),
                   "frag": ICMP(type=3, code=4, nexthopmtu=1280),
                   "ttl": ICMP(type=11, code=0)}[kind]
        pkt = self.ip(side, v6, src=src, dst=dst) / err / Raw(inner)
        return self.send(side, pkt, label or f"{side}>{OTHER[side]} icmp{'v6' if v6 else ''} "
                                             f"{kind} error")

    # -- real sockets (the endpoint stacks answer for themselves) -----------

    def real_tcp(self, port: int, host: str, *client_args: str, family: int = 4) -> None:
        lab = self.h.lab
        with self.h.unsilenced():
            srv = lab.traffic_popen("server", "tcp-server", "--port", port, "--family", family,
                                    "--count", 1, "--timeout", 10)
            try:
                if not lab.wait_listening("server", port):
                    raise HarnessError(f"tcp-server did not listen on {port}")
                cp = lab.traffic("client", "tcp-client", "--host", host, "--port", port,
                                 "--data", 3000, "--timeout", 10, *client_args, timeout=20)
                if cp.returncode != 0:
                    raise HarnessError(f"tcp-client failed: {cp.stderr.strip()}")
                srv.wait(timeout=15)
            finally:
                if srv.poll() is None:
                    srv.kill()
                    srv.wait(timeout=5)

    def real_udp(self, port: int, host: str, family: int = 4) -> None:
        lab = self.h.lab
        with self.h.unsilenced():
            srv = lab.traffic_popen("server", "udp-server", "--port", port, "--family", family,
                                    "--count", 2, "--timeout", 10)
            try:
                if not lab.wait_listening("server", port, "udp"):
                    raise HarnessError(f"udp-server did not listen on {port}")
                cp = lab.traffic("client", "udp-client", "--host", host, "--port", port,
                                 "--count", 2, "--interval", 0.05, "--timeout", 10, timeout=20)
                if cp.returncode != 0:
                    raise HarnessError(f"udp-client failed: {cp.stderr.strip()}")
                srv.wait(timeout=15)
            finally:
                if srv.poll() is None:
                    srv.kill()
                    srv.wait(timeout=5)

    def real_ping(self, host: str, count: int = 2) -> None:
        with self.h.unsilenced():
            if not self.h.lab.ping("client", host, count=count):
                raise HarnessError(f"ping {host} from the client failed")

    # -- anything else -------------------------------------------------------

    def proto(self, side: str, number: int, v6: bool = False, payload: bytes = b"ctbpf-conf",
              label: str | None = None) -> Step:
        hdr = self.ip(side, v6, nh=number) if v6 else self.ip(side, v6, proto=number)
        return self.send(side, hdr / Raw(payload), label or f"{side}>{OTHER[side]} proto {number}")

    def gre(self, side: str, v6: bool = False, label: str | None = None) -> Step:
        inner = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2) / Raw(b"x")
        return self.send(side, self.ip(side, v6) / GRE(proto=0x0800) / inner,
                         label or f"{side}>{OTHER[side]} gre")


class TcpConv:
    """One TCP connection between client and server, numbers kept in step.

    `nxt[side]` is the next sequence number a side sends; an ACK carries the
    peer's `nxt`, i.e. acknowledges everything the peer sent so far.
    """

    def __init__(self, ctx: Ctx, v6: bool = False, cport: int | None = None,
                 sport: int | None = None, cisn: int = 1_000_000, sisn: int = 7_000_000) -> None:
        self.ctx = ctx
        self.v6 = v6
        self.port = {"c": cport or ctx.new_port(), "s": sport or ctx.new_port()}
        self.nxt = {"c": cisn, "s": sisn}
        self.last: dict[str, object] = {}

    def l3(self, side: str, flags: str, data: bytes = b"", seq: int | None = None,
           ack: int | None = None, window: int = 65535, ext=(), opts=()):
        """(packet, seq): a segment from `side`; `ext` are IPv6 extension
        headers to put between the IPv6 and the TCP header, `opts` TCP
        options in scapy's form (("WScale", 7), ("SAckOK", b""),
        ("SAck", (left, right, ...)))."""
        peer = OTHER[side]
        if seq is None:
            seq = self.nxt[side]
        if ack is None:
            ack = self.nxt[peer] if "A" in flags else 0
        tcp = TCP(sport=self.port[side], dport=self.port[peer], flags=flags or 0,
                  seq=seq % 2**32, ack=ack % 2**32, window=window,
                  options=[(k, tuple(v % 2**32 for v in o) if k == "SAck" else o)
                           for k, o in opts])
        pkt = self.ctx.ip(side, self.v6)
        for hdr in ext:
            pkt = pkt / hdr.copy()
        pkt = pkt / tcp
        if data:
            pkt = pkt / Raw(data)
        return pkt, seq

    def send(self, side: str, flags: str, data: bytes = b"", *, seq: int | None = None,
             ack: int | None = None, label: str | None = None, advance: bool = True,
             window: int = 65535, ext=(), opts=()) -> Step:
        pkt, seq = self.l3(side, flags, data, seq, ack, window, ext, opts)
        if advance and seq == self.nxt[side]:
            self.nxt[side] += len(data) + ("S" in flags) + ("F" in flags)
        self.last[side] = pkt
        name = flags or "no flags"
        label = label or f"{side}>{OTHER[side]} {name}{f' +{len(data)}B' if data else ''}"
        return self.ctx.send(side, pkt, label)

    def c(self, flags: str, data: bytes = b"", **kw) -> Step:
        return self.send("c", flags, data, **kw)

    def s(self, flags: str, data: bytes = b"", **kw) -> Step:
        return self.send("s", flags, data, **kw)

    def resend(self, side: str, label: str | None = None) -> Step:
        """The very same segment again (a retransmission)."""
        pkt = self.last[side]
        return self.ctx.send(side, pkt, label or f"{side}>{OTHER[side]} "
                                                 f"{pkt[TCP].sprintf('%TCP.flags%')} again")

    def handshake(self, copts=(), sopts=()) -> None:
        """SYN, SYN/ACK, ACK; `copts`/`sopts` are the SYN's and the SYN/ACK's
        options (window scale, SACK-permitted)."""
        self.c("S", opts=copts)
        self.s("SA", opts=sopts)
        self.c("A")

    def inner(self, side: str = "c", flags: str = "S") -> bytes:
        """L3 bytes of a segment as `side` would send it (for ICMP errors)."""
        pkt, _ = self.l3(side, flags, seq=self.nxt[side] - ("S" in flags))
        return bytes(pkt)


class UdpConv:
    def __init__(self, ctx: Ctx, v6: bool = False, cport: int | None = None,
                 sport: int | None = None) -> None:
        self.ctx = ctx
        self.v6 = v6
        self.port = {"c": cport or ctx.new_port(), "s": sport or ctx.new_port()}

    def l3(self, side: str, data: bytes = b"ctbpf-conf"):
        return (self.ctx.ip(side, self.v6)
                / UDP(sport=self.port[side], dport=self.port[OTHER[side]]) / Raw(data))

    def send(self, side: str, data: bytes = b"ctbpf-conf", label: str | None = None) -> Step:
        return self.ctx.send(side, self.l3(side, data), label or f"{side}>{OTHER[side]} udp")

    def c(self, **kw) -> Step:
        return self.send("c", **kw)

    def s(self, **kw) -> Step:
        return self.send("s", **kw)

    def inner(self, side: str = "c") -> bytes:
        return bytes(self.l3(side))
