"""Enforce mode with real traffic through the lab's router, IPv4 and IPv6.

The router runs `ctbpf run --mode enforce --config FILE` with the spec's
firewall (Iptables Tutorial, "The state machine"): the client side (cli0)
may open anything and gets its replies, the server side (srv0) may only
answer (established, related), TCP NEW must be a bare SYN, INVALID is
dropped. What reaches an endpoint is seen by a raw AF_PACKET sniffer on its
eth0 (tests/integration/enforcepeer.py), so "dropped" means the frame never
left the router, not that a socket failed to answer.

    test_spec_firewall[ipv4|ipv6]        client opens TCP/UDP/ping, server opens nothing,
                                         crafted INVALID and NEW-not-SYN never reach the
                                         server (and do in observe mode), ICMP errors pass
                                         as RELATED; drops create no entry; verdict counters,
                                         ctbpf policy and /metrics agree on every packet;
                                         --explain is a valid nft ruleset (both runs share
                                         one lab and tracker)
    test_explained_ruleset_does_the_same_in_the_kernel
                                         that nft ruleset, loaded in a lab without ctbpf,
                                         gives the same outcomes with nf_conntrack
    test_live_policy_changes_keep_connections
                                         20 + 20 TCP connections keep passing data and stay
                                         listed through observe -> enforce, NEW rules added
                                         and removed on srv0, a SIGHUP reload, refused bad
                                         policies (exit 2, one line, the policy unchanged)
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (REPO, StderrWatch, Tracker, _a_lab, bpf_unavailable, cannot,
                      lab_unavailable, new_pin_dir, remove_pin_dir)
from ctbpf.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

HERE = Path(__file__).resolve().parent
PEER = [sys.executable, str(HERE / "enforcepeer.py")]
HOLD = [sys.executable, str(HERE / "holdconns.py")]
STATES = ("new", "established", "related", "invalid", "untracked")

#: The spec's firewall: the client side opens, the server side only answers.
FIREWALL = """\
mode = "{mode}"

[policy.in.cli0]
accept = ["new", "established", "related"]
new_requires_syn = true
default = "drop"

[policy.in.srv0]
accept = ["established", "related"]
default = "drop"
{srv0_extra}
"""
CLI0 = {"interface": "cli0", "direction": "in", "accept": ["new", "established", "related"],
        "new": [], "new_requires_syn": True, "default": "drop"}
SRV0 = {"interface": "srv0", "direction": "in", "accept": ["established", "related"],
        "new": [], "new_requires_syn": False, "default": "drop"}
SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10


def firewall(mode: str = "enforce", srv0_extra: str = "") -> str:
    return FIREWALL.format(mode=mode, srv0_extra=srv0_extra)


# --------------------------------------------------------------------------
# the tracker, and what it says of its policy


class EnforceTracker(Tracker):
    """A Tracker with the policy's view: `ctbpf policy -o json`."""

    # -- policy and counters ---------------------------------------------

    def policy_json(self) -> dict:
        return json.loads(self.cli("policy", "-o", "json").stdout)

    def policy_only(self) -> dict:
        """The policy in force, without its counters."""
        doc = self.policy_json()
        return {"mode": doc["mode"], "policies": doc["policies"]}

    def verdicts(self) -> dict[tuple[str, str, str], int]:
        return {(p["policy"], p["state"], p["verdict"]): p["packets"]
                for p in self.policy_json()["packets"]}


def delta(before: dict, after: dict) -> dict:
    """Counters that moved, and by how much, but for untracked/accept: IPv6
    neighbour discovery and MLD (router solicitations from the endpoints
    come at any time) always pass, whatever the policy."""
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if after.get(k, 0) != before.get(k, 0) and k[1:] != ("untracked", "accept")}


