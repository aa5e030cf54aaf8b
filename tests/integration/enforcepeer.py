"""Endpoint tools for the enforce-mode tests, run as a script inside a lab
namespace (stdlib only).

    python3 enforcepeer.py sniff [--iface eth0] [--seconds S]
        {"event": "ready"}, then every IP frame seen on the interface (both
        directions) until a line on stdin, EOF or S seconds:
        {"event": "frames", "frames": [{"dir": "in"|"out", "family": 4|6,
        "proto": N, "src": A, "dst": B, "sport": P, "dport": Q, "flags": F,
        "type": T, "code": C}, ...]} (ports and flags for TCP/UDP, type and
        code for ICMP)
    python3 enforcepeer.py listen --family 4|6 --port P [--udp] [--seconds S]
        {"event": "ready"}, then until a line on stdin, EOF or S seconds it
        accepts TCP connections (or reads UDP datagrams) on P:
        {"event": "done", "accepted": N, "datagrams": N}
    python3 enforcepeer.py connect --host H --port P [--timeout S]
        one TCP connect: {"result": "connected"|"timeout"|"refused"|"error", ...}
    python3 enforcepeer.py udp-send --host H --port P [--count N]
        N datagrams, no answer expected: {"sent": N}
    python3 enforcepeer.py udp-probe --host H --port P [--timeout S]
        one datagram on a connected UDP socket, then wait for an answer:
        {"result": "answer"|"refused"|"timeout"} (refused: an ICMP port
        unreachable came back)
    python3 enforcepeer.py craft --src A --dst B SPEC ...
        one TCP segment per SPEC "SPORT:DPORT:FLAGS" (FLAGS: letters of
        F S R P A U, e.g. SF, R, A), built here with a correct checksum and
        sent through the kernel's routing with a raw socket: {"sent": N}

Every wait is bounded; nothing here can hang a test.
"""

from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import struct
import sys
import time

from ctbpf.lab.inject import inet_checksum

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def out(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _stdin_said(timeout: float) -> bool:
    """True if stdin has a line or hit EOF within timeout."""
    ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout))
    return bool(ready)


def parse_frame(frame: bytes) -> dict | None:
    if len(frame) < 14:
        return None
    etype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    if etype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        d = {"family": 4, "proto": frame[off + 9],
             "src": socket.inet_ntop(socket.AF_INET, frame[off + 12:off + 16]),
             "dst": socket.inet_ntop(socket.AF_INET, frame[off + 16:off + 20])}
        l4 = off + ihl
    elif etype == 0x86DD and len(frame) >= off + 40:
        d = {"family": 6, "proto": frame[off + 6],
             "src": socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24]),
             "dst": socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40])}
        l4 = off + 40
    else:
        return None
    proto = d["proto"]
    if proto in (6, 17) and len(frame) >= l4 + 4:
        d["sport"], d["dport"] = struct.unpack_from("!HH", frame, l4)
        if proto == 6 and len(frame) >= l4 + 14:
            d["flags"] = frame[l4 + 13]
    elif proto in (1, 58) and len(frame) >= l4 + 2:
        d["type"], d["code"] = frame[l4], frame[l4 + 1]
    return d


def sniff(args) -> int:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((args.iface, 0))
    s.setblocking(False)
    frames = []
    out(event="ready")
    deadline = time.monotonic() + args.seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([s, sys.stdin], [], [], min(left, 1.0))
        if sys.stdin in ready:
            break
        if s in ready:
            for _ in range(1000):
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                d = parse_frame(data)
                if d is not None:
                    d["dir"] = "out" if addr[2] == PACKET_OUTGOING else "in"
                    frames.append(d)
    # what was queued before the stop
    while True:
        try:
            data, addr = s.recvfrom(65535)
        except BlockingIOError:
            break
        d = parse_frame(data)
        if d is not None:
            d["dir"] = "out" if addr[2] == PACKET_OUTGOING else "in"
            frames.append(d)
    out(event="frames", frames=frames)
    return 0


