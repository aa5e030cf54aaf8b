"""Blind-injection tools for the lab (stdlib only): a bulk TCP transfer, an
idle echo connection, and an attacker that knows a connection's addresses
and ports and sprays it with out-of-window segments.

Run inside a namespace::

    python3 -m ctbpf.lab.inject bulk-server --port P --bytes N [--timeout S]
    python3 -m ctbpf.lab.inject bulk-client --host H --port P --bytes N --bind-port SP [--timeout S]
    python3 -m ctbpf.lab.inject echo-server --port P [--timeout S]
    python3 -m ctbpf.lab.inject echo-client --host H --port P --bind-port SP [--timeout S]
    python3 -m ctbpf.lab.inject attack --src A --dst B --sport SP --dport DP --count N
                                       [--seconds S] [--learn-timeout S] [--ttl T] [--iface eth0]

bulk: the server sends N bytes of a fixed pseudo-random stream to the one
client it accepts, then closes (its last line has ``t_fin``, when it sent
its FIN); the client counts them and checks their CRC-32 against the
stream's. The client prints one JSON line:
``{"received": N, "intact": true, "t_start": ..., "t_end": ..., "seconds": ...,
"mb_per_s": ...}`` (t_* are CLOCK_MONOTONIC, which every namespace shares).

echo: the server echoes what it reads on the one connection it accepts. The
client prints ``{"event": "connected", "sport": SP}``, then answers each stdin
line ``ping N`` with ``{"event": "ping", "ok": bool, ...}``: N bytes sent,
N bytes echoed back within 3 s (data both ways); ``quit`` or EOF ends it.

attack: sniffs eth0 (AF_PACKET) until it has seen the connection's packets
in both directions (bounded by --learn-timeout), so that it knows the live
sequence numbers: ``cseq``, where the client's next byte goes, and ``sseq``,
the server's. Then it sends --count TCP segments from the client's address
and port with a raw socket (IP TTL --ttl, so that an endpoint can count what
reached it), cycling through four kinds, each INVALID for a window tracker
(the kernel's tcp_in_window and RST rules):

    rst_over   RST,     seq = cseq + F + r      beyond the receiver's window
    rst_under  RST+ACK, seq = cseq - F - r      below the last ack ("invalid rst")
    data_over  PSH+ACK + 64 bytes, seq = cseq + F + r, ack = sseq
    ack_over   ACK, seq = cseq (in window), ack = sseq + F + r   acks unsent data

with F = 3 * 2**29 and r uniform in [0, 2**28): between 3/8 and 7/16 of the
sequence space away from the live numbers (on the "after" side of the
serial-number half for *_over, the "before" side for rst_under), so that
they stay so for a transfer of up to about 1.5 GB after they were learnt.
It prints ``{"event": "learned", ...}`` then ``{"event": "done", "sent": N,
"kinds": {...}, "t_first": ..., "t_last": ...}``. Every loop is bounded by a
count and a deadline.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import sys
import time
import zlib

CHUNK = 256 * 1024

#: The crafted segments leave the client with this IP TTL; the router makes
#: it one less, which is how the server's counter (WATCH) tells them from
#: the connection's own segments.
TTL = 77

#: The spec's firewall as a ctbpf config (as in tests/integration/
#: test_enforce.py): the client side opens, the server side only answers,
#: INVALID is dropped.
FIREWALL = """\
mode = "enforce"

[policy.in.cli0]
accept = ["new", "established", "related"]
new_requires_syn = true
default = "drop"