@contextlib.contextmanager
def _enforcers(lab: Lab, tmp: Path):
    """Yields start(config_text, extra=()) -> a ready EnforceTracker on cli0
    and srv0 running `--config FILE` (tracker.config is the file's path).
    On the way out: stopped by SIGINT (exit 0, no XDP left) when all went
    well, killed otherwise; pins removed either way."""
    made: list[tuple[EnforceTracker, Path]] = []

    def start(config_text: str, extra: tuple = ()) -> EnforceTracker:
        cfg = tmp / f"ctbpf-{len(made)}.toml"
        cfg.write_text(config_text)
        pin = new_pin_dir()
        tr = EnforceTracker(lab, pin, extra=["--config", str(cfg), *extra])
        tr.config = cfg
        made.append((tr, pin))
        return tr.start()

    try:
        yield start
        for tr, _ in made:
            if tr.running:
                tr.stop(signal.SIGINT)
    finally:
        for tr, pin in made:
            tr.kill()
            remove_pin_dir(pin)
    left = [str(pin) for _, pin in made if pin.exists()]
    assert not left, f"pins left behind: {left}"


@pytest.fixture
def enforcer(lab, need_bpf, tmp_path):
    """A factory of enforce trackers in this test's lab (see _enforcers)."""
    with _enforcers(lab, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def firewall_tracker(tmp_path_factory):
    """One lab and one tracker running the spec's firewall (enforce) with
    --metrics-addr, for the IPv4 and the IPv6 run of test_spec_firewall:
    one BPF compile instead of two. ``.lab``, ``.metrics`` (HOST:PORT)."""
    for reason in (lab_unavailable(), bpf_unavailable()):
        if reason:
            cannot(f"BPF unavailable: {reason}")
    metrics = f"127.0.0.1:{30000 + secrets.randbelow(20000)}"
    with _a_lab() as the_lab, _enforcers(the_lab, tmp_path_factory.mktemp("fw")) as start:
        tr = start(firewall(), extra=("--mode", "enforce", "--metrics-addr", metrics))
        tr.metrics = metrics
        yield tr


# --------------------------------------------------------------------------
# endpoint tools


def peer(lab: Lab, ns: str, *args: object, timeout: float = 15.0) -> dict:
    cp = lab.exec(ns, [*PEER, *map(str, args)], timeout=timeout, cwd=REPO)
    assert cp.returncode == 0, f"enforcepeer {args} in {ns}: {cp.stderr.strip()}"
    return json.loads(cp.stdout.splitlines()[-1])


class Background:
    """An enforcepeer command (sniff, listen) running in a namespace until
    stop(): started, ready line awaited (bounded), result on stop."""

    def __init__(self, lab: Lab, ns: str, *args: object, seconds: float = 30.0) -> None:
        self.proc = lab.popen(ns, [*PEER, *map(str, args), "--seconds", str(seconds)],
                              stdin=subprocess.PIPE, cwd=REPO)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        line = self.proc.stdout.readline() if ready else ""
        if json.loads(line or "{}").get("event") != "ready":
            self.proc.kill()
            raise AssertionError(f"enforcepeer {args} not ready: {line!r}")

    def stop(self) -> dict:
        out, err = self.proc.communicate("stop\n", timeout=10)
        assert self.proc.returncode == 0, err
        return json.loads(out.splitlines()[-1])


def sniff(lab: Lab, ns: str) -> Background:
    return Background(lab, ns, "sniff", "--iface", "eth0")


def frames_between(frames: list[dict], src: str, dst: str, direction: str) -> list[dict]:
    return [f for f in frames if f["src"] == src and f["dst"] == dst and f["dir"] == direction]


def free_ports(n: int) -> list[int]:
    base = 20000 + secrets.randbelow(20000)
    return [base + i for i in range(n)]


def ping(lab: Lab, src: str, dst: str, count: int = 1, wait: float = 1.0) -> bool:
    cp = lab.exec(src, ["ping", "-6" if ":" in dst else "-4", "-n", "-q", "-c", str(count),
                        "-i", "0.2", "-W", f"{wait:g}", dst], timeout=count * (wait + 0.2) + 5)
    return cp.returncode == 0


# --------------------------------------------------------------------------
# metrics


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(lab: Lab, addr: str) -> dict[tuple, float]:
    """Every sample of the daemon's /metrics, scraped from inside the router:
    {(name, ((label, value), ...)): value}."""
    code = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            "sys.argv[1], timeout=5).read().decode())")
    cp = lab.exec("router", [sys.executable, "-c", code, f"http://{addr}/metrics"], timeout=15)
    assert cp.returncode == 0, cp.stderr
    samples = {}
    for line in cp.stdout.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = tuple(sorted(_LABEL.findall(m[2] or "")))
            samples[(m[1], labels)] = float(m[3])
    return samples


