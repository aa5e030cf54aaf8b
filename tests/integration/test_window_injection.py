"""Blind injection against live connections: window tracking keeps them.

An attacker on the client's side knows a connection's addresses and ports
(not its sequence numbers) and sprays it with RSTs, data and ACKs half the
sequence space away from the live numbers (ctbpf.lab.inject: rst_over,
rst_under, data_over, ack_over). With window tracking (bpf/tcpwin.h, the
kernel's tcp_in_window) every one of them is INVALID, and the spec's
firewall (enforce mode: INVALID dropped on cli0) drops them at XDP: none
reaches the server, none moves the entry. Before window tracking, one RST
with any sequence number moved the entry to CLOSE (10 s), and the
connection died with it.

The same attack runs against the kernel's nf_conntrack in the same kind of
lab (the router namespace with the same ruleset as nftables, no ctbpf),
which must give the same outcome.

    test_crafted_segments_reach_an_unprotected_server
        control: with no tracker on the router all of them reach the server,
        which counts them (so "none reached it" below means something)
    test_bulk_transfer_survives_injection[ctbpf|kernel]
        a 1 GB download through the router (window scaling on, Linux
        defaults; 200 MB would do, but lasts 0.2 s here, too short to spread
        the attack over) while 10,000 crafted segments for its 4-tuple come
        from the client's side, spread over 0.25 s: the transfer completes
        with every byte intact, the entry is ESTABLISHED at every poll,
        INVALID rises by exactly the number injected (so the transfer's own
        packets are never INVALID), and no crafted segment reaches the server
    test_idle_connection_survives_injection[ctbpf|kernel]
        an established, idle echo connection gets 3,000 crafted segments,
        then 12 s of silence (longer than tcp_timeout_close, 10 s): it is
        still ESTABLISHED and still carries data both ways
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import (REPO, Tracker, _a_lab, _trackers, bpf_unavailable, cannot,
                      lab_unavailable, new_pin_dir, remove_pin_dir)
from ctbpf.lab.inject import FIREWALL, TTL, WATCH, kernel_ruleset
from ctbpf.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

INJECT = [sys.executable, "-m", "ctbpf.lab.inject"]
BULK_BYTES = 1_000_000_000
BULK_SEGMENTS = 10_000
IDLE_SEGMENTS = 3_000
#: Longer than tcp_timeout_close (10 s): an entry moved to CLOSE would be gone.
SILENCE = 12.0
#: Reasons bpf/tcpwin.h and bpf/tcp.h give the four kinds (ctbpf.lab.inject.KINDS).
REASON_OF = {"rst_over": "tcp_seq_over", "rst_under": "tcp_rst", "data_over": "tcp_seq_over",
             "ack_over": "tcp_ack_over"}


# --------------------------------------------------------------------------
# the two routers


class Router:
    """What the tests ask of a router: INVALID counted, the entry's state,
    the INVALID packets dropped. ``name`` is "ctbpf" or "kernel"."""

    name = ""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        lab.nft("server", WATCH)

    def reached_server(self) -> int:
        """Crafted segments (TTL - 1) the server namespace received so far."""
        cp = self.lab.exec("server", ["nft", "list", "table", "ip", "injwatch"], timeout=10)
        assert cp.returncode == 0, cp.stderr
        return int(re.search(r"counter packets (\d+)", cp.stdout)[1])

    def invalid(self) -> dict[str, int]:
        raise NotImplementedError

    def invalid_dropped(self) -> int | None:
        return None

    def state(self, cip: str, sip: str, sport: int, dport: int) -> str | None:
        raise NotImplementedError

    def describe(self, cip: str, sip: str, sport: int, dport: int) -> str:
        raise NotImplementedError


class CtbpfRouter(Router):
    name = "ctbpf"

    def __init__(self, lab: Lab, tracker: Tracker) -> None:
        super().__init__(lab)
        self.tracker = tracker
        self.pin_dir = tracker.pin_dir

    def invalid(self) -> dict[str, int]:
        """INVALID per reason, as `ctbpf stats -o json` gives them."""
        return self.tracker.stats()["invalid"]

    def invalid_dropped(self) -> int:
        doc = json.loads(self.tracker.cli("policy", "-o", "json").stdout)
        return sum(p["packets"] for p in doc["packets"]
                   if (p["policy"], p["state"], p["verdict"]) == ("in.cli0", "invalid", "drop"))

    def state(self, cip, sip, sport, dport):
        from ctbpf.datapath import tableops  # noqa: PLC0415

        spec = tableops.TupleSpec(6, cip, sip, sport, dport)
        for _ in range(2):   # once more: a flow may move tables between two lookups
            m = tableops.lookup(self.pin_dir, spec)
            if m is not None:
                return m.flow.state
        return None

    def describe(self, cip, sip, sport, dport):
        return "\n".join(self.tracker.list_conntrack("-p", "tcp", "--sport", sport))


class KernelRouter(Router):
    name = "kernel"

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        lab.nft("router", kernel_ruleset())
        lab.sysctl("router", net__netfilter__nf_conntrack_tcp_loose=0)

    def invalid(self) -> dict[str, int]:
        cp = self.lab.exec("router", ["conntrack", "-S"], timeout=10)
        assert cp.returncode == 0, cp.stderr
        return {"invalid": sum(int(n) for n in re.findall(r"\binvalid=(\d+)", cp.stdout))}

    def _list(self, sport: int, dport: int) -> str:
        cp = self.lab.exec("router", ["conntrack", "-L", "-p", "tcp", "--orig-port-src",
                                      str(sport), "--orig-port-dst", str(dport)], timeout=10)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout

    def state(self, cip, sip, sport, dport):
        for line in self._list(sport, dport).splitlines():
            if f"src={cip} dst={sip} sport={sport} dport={dport}" in line:
                return line.split()[3]
        return None

    def describe(self, cip, sip, sport, dport):
        return self._list(sport, dport).strip()


@pytest.fixture(scope="module")
def ctbpf_router(tmp_path_factory):
    """A lab whose router runs `ctbpf run --config FIREWALL` (enforce)."""
    for reason in (lab_unavailable(), bpf_unavailable()):
        if reason:
            cannot(f"BPF unavailable: {reason}")
    cfg = tmp_path_factory.mktemp("inj") / "firewall.toml"
    cfg.write_text(FIREWALL)
    path = new_pin_dir()
    try:
        with _a_lab() as lab, _trackers(lab) as start:
            tr = start(path, extra=("--config", str(cfg)))
            mode = json.loads(tr.cli("policy", "-o", "json").stdout)["mode"]
            assert mode == "enforce", mode
            yield CtbpfRouter(lab, tr)
            if tr.running:
                tr.stop(signal.SIGINT)
    finally:
        remove_pin_dir(path)


@pytest.fixture(scope="module")
def kernel_router():
    """A lab whose router runs the same firewall with nftables and nf_conntrack."""
    reason = lab_unavailable()
    if reason:
        cannot(f"lab unavailable: {reason}")
    with _a_lab() as lab:
        yield KernelRouter(lab)


@pytest.fixture(params=["ctbpf", "kernel"])
def router(request) -> Router:
    return request.getfixturevalue(f"{request.param}_router")


# --------------------------------------------------------------------------
# helpers


_next_port = [41000 + (int(time.time()) % 40) * 100]


def ports() -> tuple[int, int]:
    """(server port, client port) fresh for this test."""
    _next_port[0] += 2
    return _next_port[0], _next_port[0] + 1


def json_line(proc: subprocess.Popen, timeout: float, what: str) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        err = proc.stderr.read() if proc.poll() is not None else ""
        raise AssertionError(f"{what} said nothing within {timeout:g}s (exit {proc.poll()}): "
                             f"{err.strip()[-600:]}")
    return json.loads(line)


def start(lab: Lab, ns: str, *args: object, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return lab.popen(ns, [*INJECT, *map(str, args)], env=Lab.traffic_env(), cwd=REPO,
                     stdin=stdin)


def attacker(lab: Lab, sport: int, dport: int, count: int, seconds: float) -> subprocess.Popen:
    proc = start(lab, "client", "attack", "--src", lab.client_ip, "--dst", lab.server_ip,
                 "--sport", sport, "--dport", dport, "--count", count, "--seconds", seconds,
                 "--ttl", TTL, "--learn-timeout", 15)
    assert json_line(proc, 10, "attacker")["event"] == "ready"
    return proc


def finish(proc: subprocess.Popen, timeout: float, what: str) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{what} did not finish within {timeout:g}s") from None
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert lines, f"{what} exited {proc.returncode} and said nothing: {err.strip()[-600:]}"
    return lines[-1]


class StatePoller:
    """Polls the entry's state in a thread until stop(): every state seen."""

    def __init__(self, router: Router, *flow: object, interval: float = 0.01) -> None:
        self.router, self.flow, self.interval = router, flow, interval
        self.polls: list[tuple[float, str | None]] = []   # (CLOCK_MONOTONIC, state)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                state = self.router.state(*self.flow)
                self.polls.append((time.monotonic(), state))   # when the answer came
                self._stop.wait(self.interval)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self) -> "StatePoller":
        self._stop.set()
        self._thread.join(timeout=15)
        if self.error is not None:
            raise self.error
        return self

    def seen(self, until: float = float("inf")) -> dict[str | None, int]:
        """How often each state was seen by polls answered before `until`."""
        out: dict[str | None, int] = {}
        for t, s in self.polls:
            if t < until:
                out[s] = out.get(s, 0) + 1
        return out


