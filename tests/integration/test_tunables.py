"""Live tunables on a real tracker in the lab: `ctbpf set`, `ctbpf config`
and its sources, `ctbpf run --config FILE`, and SIGHUP reloads.

Each test starts its own tracker (own lab, own pin dir: the conftest
fixtures), so tunables changed here never leak into another test.
"""

from __future__ import annotations

import json
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import READY_TIMEOUT, StderrWatch, cannot, xdp_attached

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

#: A TCP client driven line by line on stdin: each line is sent and its echo
#: read back ("ok <echo>"); the first answer is "ok <local port>".
CLIENT = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("ok", s.getsockname()[1], flush=True)
for line in sys.stdin:
    line = line.strip()
    if line == "quit":
        break
    s.sendall(line.encode())
    got = b""
    while len(got) < len(line):
        chunk = s.recv(1000)
        if not chunk:
            break
        got += chunk
    print("ok", got.decode(), flush=True)
s.shutdown(socket.SHUT_WR)
s.recv(1000)
s.close()
'''


def free_port() -> int:
    return 20000 + secrets.randbelow(20000)


class Conn:
    """One TCP connection client -> server through the router, kept open."""

    def __init__(self, lab, family: int = 4) -> None:
        self.lab = lab
        self.cip, self.sip = ((lab.client_ip, lab.server_ip) if family == 4
                              else (lab.client_ip6, lab.server_ip6))
        self.port = free_port()
        self.server = lab.traffic_popen("server", "tcp-server", "--port", self.port,
                                        "--family", family, "--timeout", 60)
        assert lab.wait_listening("server", self.port, timeout=5), "echo server did not listen"
        self.proc = lab.popen("client", [sys.executable, "-c", CLIENT, self.sip, self.port],
                              stdin=subprocess.PIPE, cwd="/")
        self.sport = int(self._answer("connect"))

    def _answer(self, what: str, timeout: float = 8.0) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"client: no answer to {what} within {timeout:g}s"
        line = self.proc.stdout.readline().rstrip("\n")
        if not line.startswith("ok"):
            self.proc.wait(timeout=5)
            raise AssertionError(f"client: {what} -> {line!r}; {self.proc.stderr.read().strip()}")
        return line[3:]

    def send(self, text: str) -> None:
        """One data segment each way (and their ACKs) through the router."""
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        assert self._answer(f"send {text}") == text

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        for p in (self.proc, self.server):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)

    def entry(self, tracker) -> tuple[int, str, str] | None:
        """(remaining seconds, state, line) of this flow in `ctbpf list`, or None."""
        key = f" src={self.cip} dst={self.sip} sport={self.sport} dport={self.port} "
        mine = [line for line in tracker.list_proc("-p", "tcp") if key in line]
        assert len(mine) <= 1, mine
        if not mine:
            return None
        parts = mine[0].split()
        return int(parts[2]), parts[3], mine[0]


@pytest.fixture
def conns():
    made: list[Conn] = []

    def make(lab, family: int = 4) -> Conn:
        c = Conn(lab, family)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def wait_entry(tracker, conn: Conn, lo: int, hi: int, state: str = "ESTABLISHED",
               timeout: float = 5.0) -> int:
    """Poll (bounded) until the flow is listed in `state` with lo <= timeout <= hi."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / 0.1) + 2):
        last = conn.entry(tracker)
        if last and last[1] == state and lo <= last[0] <= hi:
            return last[0]
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"flow not listed as {state} with a timeout in [{lo}, {hi}] within "
                         f"{timeout:g}s; last: {last}")


def config_json(tracker) -> dict:
    return json.loads(tracker.cli("config", "-o", "json").stdout)


def values(tracker) -> dict[str, tuple[int, str]]:
    return {r["name"]: (r["value"], r["source"]) for r in config_json(tracker)["tunables"]}


def wait_value(tracker, name: str, want: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    got = None
    for _ in range(int(timeout / 0.1) + 2):
        got = values(tracker)
        if got[name][0] == want:
            return got
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"{name} never became {want} within {timeout:g}s: {got and got[name]}")


def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# ctbpf set


def test_set_established_timeout_applies_from_the_next_packet(lab, tracker, conns):
    conn = conns(lab)
    conn.send("hello")
    wait_entry(tracker, conn, 431990, 432000)

    cp = tracker.cli("set", "tcp_timeout_established=100")
    assert cp.stdout == "tcp_timeout_established: 432000 -> 100\n" and cp.stderr == ""

    # Expiry is stamped per packet: the entry keeps its old expiry until then...
    remaining, _, _ = conn.entry(tracker)
    assert remaining > 1000, remaining
    # ...and the next packet of the flow gets the new timeout.
    conn.send("again")
    wait_entry(tracker, conn, 95, 100)
    assert values(tracker)["tcp_timeout_established"] == (100, "set")

    # Setting the same value again changes nothing and says so.
    cp = tracker.cli("set", "tcp_timeout_established=100")
    assert cp.stdout == "tcp_timeout_established: 100 (unchanged)\n"


RESIZE_TIMEOUT = 180.0


def test_set_max_reloads_the_tables_keeping_the_flows(lab, tracker, conns):
    conn = conns(lab)
    conn.send("hello")
    wait_entry(tracker, conn, 431990, 432000)
    # a resize compiles and swaps the datapath: the resize tests' bound, not the CLI's 15 s
    cp = tracker.cli("set", "max=4096", "udp_timeout=40", timeout=RESIZE_TIMEOUT)
    assert cp.returncode == 0, cp.stderr
    assert "udp_timeout: 30 -> 40" in cp.stdout
    assert values(tracker)["max"][0] == 4096
    # the connection survived the reload and is still tracked
    conn.send("again")
    remaining, _, _ = conn.entry(tracker)
    assert remaining > 431000, remaining
    # and back (the refusal of a size below the live entries: test_resize.py)
    assert tracker.cli("set", "max=65536", timeout=RESIZE_TIMEOUT).returncode == 0
    assert values(tracker)["max"][0] == 65536
    remaining, _, _ = conn.entry(tracker)
    assert remaining > 431000, remaining


def test_tcp_loose_0_makes_a_midstream_ack_invalid(lab, tracker):
    if shutil.which("hping3") is None:
        cannot("needs hping3 (Debian: hping3)")
    port = free_port()
    # No RST back from the server (nothing listens), so a picked-up entry stays listed.
    lab.nft("server", "table inet ctit_norst {\n"
                      "  chain out { type filter hook output priority 0; policy accept;\n"
                      "    tcp flags & rst == rst drop\n  }\n}\n")

    def lone_ack(sport: int) -> dict:
        before = tracker.stats()
        lab.exec("client", ["hping3", "-q", "-c", "1", "-A", "-s", str(sport), "-p", str(port),
                            lab.server_ip], timeout=15)
        after = tracker.stats()
        return {"not_syn": after["invalid"]["tcp_not_syn"] - before["invalid"]["tcp_not_syn"],
                "invalid": after["packets"]["invalid"] - before["packets"]["invalid"],
                "new": after["packets"]["new"] - before["packets"]["new"]}

    def listed(sport: int) -> bool:
        key = f"sport={sport} dport={port} "
        return any(key in line for line in tracker.list_proc("-p", "tcp"))

    # tcp_loose=1 (the default): the lone ACK is picked up as a NEW flow.
    sport1 = 1024 + secrets.randbelow(30000)
    d = lone_ack(sport1)
    assert d["not_syn"] == 0 and d["new"] >= 1, d
    assert listed(sport1)

    cp = tracker.cli("set", "tcp_loose=0")
    assert cp.stdout == "tcp_loose: 1 -> 0\n"
    sport2 = sport1 + 1
    d = lone_ack(sport2)
    assert d["not_syn"] >= 1 and d["invalid"] >= 1, d
    assert not listed(sport2)
    assert values(tracker)["tcp_loose"] == (0, "set")

    # and back: booleans take on/off too.
    assert tracker.cli("set", "tcp_loose=on").stdout == "tcp_loose: 0 -> 1\n"
    assert values(tracker)["tcp_loose"] == (1, "default")


def test_a_bad_set_changes_nothing(tracker):
    before = config_json(tracker)
    cases = [
        (["tcp_timeout_established=100", "tcp_loose=maybe"],
         ["tcp_loose: expected 0/1, true/false, yes/no or on/off, got 'maybe'"]),
        (["udp_timeout=45", "tcp_timeout_established=abc"],
         ["tcp_timeout_established: expected an integer number of seconds, got 'abc'"]),
        (["udp_timeout=0"], ["udp_timeout: 0 is out of range: allowed 1 to 2592000 seconds"]),
        (["tcp_timeout_establishd=5", "generic_timeout=5"],
         ["tcp_timeout_establishd: unknown tunable; did you mean tcp_timeout_established?"]),
        (["bogus=1", "udp_timeout=x"], None),
    ]
    for argv, expect in cases:
        cp = tracker.cli("set", *argv, check=False)
        assert cp.returncode == 2, (argv, cp.stdout, cp.stderr)
        assert cp.stdout == "", argv
        lines = cp.stderr.splitlines()
        assert all(line.startswith("ctbpf: error: ") for line in lines), cp.stderr
        assert "Traceback" not in cp.stderr
        if expect is not None:
            assert [line.removeprefix("ctbpf: error: ") for line in lines] == expect
        else:
            assert len(lines) == 2, lines
    assert config_json(tracker) == before
    # the same max is accepted (nothing to change)
    assert tracker.cli("set", "max=65536").stdout == "max: 65536 (unchanged)\n"
    assert config_json(tracker) == before


# --------------------------------------------------------------------------
# the config file and the sources


def test_config_file_at_start_and_sources(lab, pin_dir, start_tracker, conns, tmp_path):
    cfg = write_file(tmp_path / "ctbpf.toml",
                     "buckets = 1024\n[tunables]\ntcp_timeout_established = 7200\n"
                     "udp_timeout = 45\nicmp_timeout = 30\n")
    tracker = start_tracker(pin_dir, extra=["--config", str(cfg)])

    desc = config_json(tracker)
    assert desc["config_file"] == str(cfg) and desc["note"] is None
    v = values(tracker)
    assert v["tcp_timeout_established"] == (7200, "file")
    assert v["udp_timeout"] == (45, "file")
    assert v["icmp_timeout"] == (30, "file")
    assert v["tcp_loose"] == (1, "default") and v["generic_timeout"] == (600, "default")
    assert v["max"] == (8192, "file") and v["buckets"] == (1024, "file")

    # Applied at start: a new flow gets the file's timeout.
    conn = conns(lab)
    conn.send("hello")
    wait_entry(tracker, conn, 7195, 7200)

    # Runtime changes: a value neither default nor the file's is "set"; back
    # to the default value it is "default" again.
    out = tracker.cli("set", "generic_timeout=60", "udp_timeout=30").stdout
    assert out == "generic_timeout: 600 -> 60\nudp_timeout: 45 -> 30\n"
    v = values(tracker)
    assert v["generic_timeout"] == (60, "set")
    assert v["udp_timeout"] == (30, "default")
    assert v["tcp_timeout_established"] == (7200, "file")

    text = tracker.cli("config").stdout.splitlines()
    assert text[0].split() == ["NAME", "VALUE", "DEFAULT", "SOURCE"]
    rows = {line.split()[0]: line.split()[1:] for line in text[1:] if not line.startswith(
        ("config file:", "note:"))}
    assert rows["tcp_timeout_established"] == ["7200", "432000", "file"]
    assert rows["generic_timeout"] == ["60", "600", "set"]
    assert rows["tcp_loose"] == ["1", "1", "default"]
    assert text[-1].startswith(f"config file: {cfg} (daemon pid ")


def test_config_without_a_daemon_file(lab, pin_dir, start_tracker):
    tracker = start_tracker(pin_dir, acct=False)
    desc = config_json(tracker)
    assert desc["config_file"] is None
    assert {r["source"] for r in desc["tunables"]} == {"default"}
    assert tracker.cli("config").stdout.splitlines()[-1] == "config file: none"


def test_sighup_applies_the_edited_file(lab, pin_dir, start_tracker, conns, tmp_path):
    cfg = write_file(tmp_path / "ctbpf.toml", "[tunables]\ntcp_timeout_established = 7200\n")
    tracker = start_tracker(pin_dir, extra=["--config", str(cfg)])
    err = StderrWatch(tracker)
    conn = conns(lab)
    conn.send("hello")
    wait_entry(tracker, conn, 7195, 7200)
    tracker.cli("set", "udp_timeout=99")  # a runtime change the file does not mention

    write_file(cfg, "[tunables]\ntcp_timeout_established = 300\ntcp_loose = false\n")
    # ctbpf config notices the file changed and says how to apply it
    assert "changed since the daemon read it" in config_json(tracker)["note"]
    tracker.proc.send_signal(signal.SIGHUP)
    v = wait_value(tracker, "tcp_timeout_established", 300)
    assert v["tcp_timeout_established"] == (300, "file")
    assert v["tcp_loose"] == (0, "file")
    assert v["udp_timeout"] == (30, "default")   # the file is the truth after a reload
    assert config_json(tracker)["note"] is None
    said = err.wait_for("udp_timeout: 99 -> 30")
    assert f"ctbpf: reload {cfg}: tcp_timeout_established: 7200 -> 300" in said
    assert f"ctbpf: reload {cfg}: tcp_loose: 1 -> 0" in said

    conn.send("again")
    wait_entry(tracker, conn, 295, 300)
    assert tracker.running


def test_sighup_with_a_broken_file_keeps_the_running_values(lab, pin_dir, start_tracker,
                                                            conns, tmp_path):
    cfg = write_file(tmp_path / "ctbpf.toml", "[tunables]\ntcp_timeout_established = 7200\n")
    tracker = start_tracker(pin_dir, extra=["--config", str(cfg)])
    err = StderrWatch(tracker)
    before = values(tracker)

    for broken, why in [
        ("[tunables]\ntcp_timeout_established = \"soon\"\nudp_timeout = 45\n",
         "[tunables] tcp_timeout_established: expected an integer number of seconds, "
         "got 'soon'"),
        ("[tunables]\nudp_timeout = 45\nnosuch = 1\n", "[tunables] nosuch: unknown tunable"),
        ("[tunables\n", "not valid TOML"),
    ]:
        write_file(cfg, broken)
        tracker.proc.send_signal(signal.SIGHUP)
        said = err.wait_for(f"ctbpf: reload refused: {cfg}: {why}")
        line = [x for x in said.splitlines() if why in x][-1]
        assert line.startswith("ctbpf: reload refused: ")
        assert tracker.running
        now = values(tracker)
        assert {k: v[0] for k, v in now.items()} == {k: v[0] for k, v in before.items()}

    # Still tracking, with the values it had.
    conn = conns(lab)
    conn.send("hello")
    wait_entry(tracker, conn, 7195, 7200)
    assert "Traceback" not in err.text

    # A fixed file is applied on the next SIGHUP.
    write_file(cfg, "[tunables]\ntcp_timeout_established = 600\n")
    tracker.proc.send_signal(signal.SIGHUP)
    wait_value(tracker, "tcp_timeout_established", 600)
    err.wait_for("tcp_timeout_established: 7200 -> 600")


@pytest.mark.parametrize("text, why", [
    ("[tunables]\ntcp_loose = \"maybe\"\n",
     "[tunables] tcp_loose: expected 0/1, true/false, yes/no or on/off, got 'maybe'"),
    ("max = 4\n", "max: 4 is out of range: allowed 16 to 67108864"),
    ("[timeouts]\ntcp = 1\n", "unknown table [timeouts]"),
    (None, "No such file or directory"),
])
def test_run_with_a_bad_config_fails_before_attaching(lab, pin_dir, run_ctbpf, tmp_path,
                                                      need_bpf, text, why):
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    cp = run_ctbpf("run", "--iface", "cli0", "--iface", "srv0", "--pin-dir", pin_dir,
                   "--config", path, timeout=READY_TIMEOUT)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert cp.stdout == ""
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctbpf: error: ") and why in lines[0], lines
    assert str(path) in lines[0]
    assert not xdp_attached(lab, "cli0") and not xdp_attached(lab, "srv0")
    assert not pin_dir.exists()
