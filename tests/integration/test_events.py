"""`ctbpf events`, like conntrack -E, on real traffic through the lab's
router: the daemon relays the datapath's ring buffer to clients of its
unix socket; each client prints one line per event until a signal (exit 0)
or until the daemon goes away."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time

import pytest

from ctbpf.lab.netns import Lab

from conftest import CTBPF, REPO, run_in

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

#: Seconds a client may take to connect and get the daemon's hello.
CONNECT_TIMEOUT = 10.0
#: Seconds to wait for the events a test expects.
EVENT_TIMEOUT = 10.0


class EventsClient:
    """`ctbpf -v events ARGS` in the router namespace, read line by line.

    Its pipes are read with os.read on the raw descriptors: select() on a
    buffered file object misses lines Python has already buffered."""

    def __init__(self, tracker, *args: object) -> None:
        self.lab = tracker.lab
        argv = [*CTBPF, "-v", "events", *map(str, args)]
        if tracker.pin_dir is not None:
            argv += ["--pin-dir", str(tracker.pin_dir)]
        self.proc = self.lab.popen(tracker.ns, argv, env=Lab.traffic_env(), cwd=REPO)
        self._fds = {self.proc.stdout.fileno(): "out", self.proc.stderr.fileno(): "err"}
        self._buf = {"out": b"", "err": b""}
        self._eof: set[str] = set()
        self.lines: list[str] = []
        self.stderr = ""
        self._wait(lambda: "receiving events from ctbpf run" in self.stderr, CONNECT_TIMEOUT)
        if "receiving events from ctbpf run" not in self.stderr:
            self.close()
            pytest.fail(f"ctbpf events did not connect: exit {self.proc.returncode}, "
                        f"stderr: {self.stderr.strip()}")

    def _pump(self, wait: float) -> None:
        """Read what the pipes hold now (waiting up to `wait` for something)."""
        fds = [fd for fd, name in self._fds.items() if name not in self._eof]
        if not fds:
            time.sleep(wait)
            return
        ready, _, _ = select.select(fds, [], [], wait)
        for fd in ready:
            name = self._fds[fd]
            data = os.read(fd, 65536)
            if not data:
                self._eof.add(name)
                continue
            self._buf[name] += data
            *whole, self._buf[name] = self._buf[name].split(b"\n")
            text = [x.decode() for x in whole]
            if name == "out":
                self.lines += text
            else:
                self.stderr += "".join(x + "\n" for x in text)

    def _wait(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline and len(self._eof) < 2:
            self._pump(0.2)

    def read_until(self, done, timeout: float = EVENT_TIMEOUT) -> list[str]:
        """Read lines until done(lines) holds or the timeout passes."""
        self._wait(lambda: done(self.lines), timeout)
        return self.lines

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        """Read everything until the process exits (bounded); its exit code."""
        self._wait(lambda: False, timeout)
        for name, rest in self._buf.items():
            if rest:
                if name == "out":
                    self.lines.append(rest.decode())
                else:
                    self.stderr += rest.decode()
                self._buf[name] = b""
        try:
            return self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        code = self.wait_exit()
        if code is None:
            self.close()
            pytest.fail(f"ctbpf events ignored {signal.Signals(sig).name}")
        assert "Traceback" not in self.stderr, self.stderr
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def json_events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def events_client(shared_tracker):
    made: list[EventsClient] = []

    def start(*args: object) -> EventsClient:
        client = EventsClient(shared_tracker, *args)
        made.append(client)
        return client
    yield start
    for client in made:
        client.close()


def _of(evs: list[dict], proto: str, src: str, dport: int) -> list[dict]:
    return [e for e in evs if e["proto"] == proto and e["orig"]["src"] == src
            and e["orig"].get("dport") == dport]


def _summary(evs: list[dict]) -> list[tuple]:
    return [(e["event"], e["state"], tuple(e["flags"]), e.get("reason")) for e in evs]


def test_json_events_of_real_tcp_and_udp(shared_tracker, events_client):
    """NEW, then UPDATEs through SYN_RECV to ESTABLISHED [ASSURED] for TCP;
    NEW, reply seen, ASSURED for a UDP stream; NEW then DESTROY (rst) for a
    refused connection. One JSON object per line."""
    lab = shared_tracker.lab
    tcp_port, udp_port, refused_port = 18080, 18053, 18081
    client = events_client("-o", "json")

    server = lab.traffic_popen("server", "tcp-server", "--port", tcp_port, "--timeout", 10)
    userver = lab.traffic_popen("server", "udp-server", "--port", udp_port, "--count", 3,
                                "--timeout", 10)
    assert lab.wait_listening("server", tcp_port) and lab.wait_listening("server", udp_port, "udp")
    cp = lab.traffic("client", "tcp-client", "--host", lab.server_ip, "--port", tcp_port)
    assert cp.returncode == 0, cp.stderr
    cp = lab.traffic("client", "tcp-client", "--host", lab.server_ip, "--port", refused_port)
    assert "refused" in cp.stderr, cp.stderr
    # three datagrams over 2.4 s: the third makes the stream ASSURED (after 2 s, as the kernel)
    cp = lab.traffic("client", "udp-client", "--host", lab.server_ip, "--port", udp_port,
                     "--count", 3, "--interval", 1.2)
    assert cp.returncode == 0, cp.stderr
    for p in (server, userver):
        p.wait(timeout=15)

    def complete(lines):
        evs = [json.loads(x) for x in lines]
        return (len(_of(evs, "tcp", lab.client_ip, tcp_port)) >= 3
                and len(_of(evs, "tcp", lab.client_ip, refused_port)) >= 2
                and len(_of(evs, "udp", lab.client_ip, udp_port)) >= 3)
    client.read_until(complete)
    assert client.stop() == 0, client.stderr
    evs = client.json_events()

    tcp = _of(evs, "tcp", lab.client_ip, tcp_port)
    assert _summary(tcp)[:3] == [("new", "SYN_SENT", ("UNREPLIED",), None),
                                 ("update", "SYN_RECV", (), None),
                                 ("update", "ESTABLISHED", ("ASSURED",), None)], tcp
    assert [e["timeout"] for e in tcp[:3]] == [120, 60, 432000]
    assert tcp[0]["orig"]["dst"] == lab.server_ip and tcp[0]["reply"]["src"] == lab.server_ip
    assert tcp[2]["table"] == "assured"
    # the close is reported too: the states the kernel's table gives, ending in TIME_WAIT
    states = [e["state"] for e in tcp[3:]]
    assert states and states[-1] == "TIME_WAIT", states

    refused = _of(evs, "tcp", lab.client_ip, refused_port)
    assert [(e["event"], e.get("reason")) for e in refused] == [("new", None),
                                                                ("destroy", "rst")], refused
    assert refused[1]["flags"] == ["UNREPLIED"]

    udp = _of(evs, "udp", lab.client_ip, udp_port)
    assert _summary(udp) == [("new", None, ("UNREPLIED",), None),
                             ("update", None, (), None),
                             ("update", None, ("ASSURED",), None)], udp
    assert [e["timeout"] for e in udp] == [30, 30, 180]
    assert all(isinstance(e["timestamp"], float) and abs(e["timestamp"] - time.time()) < 60
               for e in evs)


#: conntrack -E's line: type right-aligned in 9 columns, then the listing line
#: without use=.
def _event_re(kind: str, proto: str, num: int, rest: str) -> re.Pattern:
    return re.compile("^" + re.escape(f"{'[' + kind + ']':>9} {proto:<8} {num} ") + rest + "$")


def test_text_lines_and_filters(shared_tracker, events_client):
    """Text lines like conntrack -E, and list's filters: only the matching
    flow's events are shown."""
    lab = shared_tracker.lab
    port, other = 18090, 18091
    client = events_client("-p", "tcp", "--dport", port, "--src", lab.client_ip)
    for p in (port, other):
        lab.traffic_popen("server", "tcp-server", "--port", p, "--timeout", 10)
        assert lab.wait_listening("server", p)
    for p in (other, port):
        cp = lab.traffic("client", "tcp-client", "--host", lab.server_ip, "--port", p)
        assert cp.returncode == 0, cp.stderr
    lines = client.read_until(lambda ls: any("TIME_WAIT" in x for x in ls))
    assert client.stop(signal.SIGTERM) == 0, client.stderr
    c, s = re.escape(lab.client_ip), re.escape(lab.server_ip)
    tup = (f"src={c} dst={s} sport=(?P<sport>\\d+) dport={port} ", f"src={s} dst={c} "
           f"sport={port} dport=(?P=sport)")
    expected = [
        _event_re("NEW", "tcp", 6, f"120 SYN_SENT {tup[0]}\\[UNREPLIED\\] {tup[1]}"),
        _event_re("UPDATE", "tcp", 6, f"60 SYN_RECV {tup[0]}{tup[1]}"),
        _event_re("UPDATE", "tcp", 6, f"432000 ESTABLISHED {tup[0]}{tup[1]} \\[ASSURED\\]"),
    ]
    assert len(lines) >= 4, lines
    for rx, line in zip(expected, lines):
        assert rx.match(line), (rx.pattern, line)
    assert all(f"dport={port} " in x for x in lines), lines   # nothing of the other port
    assert all(x.startswith(" [UPDATE] tcp ") for x in lines[3:]), lines