def expected_reasons(kinds: dict[str, int]) -> dict[str, int]:
    want: dict[str, int] = {}
    for kind, n in kinds.items():
        want[REASON_OF[kind]] = want.get(REASON_OF[kind], 0) + n
    return want


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def check_invalid(router: Router, before: dict, after: dict, attack: dict) -> None:
    """INVALID rose by exactly what was injected; ctbpf: by the reasons of
    the four kinds, too.

    This is also what caught two CPUs racing on one entry: two of the
    server's segments went through srv0's XDP at once, td_end moved back
    (the kernel updates windows under ct->lock, XDP has no lock), and the
    client's next real ACK looked like one of unsent data. Window edges now
    only rise, by compare-and-swap (bpf/tcpwin.h, tcp_raise)."""
    delta = moved(before, after)
    total = sum(delta.values())
    print(f"{router.name}: {attack['sent']} crafted segments sent, INVALID rose by {total}: "
          f"{delta}")
    why = ("some crafted one was not INVALID" if total < attack["sent"] else
           "the connection's own packets were INVALID too: see check_invalid's docstring")
    assert total == attack["sent"], (f"{router.name}: INVALID rose by {total}, "
                                     f"{attack['sent']} crafted segments sent ({why}): {delta}")
    if router.name == "ctbpf":
        assert delta == expected_reasons(attack["kinds"]), (delta, attack["kinds"])