def policy_metric(samples: dict, iface: str, state: str, verdict: str,
                  direction: str = "in") -> float:
    key = ("ctbpf_policy_packets_total", (("direction", direction), ("interface", iface),
                                          ("state", state), ("verdict", verdict)))
    assert key in samples, f"no sample {key}"
    return samples[key]


def dropped_metric(samples: dict, cause: str) -> float:
    key = ("ctbpf_dropped_packets_total", (("cause", cause),))
    assert key in samples, f"no sample {key}"
    return samples[key]


# --------------------------------------------------------------------------
# 1, 3, 4: the spec's firewall


def addresses(lab: Lab, family: int) -> tuple[str, str]:
    return ((lab.client_ip, lab.server_ip) if family == 4 else
            (lab.client_ip6, lab.server_ip6))


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_spec_firewall(firewall_tracker, family):
    tr, lab, metrics = firewall_tracker, firewall_tracker.lab, firewall_tracker.metrics
    cip, sip = addresses(lab, family)
    # What the other family's run may have left: observe mode, tcp_loose=0.
    tr.cli("policy", "set", "--mode", "enforce")
    tr.cli("set", "tcp_loose=1")
    # The policy lines go to stderr: Tracker.start took stdout's first line
    # as the ready line, and refuses anything else there.
    assert tr.ready_line.startswith("ctbpf: tracking on ")
    assert tr.policy_only() == {"mode": "enforce", "policies": [CLI0, SRV0]}
    tcp, udp, closed, back_tcp, back_udp, probe = free_ports(6)

    # -- the client opens TCP, UDP and ping flows and gets its replies ----
    before = tr.verdicts()
    srv = lab.traffic_popen("server", "tcp-server", "--port", tcp, "--family", family,
                            "--timeout", 10)
    assert lab.wait_listening("server", tcp)
    cp = lab.traffic("client", "tcp-client", "--host", sip, "--port", tcp, "--data", 4000,
                     "--timeout", 5)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout.splitlines()[-1])["received"] == 4000
    assert srv.wait(timeout=10) == 0
    usrv = lab.traffic_popen("server", "udp-server", "--port", udp, "--family", family,
                             "--count", 3, "--timeout", 10)
    assert lab.wait_listening("server", udp, "udp")
    cp = lab.traffic("client", "udp-client", "--host", sip, "--port", udp, "--count", 3)
    assert cp.returncode == 0, cp.stderr
    assert usrv.wait(timeout=10) == 0
    assert ping(lab, "client", sip, count=3)
    moved = delta(before, tr.verdicts())
    # One NEW per flow (SYN, first datagram, first echo request), everything
    # else ESTABLISHED; nothing dropped.
    assert moved[("in.cli0", "new", "accept")] == 3, moved
    assert {v for (_, _, v) in moved} == {"accept"}, moved
    assert {s for (_, s, _) in moved} == {"new", "established"}, moved
    listed = tr.list_json("--src", cip)
    assert {(f["proto"], f["orig"].get("dport")) for f in listed} >= \
        {("tcp", tcp), ("udp", udp)}, listed

    # -- the server can open nothing towards the client -------------------
    before, m0 = tr.verdicts(), scrape(lab, metrics)
    stats0 = tr.stats()
    c_sniff, s_sniff = sniff(lab, "client"), sniff(lab, "server")
    tl = Background(lab, "client", "listen", "--family", family, "--port", back_tcp)
    ul = Background(lab, "client", "listen", "--family", family, "--port", back_udp, "--udp")
    assert peer(lab, "server", "connect", "--host", cip, "--port", back_tcp,
                "--timeout", 1.5) == {"result": "timeout"}
    assert peer(lab, "server", "udp-send", "--host", cip, "--port", back_udp,
                "--count", 3)["sent"] == 3
    assert not ping(lab, "server", cip, count=1, wait=1.0)
    assert tl.stop()["accepted"] == 0
    assert ul.stop()["datagrams"] == 0
    reached = frames_between(c_sniff.stop()["frames"], sip, cip, "in")
    assert reached == [], f"server -> client frames reached the client: {reached}"
    sent = frames_between(s_sniff.stop()["frames"], sip, cip, "out")
    syns = [f for f in sent if f["proto"] == 6]
    assert syns and all(f["flags"] == SYN and f["dport"] == back_tcp for f in syns), sent
    assert [f["dport"] for f in sent if f["proto"] == 17] == [back_udp] * 3, sent
    echo = 8 if family == 4 else 128
    assert [f["type"] for f in sent if f["proto"] in (1, 58)] == [echo], sent
    # Every one of them judged NEW on srv0 and dropped, nothing else moved.
    moved = delta(before, tr.verdicts())
    assert moved == {("in.srv0", "new", "drop"): len(sent)}, (moved, sent)
    m1 = scrape(lab, metrics)
    assert policy_metric(m1, "srv0", "new", "drop") - \
        policy_metric(m0, "srv0", "new", "drop") == len(sent)
    assert dropped_metric(m1, "policy") - dropped_metric(m0, "policy") == len(sent)
    assert dropped_metric(m1, "table_full") == dropped_metric(m0, "table_full") == 0
    assert m1[("ctbpf_enforce", ())] == 1
    stats1 = tr.stats()
    assert stats1["events"]["drop"] - stats0["events"]["drop"] == len(sent)
    # A dropped packet creates no entry.
    assert tr.list_json("--src", sip) == []
    assert stats1["events"]["insert"] == stats0["events"]["insert"]

    # -- ICMP errors of tracked flows pass as RELATED --------------------
    before, m0 = tr.verdicts(), scrape(lab, metrics)
    assert peer(lab, "client", "udp-probe", "--host", sip, "--port", closed,
                "--timeout", 2)["result"] == "refused"
    moved = delta(before, tr.verdicts())
    assert moved == {("in.cli0", "new", "accept"): 1,
                     ("in.srv0", "related", "accept"): 1}, moved
    m1 = scrape(lab, metrics)
    assert policy_metric(m1, "srv0", "related", "accept") - \
        policy_metric(m0, "srv0", "related", "accept") == 1
    text = tr.cli("policy").stdout.splitlines()
    srv_counts = text[text.index("srv0:in  accept established,related; else drop") + 1]
    assert f"related/accept {tr.verdicts()[('in.srv0', 'related', 'accept')]}" in srv_counts

    # -- INVALID and NEW-not-SYN from the client never reach the server ----
    def crafted(sports: dict[str, int], tcp_loose: int) -> tuple[list[dict], dict]:
        """Send the crafted segments; return what the server saw of them
        and how the verdicts moved."""
        tr.cli("set", f"tcp_loose={tcp_loose}")
        before = tr.verdicts()
        s_sniff = sniff(lab, "server")
        peer(lab, "client", "craft", "--src", cip, "--dst", sip,
             *(f"{port}:{probe}:{flags}" for flags, port in sports.items()))
        # Wait (bounded) until the router judged them all, then give what it
        # forwarded time to reach the sniffer.
        deadline = time.monotonic() + 5
        while True:
            moved = delta(before, tr.verdicts())
            judged = sum(n for (pol, _, _), n in moved.items() if pol == "in.cli0")
            if judged >= len(sports) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        seen = [f for f in frames_between(s_sniff.stop()["frames"], cip, sip, "in")
                if f["proto"] == 6 and f["dport"] == probe]
        return seen, moved

    m0 = scrape(lab, metrics)
    invalid = {"SF": 41001, "R": 41002, "A": 41003}   # SYN+FIN, stray RST, ACK (tcp_loose=0)
    seen, moved = crafted(invalid, tcp_loose=0)
    assert seen == [], f"INVALID packets reached the server: {seen}"
    assert moved == {("in.cli0", "invalid", "drop"): 3}, moved
    not_syn = {"A": 41004}                             # tcp_loose=1 picks it up: NEW, not SYN
    seen, moved = crafted(not_syn, tcp_loose=1)
    assert seen == [], f"a NEW-not-SYN ACK reached the server: {seen}"
    assert moved == {("in.cli0", "new", "drop"): 1}, moved
    assert tr.list_json("--src", cip, "-p", "tcp", "--dport", probe) == []
    m1 = scrape(lab, metrics)
    assert policy_metric(m1, "cli0", "invalid", "drop") - \
        policy_metric(m0, "cli0", "invalid", "drop") == 3
    assert policy_metric(m1, "cli0", "new", "drop") - \
        policy_metric(m0, "cli0", "new", "drop") == 1
    assert dropped_metric(m1, "policy") - dropped_metric(m0, "policy") == 4

    # -- --explain is a ruleset nft accepts ------------------------------
    ruleset = tr.cli("policy", "--explain").stdout
    assert "\t\tiifname \"cli0\" jump in_cli0\n" in ruleset
    cp = lab.exec("router", ["nft", "-c", "-f", "-"], input=ruleset, timeout=15)
    assert cp.returncode == 0, f"nft -c refused ctbpf policy --explain:\n{cp.stderr}\n{ruleset}"

    # -- control: the same packets DO pass in observe mode ---------------
    out = tr.cli("policy", "set", "--mode", "observe").stdout.splitlines()
    assert out == ["policy in.cli0: accept new,established,related; new tcp must be SYN; "
                   "else drop (observe)",
                   "policy in.srv0: accept established,related; else drop (observe)"]
    seen, moved = crafted(invalid, tcp_loose=0)
    assert sorted((f["sport"], f["flags"]) for f in seen) == \
        [(41001, SYN | FIN), (41002, RST), (41003, ACK)], seen
    assert moved.get(("in.cli0", "invalid", "would_drop")) == 3, moved
    seen, moved = crafted(not_syn, tcp_loose=1)
    assert [(f["sport"], f["flags"]) for f in seen] == [(41004, ACK)], seen
    assert moved.get(("in.cli0", "new", "would_drop")) == 1, moved
    assert not any(v == "drop" for (_, _, v) in moved), moved
    before = tr.verdicts()
    assert ping(lab, "server", cip, count=1, wait=2.0)
    assert delta(before, tr.verdicts())[("in.srv0", "new", "would_drop")] == 1
    assert scrape(lab, metrics)[("ctbpf_enforce", ())] == 0