def _set_slot(pin_dir, name: str, value: int) -> int:
    """Write one tunable of the running datapath, leaving the others as they
    are; returns the old value."""
    from ctbpf.datapath import configmap  # noqa: PLC0415

    return configmap.write_values(pin_dir, {name: value})[name][0]


def test_destroy_of_an_expired_entry(shared_tracker, events_client):
    """An expired entry's DESTROY (reason expired) reaches clients, whether
    the sweeper reclaims it or the next packet finds it dead; the text line
    shows no timeout, as conntrack -E leaves out a zero one."""
    lab = shared_tracker.lab
    port, sport = 18100, 38100
    text = events_client("-p", "udp", "--dport", port)
    js = events_client("-o", "json", "-p", "udp", "--dport", port)
    old = _set_slot(shared_tracker.pin_dir, "udp_timeout", 1)
    try:
        for _ in range(2):  # the second datagram (same tuple) comes after the first expired
            lab.traffic("client", "udp-client", "--host", lab.server_ip, "--port", port,
                        "--bind-port", sport, "--timeout", 0.1)
            time.sleep(1.6)
        js.read_until(lambda ls: len(ls) >= 3)
        text.read_until(lambda ls: any("[DESTROY]" in x for x in ls))
    finally:
        _set_slot(shared_tracker.pin_dir, "udp_timeout", old)
    for client in (js, text):
        assert client.stop() == 0, client.stderr
    evs = js.json_events()
    # new, its destroy (by the sweeper or by the next datagram's lookup), new again
    assert [e["event"] for e in evs][:3] == ["new", "destroy", "new"], evs
    destroy = [e for e in evs if e["event"] == "destroy"]
    assert destroy and destroy[0]["reason"] == "expired" and destroy[0]["timeout"] == 0, destroy
    assert destroy[0]["orig"]["sport"] == sport
    line = next(x for x in text.lines if x.startswith("[DESTROY]"))
    assert re.match(re.escape(f"[DESTROY] udp      17 src={lab.client_ip} dst={lab.server_ip} "
                              f"sport={sport} dport={port} [UNREPLIED] "), line), line