# --------------------------------------------------------------------------
# 0: the server's count of crafted segments works


def test_crafted_segments_reach_an_unprotected_server(lab):
    """Control: with no tracker and no firewall on the router, every crafted
    segment reaches the server and its TTL counter counts them (the Linux
    endpoint itself discards them: RFC 5961, so only the counts tell)."""
    router = Router(lab)
    sip = lab.server_ip
    dport, sport = ports()
    server = start(lab, "server", "echo-server", "--port", dport, "--timeout", 30)
    assert json_line(server, 10, "echo server")["event"] == "listening"
    client = start(lab, "client", "echo-client", "--host", sip, "--port", dport,
                   "--bind-port", sport, "--timeout", 30, stdin=subprocess.PIPE)
    assert json_line(client, 10, "echo client")["event"] == "connected"
    attack = attacker(lab, sport, dport, 400, seconds=0.1)
    client.stdin.write("ping 100\n")
    client.stdin.flush()
    assert json_line(client, 10, "echo client")["ok"]
    att = finish(attack, 20, "attacker")
    assert att["sent"] == 400, att
    deadline = time.monotonic() + 5
    while router.reached_server() < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert router.reached_server() == 400


# --------------------------------------------------------------------------
# 1: bulk transfer under attack


def test_bulk_transfer_survives_injection(router):
    lab = router.lab
    cip, sip = lab.client_ip, lab.server_ip
    dport, sport = ports()
    flow = (cip, sip, sport, dport)
    inv0, reached0 = router.invalid(), router.reached_server()
    drop0 = router.invalid_dropped()

    server = start(lab, "server", "bulk-server", "--port", dport, "--bytes", BULK_BYTES,
                   "--timeout", 40)
    assert json_line(server, 10, "bulk server")["event"] == "listening"
    # Spread over 0.25 s once it has seen the live numbers: the transfer
    # lasts 0.5 to 1.5 s here (both are printed with -s, and on failure).
    attack = attacker(lab, sport, dport, BULK_SEGMENTS, seconds=0.25)
    client = start(lab, "client", "bulk-client", "--host", sip, "--port", dport,
                   "--bytes", BULK_BYTES, "--bind-port", sport, "--timeout", 40)
    poller = None
    try:
        # Poll from the first packet on (the handshake) to the end.
        t0 = time.monotonic()
        while router.state(*flow) is None and time.monotonic() - t0 < 5:
            time.sleep(0.002)
        assert router.state(*flow) is not None, "the transfer's entry never appeared"
        poller = StatePoller(router, *flow)
        got = finish(client, 45, "bulk client")
    finally:
        if poller:
            poller.stop()
    att = finish(attack, 20, "attacker")
    sent = finish(server, 10, "bulk server")
    after = router.describe(*flow)
    # Until the server's FIN: the transfer proper (the client may still be
    # reading what it had buffered long after the FIN crossed the router).
    during = poller.seen(until=sent["t_fin"])
    print(f"\n{router.name}: transfer {got}\nattack {att}\nstates polled during the "
          f"transfer {during}, in all {poller.seen()}\n{after}")

    assert att.get("error") is None and att["sent"] == BULK_SEGMENTS, att
    assert got["error"] is None and got["received"] == BULK_BYTES and got["intact"], got
    assert sent["sent"] == BULK_BYTES, sent
    # The attack ran while the transfer did.
    assert got["t_start"] < att["t_first"] and att["t_last"] < got["t_end"], (got, att)
    # ESTABLISHED at every poll (the handshake's own states before it are fine,
    # and the poller starts after it in practice).
    assert during and set(during) <= {"ESTABLISHED", "SYN_SENT", "SYN_RECV"}, during
    assert during.get("ESTABLISHED", 0) >= 5, during
    # Polls during the attack: all of them ESTABLISHED.
    attack_polls = [s for t, s in poller.polls if att["t_first"] <= t <= att["t_last"]]
    assert attack_polls and set(attack_polls) == {"ESTABLISHED"}, poller.polls
    # After it: the endpoints' FINs moved it on, never a RST to CLOSE.
    assert set(poller.seen()) <= {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT",
                                  "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"}, poller.seen()
    assert router.state(*flow) in ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"), after
    check_invalid(router, inv0, router.invalid(), att)
    assert router.reached_server() == reached0, "crafted segments reached the server"
    if drop0 is not None:
        assert router.invalid_dropped() - drop0 == att["sent"]