def test_explained_ruleset_does_the_same_in_the_kernel(firewall_tracker, lab):
    """`ctbpf policy --explain` claims to be the same policy for a kernel
    router with nf_conntrack: loaded with nft into a fresh lab's router (no
    ctbpf there), the spec's firewall gives the same outcomes as above."""
    ruleset = firewall_tracker.cli("policy", "--explain").stdout
    lab.nft("router", ruleset)
    lab.sysctl("router", net__netfilter__nf_conntrack_tcp_loose=0)
    tcp, back, probe = free_ports(3)
    for family in (4, 6):
        cip, sip = addresses(lab, family)
        srv = lab.traffic_popen("server", "tcp-server", "--port", tcp, "--family", family,
                                "--timeout", 10)
        assert lab.wait_listening("server", tcp)
        cp = lab.traffic("client", "tcp-client", "--host", sip, "--port", tcp, "--timeout", 5)
        assert cp.returncode == 0, cp.stderr
        assert srv.wait(timeout=10) == 0
        assert ping(lab, "client", sip)
        s_sniff, c_sniff = sniff(lab, "server"), sniff(lab, "client")
        assert peer(lab, "server", "connect", "--host", cip, "--port", back,
                    "--timeout", 1.0) == {"result": "timeout"}
        assert not ping(lab, "server", cip, wait=0.5)
        peer(lab, "client", "craft", "--src", cip, "--dst", sip,
             f"43001:{probe}:SF", f"43002:{probe}:R", f"43003:{probe}:A")
        time.sleep(0.3)
        assert frames_between(c_sniff.stop()["frames"], sip, cip, "in") == []
        assert [f for f in frames_between(s_sniff.stop()["frames"], cip, sip, "in")
                if f["proto"] == 6 and f["dport"] == probe] == []


