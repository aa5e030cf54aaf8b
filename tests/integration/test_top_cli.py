"""ctbpf top on a real tracker: plain-text frames while traffic flows
through the lab router."""

from __future__ import annotations

import re
import subprocess
import time

from ctbpf.datapath import sizing

UDP_PORT = 7461
UDP_BIND = 47461
TCP_PORT = 7462
DATAGRAMS = 400          # one every 20 ms: about 8 s of traffic


def _frames(text: str) -> list[list[str]]:
    return [chunk.strip("\n").splitlines() for chunk in text.split("-" * 72 + "\n")]


def _finish(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_flow(tracker, *needles: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        lines = tracker.list_proc()
        if any(all(n in line for n in needles) for line in lines):
            return
        assert time.monotonic() < deadline, f"no flow with {needles} in {lines}"
        time.sleep(0.1)


def test_top_shows_entries_rates_and_talkers(lab, tracker):
    procs = [
        lab.traffic_popen("server", "tcp-server", "--port", TCP_PORT, "--hold", 10,
                          "--timeout", 20),
        lab.traffic_popen("server", "udp-server", "--port", UDP_PORT, "--count", DATAGRAMS,
                          "--timeout", 20),
    ]
    try:
        assert lab.wait_listening("server", TCP_PORT)
        assert lab.wait_listening("server", UDP_PORT, "udp")
        procs.append(lab.traffic_popen("client", "tcp-client", "--host", lab.server_ip,
                                       "--port", TCP_PORT, "--hold", 10))
        procs.append(lab.traffic_popen("client", "udp-client", "--host", lab.server_ip,
                                       "--port", UDP_PORT, "--count", DATAGRAMS,
                                       "--interval", 0.02, "--size", 400,
                                       "--bind-port", UDP_BIND))
        _wait_flow(tracker, "tcp", "ESTABLISHED", f"dport={TCP_PORT}")
        _wait_flow(tracker, "udp", f"sport={UDP_BIND}", f"dport={UDP_PORT}")

        cp = tracker.cli("top", "--iterations", 2, "--interval", 0.5)
    finally:
        for p in procs:
            _finish(p)

    assert cp.stderr == "", cp.stderr
    frames = _frames(cp.stdout)
    assert len(frames) == 2, cp.stdout
    frame = frames[-1]
    text = "\n".join(frame)

    # header: entries against the limit, a non-zero packet rate
    # The header gives the interval it measured: at least the asked 0.5 s,
    # more on a loaded machine.
    over = re.search(r"\(rates over (\d+\.\d)s\)", frame[0])
    assert frame[0].startswith("ctbpf top - ") and over and 0.5 <= float(over[1]) < 5, text
    sz = sizing.sizes(65536)
    entries = re.search(rf"^Entries: (\d+) total; assured (\d+)/{sz.assured} .*, "
                        rf"new (\d+)/{sz.new_max}",
                        text, re.M)
    assert entries and int(entries[1]) >= 2 and int(entries[2]) >= 1, text
    est = re.search(r"^Packets/s: .*\bestablished ([0-9.]+)([KMGT]?)\b", text, re.M)
    assert est and float(est[1]) > 0, text
    assert re.search(r"^Invalid/s: 0$", text, re.M), text

    # occupancy: the held TCP connection, the UDP flow
    assert re.search(r"^tcp\s+ESTABLISHED\s+[1-9]", text, re.M), text
    assert re.search(r"^udp\s+-\s+\d+\s+\d+\s+[1-9]", text, re.M), text

    # top talkers: the UDP stream (about 2 x 50 x 428 bytes/s) leads
    talkers = frame[frame.index(next(line for line in frame if line.startswith("Top talkers"))) + 2:]
    label = f"udp {lab.client_ip}:{UDP_BIND} -> {lab.server_ip}:{UDP_PORT}"
    assert talkers and talkers[0].endswith(label), text
    bps = talkers[0].split()[0]
    assert bps not in ("0", "-"), text
    assert any(f"tcp {lab.client_ip}:" in t and f"{lab.server_ip}:{TCP_PORT} ESTABLISHED" in t
               for t in talkers), text
    print(cp.stdout)
