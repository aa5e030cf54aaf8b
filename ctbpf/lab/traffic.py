"""Small, bounded traffic tools for the lab (stdlib only).

Run inside a namespace::

    python3 -m ctbpf.lab.traffic tcp-server --port P [--family 4|6] [--count N] [--hold S] [--timeout S]
    python3 -m ctbpf.lab.traffic tcp-client --host H --port P [--data BYTES] [--hold S]
                                           [--shutdown-first] [--bind-port P] [--timeout S]
    python3 -m ctbpf.lab.traffic udp-server --port P [--family 4|6] [--count N] [--timeout S]
    python3 -m ctbpf.lab.traffic udp-client --host H --port P [--count N] [--interval S]
                                           [--size BYTES] [--bind-port P] [--timeout S]

Each command prints one line of JSON on stdout when it succeeds and exits 0;
on failure it prints one line ``labtraffic <cmd>: error: <why>`` on stderr
and exits 1 (2 for bad arguments). Every loop is bounded by a count and by a
deadline, so nothing here can hang a test.

TCP semantics, which the conformance suite relies on:

* the server accepts ``--count`` connections (each served in its own thread),
  echoes what it reads until the peer half-closes, then keeps the connection
  open ``--hold`` seconds and closes it;
* the client connects, sends ``--data`` bytes, reads the echo back, keeps the
  connection open ``--hold`` seconds and closes it (so by default the client
  sends the first FIN). With ``--shutdown-first`` it half-closes right after
  sending and reads the echo until the server closes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
import time
from typing import Callable

# Upper bounds that keep every loop finite besides its deadline.
MAX_COUNT = 100_000          # connections or datagrams per run
MAX_SECONDS = 3600.0         # any --timeout, --hold or --interval
MAX_DATA = 64 * 1024 * 1024  # bytes per TCP connection
MAX_DGRAM = 65_000           # bytes per UDP datagram
MAX_IO_CALLS = 1_000_000     # recv/send calls on one socket
CHUNK = 65536


class ToolError(Exception):
    """A failure to report on one line and exit 1."""


# --------------------------------------------------------------------------
# helpers


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _family_of(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ToolError(f"cannot resolve {host!r}: {exc}") from exc
    return infos[0][0]


def _pattern(n: int) -> bytes:
    """n bytes of a repeating, position-dependent pattern (catches reordering)."""
    block = bytes(range(251))  # a prime length, so chunk borders show
    reps = n // len(block) + 1
    return (block * reps)[:n]


def _listen_socket(kind: int, family: int, port: int, bind: str | None) -> socket.socket:
    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    addr = bind or ("::" if family == 6 else "0.0.0.0")
    s = socket.socket(fam, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port))
    except OSError as exc:
        s.close()
        raise ToolError(f"cannot bind {addr} port {port}: {exc.strerror or exc}") from exc
    return s


def _client_socket(kind: int, host: str, bind_port: int) -> tuple[socket.socket, int]:
    fam = _family_of(host)
    s = socket.socket(fam, kind)
    if bind_port:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", bind_port))
        except OSError as exc:
            s.close()
            raise ToolError(f"cannot bind port {bind_port}: {exc.strerror or exc}") from exc
    return s, fam


def _endpoint(addr: tuple) -> tuple[str, int]:
    return addr[0], addr[1]


# --------------------------------------------------------------------------
# TCP


def _serve_tcp(conn: socket.socket, rec: dict, deadline: float, hold: float) -> None:
    """Echo until EOF (or the deadline), hold, close. Fills ``rec``."""
    try:
        for _ in range(MAX_IO_CALLS):
            left = _remaining(deadline)
            if left <= 0:
                rec["error"] = "timed out before the peer closed"
                break
            conn.settimeout(left)
            data = conn.recv(CHUNK)
            if not data:
                rec["peer_closed"] = True
                break
            conn.sendall(data)
            rec["bytes"] += len(data)
        else:
            rec["error"] = "too many reads"
        if hold > 0:
            time.sleep(hold)
    except OSError as exc:
        rec["error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        conn.close()
        rec["done"] = True


def tcp_server(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    accept_deadline = t0 + args.timeout
    ls = _listen_socket(socket.SOCK_STREAM, args.family, args.port, args.bind)
    conns: list[dict] = []
    threads: list[threading.Thread] = []
    try:
        ls.listen(min(max(args.count, 16), 1024))
        while len(conns) < args.count:
            left = _remaining(accept_deadline)
            if left <= 0:
                break
            ls.settimeout(left)
            try:
                conn, peer = ls.accept()
            except socket.timeout:
                break
            host, port = _endpoint(peer)
            rec = {"peer": host, "peer_port": port, "bytes": 0, "peer_closed": False,
                   "done": False}
            conns.append(rec)
            # Each connection may take the whole timeout, then its hold.
            th = threading.Thread(target=_serve_tcp, daemon=True,
                                  args=(conn, rec, time.monotonic() + args.timeout, args.hold))
            th.start()
            threads.append(th)
    finally:
        ls.close()
    join_deadline = time.monotonic() + args.timeout + args.hold + 1.0
    for th in threads:
        th.join(max(0.0, _remaining(join_deadline)))
    if len(conns) < args.count:
        raise ToolError(f"accepted {len(conns)} of {args.count} connections in {args.timeout:g}s")
    for rec in conns:
        if not rec.pop("done"):
            raise ToolError(f"connection from {rec['peer']} port {rec['peer_port']} did not finish")
        if "error" in rec:
            raise ToolError(f"connection from {rec['peer']} port {rec['peer_port']}: {rec['error']}")
    return {"cmd": "tcp-server", "family": args.family, "port": args.port,
            "accepted": len(conns), "bytes": sum(r["bytes"] for r in conns),
            "connections": conns, "elapsed_s": round(time.monotonic() - t0, 4)}


def _recv_upto(s: socket.socket, want: int | None, deadline: float) -> tuple[bytes, bool]:
    """Read ``want`` bytes (or until EOF if None); return (data, saw_eof)."""
    buf = bytearray()
    for _ in range(MAX_IO_CALLS):
        if want is not None and len(buf) >= want:
            return bytes(buf), False
        left = _remaining(deadline)
        if left <= 0:
            raise ToolError(f"timed out waiting for the echo ({len(buf)} bytes so far)")
        s.settimeout(left)
        data = s.recv(CHUNK)
        if not data:
            return bytes(buf), True
        buf += data
        if len(buf) > MAX_DATA:
            raise ToolError("peer sent more than expected")
    raise ToolError("too many reads")


def tcp_client(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    s, fam = _client_socket(socket.SOCK_STREAM, args.host, args.bind_port)
    try:
        s.settimeout(args.timeout)
        try:
            s.connect((args.host, args.port))
        except ConnectionRefusedError as exc:
            raise ToolError(f"connection refused by {args.host} port {args.port}") from exc
        except socket.timeout as exc:
            raise ToolError(f"connect to {args.host} port {args.port} timed out") from exc
        except OSError as exc:
            raise ToolError(f"connect to {args.host} port {args.port}: {exc.strerror or exc}") from exc
        connect_s = time.monotonic() - t0
        src, sport = _endpoint(s.getsockname())
        payload = _pattern(args.data)
        try:
            if payload:
                s.sendall(payload)
            if args.shutdown_first:
                s.shutdown(socket.SHUT_WR)
                echo, eof = _recv_upto(s, None, deadline)
            else:
                echo, eof = _recv_upto(s, len(payload), deadline)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ToolError(f"connection reset by {args.host} port {args.port}") from exc
        if echo != payload:
            raise ToolError(f"echo mismatch: sent {len(payload)} bytes, got {len(echo)} back"
                            + (" before EOF" if eof else ""))
        if args.hold > 0:
            time.sleep(args.hold)
    except OSError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    finally:
        s.close()
    return {"cmd": "tcp-client", "family": 6 if fam == socket.AF_INET6 else 4,
            "src": src, "sport": sport, "dst": args.host, "dport": args.port,
            "sent": len(payload), "received": len(echo),
            "shutdown_first": args.shutdown_first, "hold_s": args.hold,
            "connect_s": round(connect_s, 4), "elapsed_s": round(time.monotonic() - t0, 4)}


# --------------------------------------------------------------------------
# UDP


def udp_server(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    s = _listen_socket(socket.SOCK_DGRAM, args.family, args.port, args.bind)
    received = 0
    nbytes = 0
    peers: dict[str, int] = {}
    try:
        while received < args.count:
            left = _remaining(deadline)
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(CHUNK)
            except socket.timeout:
                break
            s.sendto(data, peer)
            received += 1
            nbytes += len(data)
            host, port = _endpoint(peer)
            key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            peers[key] = peers.get(key, 0) + 1
    except OSError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    finally:
        s.close()
    if received < args.count:
        raise ToolError(f"received {received} of {args.count} datagrams in {args.timeout:g}s")
    return {"cmd": "udp-server", "family": args.family, "port": args.port,
            "received": received, "bytes": nbytes, "peers": peers,
            "elapsed_s": round(time.monotonic() - t0, 4)}


def udp_client(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    s, fam = _client_socket(socket.SOCK_DGRAM, args.host, args.bind_port)
    rtts: list[float] = []
    sent = 0
    try:
        # connect(): replies from elsewhere are filtered out, and an ICMP
        # port unreachable surfaces as ConnectionRefusedError.
        s.connect((args.host, args.port))
        src, sport = _endpoint(s.getsockname())
        for seq in range(args.count):
            if seq and args.interval > 0:
                time.sleep(args.interval)
            head = f"{seq:08d}".encode()
            payload = head + _pattern(args.size - len(head))
            sent_at = time.monotonic()
            try:
                s.send(payload)
            except ConnectionRefusedError as exc:
                raise ToolError(f"port {args.port} unreachable on {args.host}") from exc
            sent += 1
            deadline = sent_at + args.timeout
            for _ in range(MAX_IO_CALLS):  # skip late echoes of earlier datagrams
                left = _remaining(deadline)
                if left <= 0:
                    raise ToolError(f"no echo for datagram {seq} within {args.timeout:g}s"
                                    f" ({len(rtts)} of {sent} answered)")
                s.settimeout(left)
                try:
                    data = s.recv(CHUNK)
                except socket.timeout:
                    continue
                except ConnectionRefusedError as exc:
                    raise ToolError(f"port {args.port} unreachable on {args.host}") from exc
                if data == payload:
                    rtts.append(time.monotonic() - sent_at)
                    break
    except OSError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    finally:
        s.close()
    return {"cmd": "udp-client", "family": 6 if fam == socket.AF_INET6 else 4,
            "src": src, "sport": sport, "dst": args.host, "dport": args.port,
            "sent": sent, "received": len(rtts),
            "rtt_ms_max": round(max(rtts) * 1000, 3) if rtts else None,
            "elapsed_s": round(time.monotonic() - t0, 4)}


# --------------------------------------------------------------------------
# command line


def _bounded(kind: Callable[[str], float | int], lo: float, hi: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is out of range {lo:g}..{hi:g}")
        return value
    return parse


PORT = _bounded(int, 1, 65535)
BIND_PORT = _bounded(int, 0, 65535)
COUNT = _bounded(int, 1, MAX_COUNT)
SECONDS = _bounded(float, 0, MAX_SECONDS)
POSITIVE_SECONDS = _bounded(float, 0.001, MAX_SECONDS)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 -m ctbpf.lab.traffic",
                                 description="Bounded TCP/UDP echo tools for the ctbpf lab.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("tcp-server", help="accept N connections and echo")
    p.add_argument("--port", type=PORT, required=True)
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--bind", help="address to bind (default: any of the family)")
    p.add_argument("--count", type=COUNT, default=1, help="connections to accept (default 1)")
    p.add_argument("--hold", type=SECONDS, default=0.0,
                   help="seconds to keep each connection open after the peer half-closed")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=30.0,
                   help="seconds to wait for the connections, and for each to finish (default 30)")
    p.set_defaults(func=tcp_server)

    p = sub.add_parser("tcp-client", help="connect, send, check the echo, close")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=PORT, required=True)
    p.add_argument("--data", type=_bounded(int, 0, MAX_DATA), default=64,
                   help="bytes to send (default 64)")
    p.add_argument("--hold", type=SECONDS, default=0.0,
                   help="seconds to keep the connection open after the echo")
    p.add_argument("--shutdown-first", action="store_true",
                   help="half-close right after sending, read the echo until the server closes")
    p.add_argument("--bind-port", type=BIND_PORT, default=0, help="local port (default: any)")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=10.0,
                   help="seconds for connect plus echo (default 10)")
    p.set_defaults(func=tcp_client)

    p = sub.add_parser("udp-server", help="echo N datagrams")
    p.add_argument("--port", type=PORT, required=True)
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--bind", help="address to bind (default: any of the family)")
    p.add_argument("--count", type=COUNT, default=1, help="datagrams to echo (default 1)")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=30.0,
                   help="seconds to wait for them (default 30)")
    p.set_defaults(func=udp_server)

    p = sub.add_parser("udp-client", help="send N datagrams, wait for each echo")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=PORT, required=True)
    p.add_argument("--count", type=COUNT, default=1, help="datagrams (default 1)")
    p.add_argument("--interval", type=SECONDS, default=0.0, help="seconds between datagrams")
    p.add_argument("--size", type=_bounded(int, 8, MAX_DGRAM), default=64,
                   help="bytes per datagram (default 64)")
    p.add_argument("--bind-port", type=BIND_PORT, default=0, help="local port (default: any)")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=2.0,
                   help="seconds to wait for each echo (default 2)")
    p.set_defaults(func=udp_client)
    return ap


def parse_result(stdout: str) -> dict:
    """The JSON result line a successful command printed (its last line)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no result line")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except ToolError as exc:
        print(f"labtraffic {args.cmd}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"labtraffic {args.cmd}: error: interrupted", file=sys.stderr, flush=True)
        return 130
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