# --------------------------------------------------------------------------
# 2: live policy changes under traffic


class HoldConns:
    """holdconns.py: a server and a client holding `count` connections."""

    def __init__(self, lab: Lab, host: str, port: int, count: int, family: int) -> None:
        self.server = lab.popen("server", [*HOLD, "server", "--port", port, "--family", family,
                                           "--timeout", 80], cwd=REPO)
        ready, _, _ = select.select([self.server.stdout], [], [], 10.0)
        line = self.server.stdout.readline() if ready else ""
        assert json.loads(line or "{}").get("event") == "listening", line
        self.client = lab.popen("client", [*HOLD, "client", "--host", host, "--port", port,
                                           "--count", count, "--interval", 0.2,
                                           "--timeout", 75],
                                stdin=subprocess.PIPE, cwd=REPO)
        self.count = count
        self.port = port
        first = self.read()
        assert first["event"] == "connected" and len(first["ports"]) == count, first

    def read(self, timeout: float = 20.0) -> dict:
        ready, _, _ = select.select([self.client.stdout], [], [], timeout)
        line = self.client.stdout.readline() if ready else ""
        assert line, f"holdconns client said nothing within {timeout:g}s " \
                     f"(exit {self.client.poll()})"
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.client.stdin.write(cmd + "\n")
        self.client.stdin.flush()
        return self.read()

    def check(self) -> None:
        got = self.ask("check")
        assert got == {"event": "check", "ok": self.count, "failed": [],
                       "total": self.count}, got

    def close(self) -> dict:
        bye = self.ask("quit")
        self.client.wait(timeout=10)
        self.server.terminate()
        self.server.wait(timeout=10)
        return bye