# --------------------------------------------------------------------------
# 2: idle connection under attack, then silence


def test_idle_connection_survives_injection(router):
    lab = router.lab
    cip, sip = lab.client_ip, lab.server_ip
    dport, sport = ports()
    flow = (cip, sip, sport, dport)

    server = start(lab, "server", "echo-server", "--port", dport, "--timeout", 60)
    assert json_line(server, 10, "echo server")["event"] == "listening"
    client = start(lab, "client", "echo-client", "--host", sip, "--port", dport,
                   "--bind-port", sport, "--timeout", 60, stdin=subprocess.PIPE)
    assert json_line(client, 10, "echo client") == {"event": "connected", "sport": sport}

    def ping(n: int = 1000) -> dict:
        client.stdin.write(f"ping {n}\n")
        client.stdin.flush()
        return json_line(client, 10, "echo client")

    assert ping()["ok"]
    assert router.state(*flow) == "ESTABLISHED", router.describe(*flow)
    inv0, reached0 = router.invalid(), router.reached_server()
    drop0 = router.invalid_dropped()
    # The attacker learns the live numbers from one exchange, then sprays.
    attack = attacker(lab, sport, dport, IDLE_SEGMENTS, seconds=0.5)
    assert ping(100)["ok"]
    att = finish(attack, 20, "attacker")
    assert att.get("error") is None and att["sent"] == IDLE_SEGMENTS, att
    # Let the last of them reach the router before counting.
    time.sleep(0.2)
    inv1 = router.invalid()
    after_attack = router.state(*flow)
    assert after_attack == "ESTABLISHED", router.describe(*flow)

    poller = StatePoller(router, *flow, interval=0.25)
    time.sleep(SILENCE)
    seen = poller.stop().seen()
    listed = router.describe(*flow)
    print(f"\n{router.name}: attack {att}\nstates polled in the silence {seen}\n{listed}")
    assert set(seen) == {"ESTABLISHED"}, seen
    r = ping(2000)
    assert r == {"event": "ping", "ok": True, "bytes": 2000}, r
    assert router.state(*flow) == "ESTABLISHED", router.describe(*flow)
    # Only the crafted segments were INVALID (the two pings were not).
    check_invalid(router, inv0, router.invalid(), att)
    assert moved(inv1, router.invalid()) == {}
    assert router.reached_server() == reached0, "crafted segments reached the server"
    if drop0 is not None:
        assert router.invalid_dropped() - drop0 == att["sent"]
    client.stdin.write("quit\n")
    client.stdin.flush()
    client.wait(timeout=10)
    assert finish(server, 10, "echo server").get("error") is None
