"""UDP ends for the fast-path tests (stdlib only; run as a script inside a
lab namespace). Every loop is bounded by a count and a deadline.

    python3 fastpeer.py echo --port P [--family 4|6] --count N --timeout S
        echo N datagrams; print {"ttls": [...], "seqs": [...], "times": [...]}:
        the TTL / hop limit each arrived with, its sequence number (the
        datagram's first 8 bytes) and CLOCK_MONOTONIC at arrival.
    python3 fastpeer.py send --host H --port P --sport SP --count N
        [--interval S] [--ttl T] [--size B] [--df] [--wait S]
        send N datagrams from port SP (TTL T, B bytes, DF set with --df),
        numbered; print {"sent": N, "times": [...], "echoed": M,
        "errors": [[type, code, info], ...]}: the ICMP errors the kernel
        queued for the socket (IP_RECVERR), as the sender's kernel saw them.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

IP_RECVERR, IPV6_RECVERR = 11, 25
IP_RECVTTL, IP_TTL_CMSG = 12, 2
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_DO = 10, 23, 2
MSG_ERRQUEUE = 0x2000


def _family(host: str | None, family: int | None) -> int:
    if family is not None:
        return socket.AF_INET6 if family == 6 else socket.AF_INET
    return socket.AF_INET6 if host and ":" in host else socket.AF_INET


def echo(a) -> int:
    fam = _family(None, a.family)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", a.port))
    print(json.dumps({"listening": a.port}), flush=True)
    ttls, seqs, times = [], [], []
    deadline = time.monotonic() + a.timeout
    while len(ttls) < a.count and time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        data, anc, _, peer = s.recvmsg(65536, 256)
        times.append(time.monotonic())
        ttl = None
        for level, kind, raw in anc:
            if kind in (IP_TTL_CMSG, IPV6_HOPLIMIT) and len(raw) >= 4:
                ttl = struct.unpack("=i", raw[:4])[0]
        ttls.append(ttl)
        seqs.append(int.from_bytes(data[:8], "big") if len(data) >= 8 else -1)
        s.sendto(data[:64], peer)
    print(json.dumps({"ttls": ttls, "seqs": seqs, "times": times}), flush=True)
    return 0


def _errors(s: socket.socket, fam: int) -> list[list[int]]:
    out = []
    for _ in range(64):
        try:
            _, anc, _, _ = s.recvmsg(2048, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            continue
        for level, kind, raw in anc:
            if kind in (IP_RECVERR, IPV6_RECVERR) and len(raw) >= 16:
                _errno, _origin, etype, code, _pad, info, _data = struct.unpack("=IBBBBII",
                                                                               raw[:16])
                out.append([etype, code, info])
    return out


def send(a) -> int:
    fam = _family(a.host, None)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if a.ttl:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, a.ttl)
        if a.df:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_DO)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        if a.ttl:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, a.ttl)
        if a.df:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_DO)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", a.sport))
    s.connect((a.host, a.port))
    times, echoed, errors = [], 0, []
    for i in range(a.count):
        payload = i.to_bytes(8, "big") + b"f" * max(0, a.size - 8)
        times.append(time.monotonic())
        try:
            s.send(payload)
        except OSError:
            pass   # EMSGSIZE once the kernel learnt the path MTU; counted below
        errors += _errors(s, fam)
        end = time.monotonic() + a.interval
        while True:
            left = end - time.monotonic()
            r, _, _ = select.select([s], [], [], max(0.0, left))
            if r:
                try:
                    s.recv(65536, socket.MSG_DONTWAIT)
                    echoed += 1
                except OSError:
                    errors += _errors(s, fam)
            if left <= 0:
                break
    end = time.monotonic() + a.wait
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], max(0.0, end - time.monotonic()))
        if not r:
            break
        try:
            s.recv(65536, socket.MSG_DONTWAIT)
            echoed += 1
        except OSError:
            errors += _errors(s, fam)
    errors += _errors(s, fam)
    print(json.dumps({"sent": a.count, "times": times, "echoed": echoed, "errors": errors}),
          flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(func=echo)
    p = sub.add_parser("send")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--ttl", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--df", action="store_true")
    p.add_argument("--wait", type=float, default=0.5)
    p.set_defaults(func=send)
    a = ap.parse_args()
    if a.count > 100000 or getattr(a, "timeout", 0) > 120 or getattr(a, "interval", 0) > 5:
        print("fastpeer: --count, --timeout or --interval beyond its bound", file=sys.stderr)
        return 2
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