def test_live_policy_changes_keep_connections(lab, enforcer):
    n = 20
    p4, p6, back, back2 = free_ports(4)
    tr = enforcer(firewall(mode="observe"))
    assert tr.policy_only() == {"mode": "observe", "policies": [CLI0, SRV0]}
    watch = StderrWatch(tr)
    holds = [HoldConns(lab, lab.server_ip, p4, n, 4), HoldConns(lab, lab.server_ip6, p6, n, 6)]

    def all_alive(step: str) -> None:
        for h in holds:
            h.check()
            count = tr.cli("count", "-p", "tcp", "--dport", h.port, "--state", "ESTABLISHED")
            assert count.stdout == f"{n}\n", f"{step}: port {h.port}: {count.stdout!r}"

    def server_connects(port: int) -> str:
        listener = Background(lab, "client", "listen", "--family", 4, "--port", port)
        result = peer(lab, "server", "connect", "--host", lab.client_ip, "--port", port,
                      "--timeout", 1.0)["result"]
        accepted = listener.stop()["accepted"]
        assert accepted == (1 if result == "connected" else 0), (result, accepted)
        return result

    all_alive("observe")

    # observe -> enforce
    out = tr.cli("policy", "set", "--mode", "enforce").stdout.splitlines()
    assert out == ["policy in.cli0: accept new,established,related; new tcp must be SYN; "
                   "else drop (enforce)",
                   "policy in.srv0: accept established,related; else drop (enforce)"]
    assert server_connects(back) == "timeout"
    all_alive("enforce")

    # a NEW rule on srv0: the server may now open tcp/back, and only that
    out = tr.cli("policy", "set", "srv0", "accept=established,related",
                 f"new=tcp/{back}").stdout
    assert out == (f"policy in.srv0: accept new,established,related; new only tcp/{back}; "
                   f"else drop (enforce)\n")
    assert server_connects(back) == "connected"
    assert server_connects(back2) == "timeout"
    all_alive("srv0 new rule added")

    # ... and removed again
    out = tr.cli("policy", "set", "srv0", "accept=established,related").stdout
    assert out == "policy in.srv0: accept established,related; else drop (enforce)\n"
    assert server_connects(back) == "timeout"
    all_alive("srv0 new rule removed")

    # SIGHUP: the edited file lets the server ping (and only ping)
    tr.config.write_text(firewall(srv0_extra='new = ["icmp", "ipv6-icmp"]'))
    tr.proc.send_signal(signal.SIGHUP)
    watch.wait_for("reload ", timeout=8.0)
    watch.wait_for("policy in.srv0: accept new,established,related; new only icmp, "
                   "ipv6-icmp; else drop (enforce)", timeout=8.0)
    srv0 = dict(SRV0, accept=["new", "established", "related"], new=["icmp", "ipv6-icmp"])
    assert tr.policy_only() == {"mode": "enforce", "policies": [CLI0, srv0]}
    assert ping(lab, "server", lab.client_ip) and ping(lab, "server", lab.client_ip6)
    assert server_connects(back) == "timeout"
    all_alive("SIGHUP reload")

    # bad policies are refused whole: exit 2, one line, nothing changes (the
    # policy and mode, that is: the counters move with the held connections)
    running = tr.policy_only()
    bad = [
        (("policy", "set", "cli0", "accept=new,establishd"),
         "ctbpf: error: cli0:in.accept: unknown state 'establishd'; allowed: "
         "new, established, related, invalid, untracked"),
        (("policy", "set", "srv0", "accept=related"),
         "ctbpf: error: policy in.srv0: established is not accepted and the default is "
         "drop, which cuts off every connection through srv0 (this session's too); add "
         "force = true (or --force) if you mean it"),
        (("policy", "set", "--mode", "enforce", "cli0", "new=tcp/99999"),
         "ctbpf: error: cli0:in.new: port '99999' must be a number from 1 to 65535"),
    ]
    for argv, line in bad:
        cp = tr.cli(*argv, check=False)
        assert (cp.returncode, cp.stdout, cp.stderr) == (2, "", line + "\n"), argv
        assert tr.policy_only() == running, argv
    # ... also from the config file: the daemon keeps what runs
    tr.config.write_text(firewall().replace('accept = ["established", "related"]',
                                            'accept = ["established", "bogus"]'))
    tr.proc.send_signal(signal.SIGHUP)
    watch.wait_for("unknown state 'bogus'; allowed: new, established, related, invalid, "
                   "untracked\n", timeout=8.0)
    refused = [line for line in watch.text.splitlines() if "reload refused" in line]
    assert refused == [f"ctbpf: reload refused: {tr.config}: [policy.in.srv0].accept: unknown "
                       f"state 'bogus'; allowed: new, established, related, invalid, "
                       f"untracked"], watch.text
    assert watch.text.endswith(refused[0] + "\n"), watch.text
    assert tr.policy_only() == running
    all_alive("bad policies refused")

    # --explain of a richer policy is still a ruleset nft accepts
    tr.cli("policy", "set", "--mode", "enforce", "cli0:out", "accept=new,established",
           "new=tcp/1000-2000 to 10.0.0.0/8,udp/53 from fd00::/16,icmp,any",
           "new_requires_syn=1", "default=accept")
    ruleset = tr.cli("policy", "--explain").stdout
    assert "chain output {" in ruleset and "chain out_cli0 {" in ruleset
    cp = lab.exec("router", ["nft", "-c", "-f", "-"], input=ruleset, timeout=15)
    assert cp.returncode == 0, f"nft -c refused ctbpf policy --explain:\n{cp.stderr}\n{ruleset}"
    all_alive("richer policy")

    for h in holds:
        bye = h.close()
        assert bye["dead"] == [] and bye["sent"] > 0 and bye["received"] > 0, bye

    # A policy added after another was removed starts from zero counts
    # (its row of ct_verdicts is not the removed one's).
    assert any(p["policy"] == "in.srv0" for p in tr.policy_json()["packets"])
    assert tr.cli("policy", "clear", "srv0").stdout == \
        "policy in.srv0: removed (everything passes)\n"
    tr.cli("policy", "set", "srv0:out", "accept=new,established,related")
    assert [p for p in tr.policy_json()["packets"] if p["policy"].endswith(".srv0")] == []
