"""Flow filters shared by list and the table verbs: protocol, TCP state,
original-direction addresses and ports, as `conntrack -L` takes them."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ctbpf import abi
from ctbpf.datapath.table import Flow
from ctbpf.datapath.tableops import ICMP_PROTOS, TupleSpec
from ctbpf.errors import UsageError

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

    def everything(self) -> bool:
        """True for the empty filter: every flow matches."""
        return self == FlowFilter()

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

    def mask(self, chunk):
        """matches() of every row of a tablestream.Chunk, as a numpy bool array."""
        import numpy as np  # noqa: PLC0415
        from ctbpf.datapath.tablestream import PORTS, TCP  # noqa: PLC0415

        keep = np.ones(len(chunk), bool)
        if self.proto is not None:
            keep &= chunk.proto == self.proto
        if self.state is not None:
            value = next(v for v, n in abi.TCP_STATE_NAMES.items() if n == self.state)
            keep &= (chunk.proto == TCP) & (chunk.state == value)
        for net, raw in ((self.src, chunk.src_raw), (self.dst, chunk.dst_raw)):
            if net is not None:
                keep &= _in_network(net, chunk.family, raw)
        for port, values in ((self.sport, chunk.sport), (self.dport, chunk.dport)):
            if port is not None:
                keep &= (chunk.kind == PORTS) & (values == port)
        return keep


def _in_network(net, family, raw):
    """Rows whose address ((n, 16) network-order bytes) is in net."""
    import numpy as np  # noqa: PLC0415

    size = 4 if net.version == 4 else 16
    want = abi.const("CT_FAMILY_IPV4" if net.version == 4 else "CT_FAMILY_IPV6")
    mask = np.frombuffer(net.netmask.packed, np.uint8)
    base = np.frombuffer(net.network_address.packed, np.uint8)
    return (family == want) & ((raw[:, :size] & mask) == base).all(axis=1)


def tuple_from_args(args) -> TupleSpec:
    """The original tuple given on the command line; UsageError (exit 2)
    naming what is missing or wrong."""

    if not args.proto:
        raise UsageError("a tuple needs -p/--proto (tcp, udp, icmp, icmpv6, or a number)")
    proto = parse_proto(args.proto)
    if not (args.src and args.dst):
        raise UsageError("a tuple needs --src and --dst (the original direction's addresses)")
    src, dst = parse_addr(args.src), parse_addr(args.dst)
    for given, net in ((args.src, src), (args.dst, dst)):
        if net.num_addresses != 1 or "/" in given:
            raise UsageError(f"--src/--dst {given!r}: a tuple takes one address, not a prefix")
    if src.version != dst.version:
        raise UsageError(f"--src {args.src} and --dst {args.dst} are of different families")
    icmp = [getattr(args, a, None) for a in ("icmp_type", "icmp_code", "icmp_id")]
    if proto in ICMP_PROTOS:
        if args.sport or args.dport:
            raise UsageError("ICMP has no ports: use --icmp-type, --icmp-code and --icmp-id")
        if icmp[0] is None or icmp[2] is None:
            raise UsageError("an ICMP tuple needs --icmp-type and --icmp-id (and --icmp-code, "
                             "default 0)")
        qtype, code, ident = (_parse_int(v, name, hi) for v, name, hi in
                              ((icmp[0], "--icmp-type", 255), (icmp[1] or "0", "--icmp-code", 255),
                               (icmp[2], "--icmp-id", 65535)))
        if qtype not in ICMP_PROTOS[proto]:
            names = ", ".join(map(str, ICMP_PROTOS[proto]))
            raise UsageError(f"--icmp-type {qtype}: the original direction of an ICMP flow is "
                             f"a query request (type {names})")
        return TupleSpec(proto, str(src.network_address), str(dst.network_address),
                         icmp_type=qtype, icmp_code=code, icmp_id=ident)
    if any(v is not None for v in icmp):
        raise UsageError("--icmp-type/--icmp-code/--icmp-id go with -p icmp or -p icmpv6")
    sport = dport = 0
    if proto in (6, 17):
        if not (args.sport and args.dport):
            raise UsageError("a TCP/UDP tuple needs --sport and --dport")
        sport, dport = parse_port(args.sport), parse_port(args.dport)
    elif args.sport or args.dport:
        raise UsageError(f"protocol {proto} has no ports here: leave out --sport/--dport")
    return TupleSpec(proto, str(src.network_address), str(dst.network_address), sport, dport)


def _parse_int(text: str, name: str, hi: int) -> int:
    if not str(text).isdigit() or int(text) > hi:
        raise UsageError(f"{name} {text!r}: use 0-{hi}")
    return int(text)