def test_no_daemon_is_one_error_line(shared_tracker):
    """In a namespace without a tracker: one line, exit 1, before any output."""
    lab = shared_tracker.lab
    cp = run_in(lab, "client", [*CTBPF, "events"])
    _one_error_line(cp, 1, "no ctbpf daemon is running")
    cp = run_in(lab, "router", [*CTBPF, "events", "--pin-dir", "/sys/fs/bpf/ctbpf-it-nothere"])
    _one_error_line(cp, 1, "/sys/fs/bpf/ctbpf-it-nothere")


@pytest.mark.parametrize("args, mentions", [
    (["-p", "bogus"], "bogus"),
    (["--dport", "99999"], "99999"),
    (["--state", "NOPE"], "NOPE"),
    (["-o", "xml"], "xml"),
])
def test_bad_arguments_exit_2(args, mentions):
    cp = subprocess.run([*CTBPF, "events", *args], capture_output=True, text=True, timeout=15,
                        cwd=REPO, env=Lab.traffic_env())
    _one_error_line(cp, 2, mentions)


def test_daemon_going_away_ends_the_stream(tracker):
    """The daemon stops: the client says so on one line and exits 1; the
    socket is gone with the daemon."""
    client = EventsClient(tracker)
    try:
        tracker.stop(signal.SIGINT)
        code = client.wait_exit()
        assert code is not None, "ctbpf events kept running after the daemon stopped"
        errors = [x for x in client.stderr.splitlines() if x.startswith("ctbpf: error:")]
        assert code == 1 and len(errors) == 1, (code, client.stderr)
        assert "daemon went away" in errors[0]
        assert "Traceback" not in client.stderr, client.stderr
        cp = run_in(tracker.lab, "router", [*CTBPF, "events"])
        _one_error_line(cp, 1, "no ctbpf daemon is running")
    finally:
        client.close()


def _one_error_line(cp: subprocess.CompletedProcess, code: int, mentions: str) -> None:
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctbpf: error: "), cp.stderr
    assert cp.returncode == code, (cp.returncode, cp.stderr)
    assert mentions in lines[0], lines[0]
    assert cp.stdout == "", cp.stdout
