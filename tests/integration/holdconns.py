"""Hold many TCP connections open through the lab and prove they still pass
data (stdlib only; run as a script inside a lab namespace).

    python3 holdconns.py server --port P [--family 4|6] [--timeout S]
    python3 holdconns.py client --host H --port P --count N [--interval S] [--timeout S]

The server echoes every byte on every connection it accepts. The client
opens --count connections, prints one JSON line
``{"event": "connected", "ports": [...]}`` and then, until --timeout or
``quit`` on stdin, sends one byte on every connection each --interval
seconds (0: never) and reads the echoes. Commands on stdin, one per line,
each answered by one JSON line on stdout:

    check     send a byte on every connection and wait (at most 15 s) for
              every echo: {"event": "check", "ok": N, "failed": [ports], "total": N}
    stats     {"event": "stats", "sent": N, "received": N, "dead": [ports]}
    quit      close everything: {"event": "bye", ...}, exit 0

Every loop is bounded by a deadline; nothing here can hang a test.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time

CHECK_TIMEOUT = 15.0
MAX_CONNS = 5000


def out(**fields) -> None:
    print(json.dumps(fields), flush=True)


def server(args) -> int:
    fam = socket.AF_INET6 if args.family == 6 else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", args.port))
    ls.listen(1024)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    deadline = time.monotonic() + args.timeout
    conns = 0
    out(event="listening", port=args.port)
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            if key.data is None:
                for _ in range(256):
                    try:
                        c, _addr = ls.accept()
                    except BlockingIOError:
                        break
                    if conns >= MAX_CONNS:
                        c.close()
                        continue
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, "conn")
                    conns += 1
                continue
            c = key.fileobj
            try:
                data = c.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(c)
                c.close()
                continue
            try:
                c.sendall(data)   # tiny echoes: never blocks for long
            except OSError:
                sel.unregister(c)
                c.close()
    return 0


class Client:
    def __init__(self, args) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.socks: dict[int, socket.socket] = {}     # local port -> socket
        self.pending: dict[int, int] = {}             # local port -> echo bytes still due
        self.dead: set[int] = set()
        self.sent = self.received = 0

    def connect(self) -> None:
        fam = socket.AF_INET6 if ":" in self.args.host else socket.AF_INET
        for _ in range(self.args.count):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(10.0)
            s.connect((self.args.host, self.args.port))
            s.setblocking(False)
            port = s.getsockname()[1]
            self.socks[port] = s
            self.pending[port] = 0
            self.sel.register(s, selectors.EVENT_READ, port)
        out(event="connected", ports=sorted(self.socks))

    def send_all(self, byte: bytes) -> None:
        for port, s in self.socks.items():
            if port in self.dead:
                continue
            try:
                if s.send(byte) == 1:
                    self.pending[port] += 1
                    self.sent += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.dead.add(port)

    def pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout=timeout):
            if key.data != "stdin":   # commands wait until the check is over
                self._recv(key)

    def check(self) -> None:
        self.send_all(b"c")
        deadline = time.monotonic() + CHECK_TIMEOUT
        while time.monotonic() < deadline:
            if all(self.pending[p] == 0 for p in self.socks if p not in self.dead):
                break
            self.pump(0.1)
        failed = sorted(p for p in self.socks if p in self.dead or self.pending[p])
        out(event="check", ok=len(self.socks) - len(failed), failed=failed, total=len(self.socks))

    def run(self) -> int:
        self.connect()
        self.sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
        deadline = time.monotonic() + self.args.timeout
        next_tick = time.monotonic() + self.args.interval if self.args.interval > 0 else None
        buf = b""
        while time.monotonic() < deadline:
            wait = 0.5 if next_tick is None else max(0.0, min(0.5, next_tick - time.monotonic()))
            for key, _ in self.sel.select(timeout=wait):
                if key.data != "stdin":
                    self._recv(key)
                    continue
                chunk = os.read(sys.stdin.fileno(), 4096)
                if not chunk:
                    return self.bye()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = line.decode().strip()
                    if cmd == "check":
                        self.check()
                    elif cmd == "stats":
                        out(event="stats", sent=self.sent, received=self.received,
                            dead=sorted(self.dead))
                    elif cmd == "quit":
                        return self.bye()
            if next_tick is not None and time.monotonic() >= next_tick:
                self.send_all(b"t")
                next_tick = time.monotonic() + self.args.interval
        return self.bye()

    def _recv(self, key) -> None:
        port = key.data
        try:
            data = key.fileobj.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.dead.add(port)
            self.sel.unregister(key.fileobj)
            return
        self.received += len(data)
        self.pending[port] = max(0, self.pending[port] - len(data))

    def bye(self) -> int:
        for s in self.socks.values():
            s.close()
        out(event="bye", sent=self.sent, received=self.received, dead=sorted(self.dead))
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--family", type=int, choices=(4, 6), default=4)
    s.add_argument("--timeout", type=float, default=120.0)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--count", type=int, default=10)
    c.add_argument("--interval", type=float, default=0.5)
    c.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.cmd == "server":
        return server(args)
    if not 1 <= args.count <= MAX_CONNS:
        ap.error(f"--count must be 1..{MAX_CONNS}")
    return Client(args).run()


if __name__ == "__main__":
    sys.exit(main())