[policy.in.srv0]
accept = ["established", "related"]
default = "drop"
"""

#: The server namespace's nft table: counts the crafted segments that got through.
WATCH = f"""\
table ip injwatch {{
\tchain pre {{
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tip ttl {TTL - 1} meta l4proto tcp counter
\t}}
}}
"""


def kernel_ruleset() -> str:
    """FIREWALL for the kernel's nf_conntrack: the nftables ruleset `ctbpf
    policy --explain` prints for it."""
    from ctbpf.agent.configfile import parse_text  # noqa: PLC0415 - the tools need only stdlib
    from ctbpf.policy.model import PolicySet  # noqa: PLC0415
    from ctbpf.policy.nftables import to_nft  # noqa: PLC0415

    cfg = parse_text(FIREWALL, "firewall.toml")
    return to_nft(PolicySet(cfg.mode, cfg.policies))
#: The bulk stream: this block over and over (a prime-ish length, so chunk
#: borders fall everywhere in it).
BLOCK_LEN = (1 << 20) + 13
MAX_BYTES = 4 << 30
MAX_COUNT = 1_000_000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
KINDS = ("rst_over", "rst_under", "data_over", "ack_over")
FAR = 3 << 29
SPREAD = 1 << 28


def out(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _block() -> bytes:
    return random.Random(0x1CEB00DA).randbytes(BLOCK_LEN)


def stream_crc(n: int) -> int:
    """CRC-32 of the first n bytes of the bulk stream."""
    block = _block()
    crc, left = 0, n
    while left > 0:
        take = min(left, BLOCK_LEN)
        crc = zlib.crc32(block[:take], crc)
        left -= take
    return crc


def _listen(port: int, timeout: float) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    srv.settimeout(timeout)
    out(event="listening", port=port)
    return srv


# --------------------------------------------------------------------------
# bulk


def bulk_server(a) -> int:
    deadline = time.monotonic() + a.timeout
    srv = _listen(a.port, a.timeout)
    c, _ = srv.accept()
    srv.close()
    block = _block()
    twice = memoryview(block + block)
    sent = 0
    c.settimeout(max(0.1, deadline - time.monotonic()))
    t0 = time.monotonic()
    try:
        while sent < a.bytes and time.monotonic() < deadline:
            off = sent % BLOCK_LEN
            n = c.send(twice[off:off + min(CHUNK, a.bytes - sent)])
            sent += n
        t_fin = time.monotonic()
        c.shutdown(socket.SHUT_WR)
        c.recv(1)   # the client's close
    except OSError as e:
        out(sent=sent, error=str(e))
        return 1
    finally:
        c.close()
    out(sent=sent, seconds=round(time.monotonic() - t0, 4), t_fin=t_fin)
    return 0 if sent == a.bytes else 1


def _connect(host: str, port: int, bind_port: int) -> socket.socket:
    """A client connection from bind_port (0: any), within 5 s."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", bind_port))
    s.settimeout(5.0)
    s.connect((host, port))
    return s


def bulk_client(a) -> int:
    expected = stream_crc(a.bytes)
    deadline = time.monotonic() + a.timeout
    s = _connect(a.host, a.port, a.bind_port)
    t_start = time.monotonic()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got, crc, error = 0, 0, None
    try:
        while got <= a.bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                error = "timeout"
                break
            s.settimeout(left)
            n = s.recv_into(buf)
            if n == 0:
                break
            crc = zlib.crc32(view[:n], crc)
            got += n
    except OSError as e:
        error = str(e)
    t_end = time.monotonic()
    s.close()
    secs = max(t_end - t_start, 1e-9)
    out(received=got, intact=(got == a.bytes and crc == expected), crc=crc, expected=expected,
        t_start=t_start, t_end=t_end, seconds=round(secs, 4),
        mb_per_s=round(got / secs / 1e6, 1), error=error)
    return 0 if error is None and got == a.bytes and crc == expected else 1


# --------------------------------------------------------------------------
# echo


def echo_server(a) -> int:
    deadline = time.monotonic() + a.timeout
    srv = _listen(a.port, a.timeout)
    c, _ = srv.accept()
    srv.close()
    n = 0
    try:
        for _ in range(1_000_000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            c.settimeout(left)
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)
            n += len(b)
    except OSError as e:
        out(echoed=n, error=str(e))
        return 1
    finally:
        c.close()
    out(echoed=n)
    return 0


def echo_client(a) -> int:
    deadline = time.monotonic() + a.timeout
    s = _connect(a.host, a.port, a.bind_port)
    out(event="connected", sport=s.getsockname()[1])
    pings = 0
    while time.monotonic() < deadline and pings < 10_000:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = sys.stdin.readline().split()
        if not line or line[0] == "quit":
            break
        n = int(line[1]) if len(line) > 1 else 1000
        pings += 1
        data = bytes((pings + i) & 0xFF for i in range(n))
        try:
            s.settimeout(3.0)
            s.sendall(data)
            back = b""
            while len(back) < n:
                b = s.recv(n - len(back))
                if not b:
                    raise OSError("connection closed by the peer")
                back += b
            out(event="ping", ok=back == data, bytes=n)
        except OSError as e:
            out(event="ping", ok=False, bytes=n, error=f"{type(e).__name__}: {e}")
    s.close()
    return 0


# --------------------------------------------------------------------------
# the attacker


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"", window: int = 502) -> bytes:
    """A TCP header (no options) and payload with a correct checksum."""
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, window, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(hdr) + len(payload))
    c = inet_checksum(pseudo + hdr + payload)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload


FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def crafted(kind: str, rng: random.Random, cseq: int, sseq: int) -> tuple[int, int, int, bytes]:
    """(seq, ack, flags, payload) of one crafted segment of this kind."""
    r = rng.randrange(SPREAD)
    if kind == "rst_over":
        return cseq + FAR + r, 0, RST, b""
    if kind == "rst_under":
        return cseq - FAR - r, sseq, RST | ACK, b""
    if kind == "data_over":
        return cseq + FAR + r, sseq, PSH | ACK, bytes(64)
    return cseq, sseq + FAR + r, ACK, b""


def learn(a) -> dict | None:
    """Sniff the connection until both directions were seen: the live
    sequence numbers, or None at the deadline."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.iface, 0))
    s.setblocking(False)
    out(event="ready")
    src, dst = socket.inet_aton(a.src), socket.inet_aton(a.dst)
    cseq = sseq = cack = None
    deadline = time.monotonic() + a.learn_timeout
    try:
        while time.monotonic() < deadline and (cseq is None or sseq is None):
            ready, _, _ = select.select([s], [], [], 0.2)
            if not ready:
                continue
            for _ in range(10_000):
                try:
                    frame, addr = s.recvfrom(256)
                except BlockingIOError:
                    break
                if (len(frame) < 14 + 40 or frame[12:14] != b"\x08\x00"
                        or frame[14 + 9] != socket.IPPROTO_TCP):
                    continue
                ip = 14
                ihl = (frame[ip] & 0x0F) * 4
                tot = struct.unpack_from("!H", frame, ip + 2)[0]
                l4 = ip + ihl
                sp, dp, seq, ack = struct.unpack_from("!HHII", frame, l4)
                doff = (frame[l4 + 12] >> 4) * 4
                flags = frame[l4 + 13]
                end = seq + max(0, tot - ihl - doff) + (1 if flags & (SYN | FIN) else 0)
                s_ip, d_ip = frame[ip + 12:ip + 16], frame[ip + 16:ip + 20]
                if (s_ip, d_ip, sp, dp) == (src, dst, a.sport, a.dport):
                    cseq, cack = end & 0xFFFFFFFF, ack
                elif (s_ip, d_ip, sp, dp) == (dst, src, a.dport, a.sport):
                    sseq = end & 0xFFFFFFFF
    finally:
        s.close()
    if cseq is None or sseq is None:
        return None
    return {"cseq": cseq, "sseq": sseq, "cack": cack}


def attack(a) -> int:
    live = learn(a)
    if live is None:
        out(event="done", sent=0, error=f"saw no packets of the connection in both "
                                       f"directions within {a.learn_timeout:g}s")
        return 1
    out(event="learned", **live)
    rng = random.Random(a.seed)
    src, dst = socket.inet_aton(a.src), socket.inet_aton(a.dst)
    kinds = {k: 0 for k in KINDS}
    pkts = []
    for i in range(a.count):
        kind = KINDS[i % len(KINDS)]
        seq, ack, flags, payload = crafted(kind, rng, live["cseq"], live["sseq"])
        pkts.append(segment(src, dst, a.sport, a.dport, seq, ack, flags, payload))
        kinds[kind] += 1
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, a.ttl)
    raw.bind((a.src, 0))
    sent, retries = 0, 0
    t_first = time.monotonic()
    deadline = t_first + a.seconds + 10.0
    burst = 50
    for i, pkt in enumerate(pkts):
        # Spread the segments evenly over --seconds (bursts of 50).
        if a.seconds > 0 and i % burst == 0:
            due = t_first + a.seconds * i / len(pkts)
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        for _ in range(1000):
            try:
                raw.sendto(pkt, (a.dst, 0))
                sent += 1
                break
            except (BlockingIOError, OSError) as e:   # ENOBUFS: the qdisc is full
                if getattr(e, "errno", None) not in (105, 11):
                    raise
                retries += 1
                time.sleep(0.0005)
        if time.monotonic() > deadline:
            break
    t_last = time.monotonic()
    raw.close()
    out(event="done", sent=sent, kinds=kinds, retries=retries, t_first=t_first, t_last=t_last,
        ttl=a.ttl, **live)
    return 0 if sent == a.count else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("bulk-server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("bulk-client")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--bind-port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("echo-server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("echo-client")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind-port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("attack")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--sport", type=int, required=True)
    p.add_argument("--dport", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, default=0.0,
                   help="spread the segments over this long (0: as fast as possible)")
    p.add_argument("--learn-timeout", type=float, default=10.0)
    p.add_argument("--ttl", type=int, default=TTL)
    p.add_argument("--iface", default="eth0")
    p.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    for name in ("bytes", "count"):
        v = getattr(a, name, None)
        if v is not None and not 0 < v <= (MAX_BYTES if name == "bytes" else MAX_COUNT):
            ap.error(f"--{name} out of range")
    for name in ("timeout", "seconds", "learn_timeout"):
        v = getattr(a, name, None)
        if v is not None and not 0 <= v <= 3600:
            ap.error(f"--{name.replace('_', '-')} out of range")
    return {"bulk-server": bulk_server, "bulk-client": bulk_client, "echo-server": echo_server,
            "echo-client": echo_client, "attack": attack}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
