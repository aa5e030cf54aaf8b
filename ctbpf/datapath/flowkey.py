"""Build the datapath's two-ended flow key from a tuple, exactly as
bpf/flow.h does, so the control plane can find a flow by its tuple."""

from __future__ import annotations

import ipaddress
import struct

from ctbpf import abi


def _words(addr: str) -> tuple[int, list[int]]:
    ip = ipaddress.ip_address(addr)
    raw = ip.packed + bytes(16 - len(ip.packed))
    # the datapath compares the words as host-order integers of the wire bytes
    return (abi.const("CT_FAMILY_IPV4") if ip.version == 4 else abi.const("CT_FAMILY_IPV6"),
            list(struct.unpack("<4I", raw)))


def _port(port: int) -> int:
    """A port as the datapath holds it: network order read as host order."""
    return struct.unpack("<H", struct.pack(">H", port))[0]


def key_from_tuple(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0,
                   icmp_query: int = 0):
    """(CtKey, src_is_hi) for a packet from src to dst. For ICMP queries pass
    the requester's port as the id and the responder's as its complement
    (id ^ 0xffff), as bpf/parse.h does."""
    fam, s = _words(src)
    fam_d, d = _words(dst)
    if fam != fam_d:
        raise ValueError("source and destination are of different families")
    sp, dp = _port(sport), _port(dport)
    src_is_hi = not ((s, sp) <= (d, dp))
    lo, lop, hi, hip = (d, dp, s, sp) if src_is_hi else (s, sp, d, dp)
    key = abi.CtKey()
    key.addr_lo[:] = lo
    key.addr_hi[:] = hi
    key.port_lo, key.port_hi = lop, hip
    key.proto, key.family, key.icmp_query = proto, fam, icmp_query
    return key, src_is_hi
