"""Flow filters shared by list and the table verbs: protocol, TCP state,
original-direction addresses and ports, as `conntrack -L` takes them."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from . import abi
from .errors import UsageError
from .table import Flow

_PROTO_ALIASES = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58,
                  "gre": 47, "sctp": 132, "esp": 50, "ah": 51}


def parse_proto(text: str) -> int:
    t = text.strip().lower()
    if t.isdigit() and 0 <= int(t) <= 255:
        return int(t)
    if t in _PROTO_ALIASES:
        return _PROTO_ALIASES[t]
    try:
        return socket.getprotobyname(t)
    except OSError:
        raise UsageError(f"unknown protocol {text!r}: use a name (tcp, udp, icmp, icmpv6) "
                         f"or a number 0-255") from None


def parse_state(text: str) -> str:
    name = text.strip().upper()
    if name == "LISTEN":  # the spec's name for SYN_SENT2
        name = "SYN_SENT2"
    if name not in abi.TCP_STATE_NAMES.values():
        raise UsageError(f"unknown TCP state {text!r}: use one of "
                         f"{', '.join(abi.TCP_STATE_NAMES.values())}")
    return name


def parse_addr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(f"bad address {text!r}: use an IPv4/IPv6 address or prefix") from None


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise UsageError(f"bad port {text!r}: use 0-65535")
    return int(text)


@dataclass(frozen=True)
class FlowFilter:
    proto: int | None = None
    state: str | None = None
    src: object = None
    dst: object = None
    sport: int | None = None
    dport: int | None = None

    @classmethod
    def from_args(cls, args) -> "FlowFilter":
        return cls(
            proto=parse_proto(args.proto) if args.proto else None,
            state=parse_state(args.state) if args.state else None,
            src=parse_addr(args.src) if args.src else None,
            dst=parse_addr(args.dst) if args.dst else None,
            sport=parse_port(args.sport) if args.sport else None,
            dport=parse_port(args.dport) if args.dport else None,
        )

    def matches(self, f: Flow) -> bool:
        if self.proto is not None and f.proto != self.proto:
            return False
        if self.state is not None and f.state != self.state:
            return False
        if self.src is not None and ipaddress.ip_address(f.orig.src) not in self.src:
            return False
        if self.dst is not None and ipaddress.ip_address(f.orig.dst) not in self.dst:
            return False
        if self.sport is not None and f.orig.sport != self.sport:
            return False
        if self.dport is not None and f.orig.dport != self.dport:
            return False
        return True