def listen(args) -> int:
    fam = socket.AF_INET6 if args.family == 6 else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM if args.udp else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if args.family == 6 else "0.0.0.0", args.port))
    if not args.udp:
        s.listen(16)
    s.setblocking(False)
    accepted = datagrams = 0
    out(event="ready")
    deadline = time.monotonic() + args.seconds
    def take() -> int:
        """Accept or read what is pending now; how many."""
        n = 0
        for _ in range(1000):
            try:
                if args.udp:
                    s.recvfrom(65535)
                else:
                    s.accept()[0].close()
            except BlockingIOError:
                break
            n += 1
        return n

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([s, sys.stdin], [], [], min(left, 1.0))
        if s in ready:
            got = take()
            accepted, datagrams = (accepted, datagrams + got) if args.udp else \
                (accepted + got, datagrams)
        if sys.stdin in ready:
            break
    got = take()   # what came before the stop
    accepted, datagrams = (accepted, datagrams + got) if args.udp else (accepted + got, datagrams)
    out(event="done", accepted=accepted, datagrams=datagrams)
    return 0


def connect(args) -> int:
    fam = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(args.timeout)
    try:
        s.connect((args.host, args.port))
    except socket.timeout:
        out(result="timeout")
    except ConnectionRefusedError:
        out(result="refused")
    except OSError as e:
        out(result="error", errno=e.errno, error=str(e))
    else:
        out(result="connected", sport=s.getsockname()[1])
    finally:
        s.close()
    return 0


def udp_send(args) -> int:
    fam = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(args.count):
        s.sendto(b"x%d" % i, (args.host, args.port))
    out(sent=args.count, sport=s.getsockname()[1])
    return 0


def udp_probe(args) -> int:
    fam = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.connect((args.host, args.port))
    s.settimeout(args.timeout)
    sport = s.getsockname()[1]
    s.send(b"probe")
    try:
        s.recv(65535)
    except socket.timeout:
        out(result="timeout", sport=sport)
    except ConnectionRefusedError:
        out(result="refused", sport=sport)
    except OSError as e:
        out(result="error" if e.errno != errno.ECONNREFUSED else "refused", sport=sport,
            error=str(e))
    else:
        out(result="answer", sport=sport)
    return 0


FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


def tcp_segment(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    """A 20-byte TCP header with a correct checksum over the pseudo-header."""
    bits = 0
    for letter in flags:
        bits |= FLAG_BITS[letter]
    seq = 0x1000 + sport
    ack = 0x2000 if bits & 0x10 else 0
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, bits, 1024, 0, 0)
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    a, b = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    if fam == socket.AF_INET:
        pseudo = a + b + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(hdr))
    else:
        pseudo = a + b + struct.pack("!I3xB", len(hdr), socket.IPPROTO_TCP)
    return hdr[:16] + struct.pack("!H", inet_checksum(pseudo + hdr)) + hdr[18:]


def craft(args) -> int:
    """Crafted TCP segments through a raw socket: the kernel adds the IP
    header and routes them, the TCP header is exactly what SPEC says."""
    fam = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
    s.bind((args.src, 0))
    for spec in args.specs:
        sport, dport, flags = spec.split(":")
        s.sendto(tcp_segment(args.src, args.dst, int(sport), int(dport), flags),
                 (args.dst, 0))
    out(sent=len(args.specs))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sniff")
    p.add_argument("--iface", default="eth0")
    p.add_argument("--seconds", type=float, default=30.0)
    p = sub.add_parser("listen")
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--seconds", type=float, default=30.0)
    p = sub.add_parser("connect")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("udp-send")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p = sub.add_parser("udp-probe")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("craft")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("specs", nargs="+")
    args = ap.parse_args(argv)
    return {"sniff": sniff, "listen": listen, "connect": connect, "udp-send": udp_send,
            "udp-probe": udp_probe, "craft": craft}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
