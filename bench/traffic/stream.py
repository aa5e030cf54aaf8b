"""A bounded bulk TCP stream for the flood benchmark (stdlib only).

    stream.py sink   --port P --conns K --timeout S
    stream.py source --host H --port P --conns K --seconds S [--max-bytes N]

The sink accepts K connections and reads each until EOF (or the timeout);
the source opens K connections and writes to each for S seconds (at most
N bytes each), then closes. Each prints one JSON line: bytes per
connection, seconds, errors.
"""

import argparse
import json
import socket
import sys
import threading
import time

CHUNK = 65536


def sink(a) -> dict:
    deadline = time.monotonic() + a.timeout
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
    srv.listen(a.conns)
    print("listening", flush=True)
    got, errors, spans = [], [], []
    lock = threading.Lock()

    def serve(c):
        n, first, last = 0, None, None
        try:
            c.settimeout(max(0.1, deadline - time.monotonic()))
            while time.monotonic() < deadline:
                b = c.recv(CHUNK)
                if not b:
                    break
                now = time.monotonic()
                first = first or now
                last = now
                n += len(b)
        except OSError as e:
            with lock:
                errors.append(str(e))
        finally:
            c.close()
            with lock:
                got.append(n)
                if first is not None:
                    spans.append((first, last))

    threads = []
    srv.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        for _ in range(a.conns):
            c, _ = srv.accept()
            t = threading.Thread(target=serve, args=(c,), daemon=True)
            t.start()
            threads.append(t)
    except OSError as e:
        errors.append(f"accept: {e}")
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    srv.close()
    span = (max(s[1] for s in spans) - min(s[0] for s in spans)) if spans else 0.0
    return {"bytes": sorted(got), "seconds": round(span, 4), "errors": errors}


def source(a) -> dict:
    sent, errors = [], []
    lock = threading.Lock()
    buf = b"x" * CHUNK
    t0 = time.monotonic()

    def push():
        n = 0
        try:
            s = socket.create_connection((a.host, a.port), timeout=5)
            end = time.monotonic() + a.seconds
            while time.monotonic() < end and n < a.max_bytes:
                s.sendall(buf)
                n += CHUNK
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            s.recv(1)
            s.close()
        except OSError as e:
            with lock:
                errors.append(str(e))
        with lock:
            sent.append(n)

    threads = [threading.Thread(target=push, daemon=True) for _ in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.seconds + 15)
    return {"bytes": sorted(sent), "seconds": round(time.monotonic() - t0, 4), "errors": errors}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("sink", "source"))
    ap.add_argument("--host", default="")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--max-bytes", type=int, default=4 << 30)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args()
    a.seconds = min(a.seconds, 60.0)
    a.timeout = min(a.timeout, 120.0)
    out = sink(a) if a.mode == "sink" else source(a)
    print(json.dumps(out), flush=True)
    return 0 if not out["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
