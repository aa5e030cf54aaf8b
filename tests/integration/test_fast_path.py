"""The fast path (`ctbpf run --fast-path`) on real traffic through the lab's
router: ESTABLISHED, ASSURED flows are forwarded at XDP, everything the
kernel must see still goes up its stack.

Both XDP modes are exercised. Generic mode (the default on veth) redirects
the skb; the end hosts' TSO and GSO are off so that their data segments
cross the router one by one (a 64 KB GSO segment is larger than the MTU and
goes up the stack, where the kernel segments it: counted as `mtu`). Native
mode redirects XDP frames: the end hosts' veths have GRO on (a veth can only
receive XDP frames then) and checksum offload off, as NICs would have it on
the wire; `test_offloaded_checksums_go_up_the_stack` covers the veth case
where they are not.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CTBPF, REPO
from ctbpf.lab.traffic import parse_result

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

PEER = Path(__file__).with_name("fastpeer.py")
END_FEATURES = {"generic": ["tso", "off", "gso", "off"],
                "native": ["gro", "on", "tx", "off"]}


METRICS_PORT = 9477   # in the router's own namespace: no other test's


def _scrape(lab) -> str:
    cp = lab.exec("router", [sys.executable, "-c", "import urllib.request, sys; sys.stdout.write("
                             f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', "
                             "timeout=10).read().decode())"], timeout=30)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def _metric(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not in the metrics")


def _port() -> int:
    return 20000 + secrets.randbelow(20000)


@pytest.fixture(params=["generic", "native"])
def fast(request, lab, pin_dir, start_tracker):
    """(lab, tracker, mode): a fast-path tracker on the router in this XDP mode."""
    mode = request.param
    for ns in ("client", "server"):
        cp = lab.exec(ns, ["ethtool", "-K", "eth0", *END_FEATURES[mode]], timeout=10)
        assert cp.returncode == 0, cp.stderr
    tr = start_tracker(pin_dir, extra=["--fast-path", "--xdp-mode", mode,
                                       "--metrics-addr", f"127.0.0.1:{METRICS_PORT}"])
    assert f"cli0 ({mode})" in tr.ready_line and f"srv0 ({mode})" in tr.ready_line
    yield lab, tr, mode
    tr.stop()
    assert "fast path on" in tr.stderr
    assert "cannot send XDP frames" not in tr.stderr, tr.stderr


def _fast_stats(tr) -> dict:
    s = tr.stats()["fast_path"]
    assert s["on"] is True
    return s["interfaces"]


def _delta(after: dict, before: dict) -> dict:
    return {i: {k: v - before.get(i, {}).get(k, 0) for k, v in c.items()}
            for i, c in after.items()}


def _peer(lab, ns: str, *args: object, timeout: float = 30.0) -> dict:
    cp = lab.exec(ns, [sys.executable, str(PEER), *map(str, args)], timeout=timeout,
                  env=lab.traffic_env())
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout.strip().splitlines()[-1])


def _echo(lab, port: int, family: int, count: int, timeout: float = 20.0) -> subprocess.Popen:
    p = lab.popen("server", [sys.executable, str(PEER), "echo", "--port", str(port),
                             "--family", str(family), "--count", str(count),
                             "--timeout", str(timeout)],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                  env=lab.traffic_env())
    assert json.loads(p.stdout.readline())["listening"] == port
    return p


def _echoed(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


class _Events:
    """`ctbpf events` in the router while a transfer runs: the states its
    flows go through."""

    def __init__(self, tr) -> None:
        self.proc = tr.lab.popen("router", [*CTBPF, "-v", "events", "--pin-dir", str(tr.pin_dir)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=tr.lab.traffic_env(), cwd=REPO)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if "receiving events" in line or not line:
                break
        assert self.proc.poll() is None, self.proc.stderr.read()

    def states(self, port: int) -> list[str]:
        time.sleep(0.5)   # the last events are relayed
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        seq = []
        for line in out.splitlines():
            if f"dport={port} " not in line + " ":
                continue
            words = line.split()
            kind = words[0].strip("[]")
            state = next((w for w in words[4:6] if w.isupper() and "=" not in w), "")
            if not seq or seq[-1] != (kind, state):
                seq.append((kind, state))
        return seq


def _transfer(lab, tr, family: int, size: int) -> tuple[dict, list]:
    host = lab.server_ip if family == 4 else lab.server_ip6
    port = _port()
    events = _Events(tr)
    srv = lab.traffic_popen("server", "tcp-server", "--port", port, "--family", family,
                            "--timeout", 20)
    assert lab.wait_listening("server", port)
    r = lab.traffic("client", "tcp-client", "--host", host, "--port", port, "--data", size,
                    "--timeout", 20)
    assert r.returncode == 0, r.stderr
    srv.wait(timeout=20)
    return parse_result(r.stdout), events.states(port)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_bulk_goes_through_the_fast_path_tracked_as_without_it(fast, family):
    lab, tr, mode = fast
    size = 1_000_000
    # The same transfer with the fast path off first: the states to expect.
    tr.cli("set", "fast_path=0")
    _, plain_states = _transfer(lab, tr, family, size)
    tr.cli("set", "fast_path=1")
    before = _fast_stats(tr)
    result, states = _transfer(lab, tr, family, size)
    d = _delta(_fast_stats(tr), before)

    assert result["sent"] == size and result["received"] == size   # echoed intact
    assert states == plain_states, (states, plain_states)
    assert [s for _, s in states][-1] == "TIME_WAIT", states
    # About 700 full segments each way: nearly all of them forwarded at XDP.
    assert d["cli0"]["rx_packets"] > 400, d
    assert d["srv0"]["rx_packets"] > 400, d
    assert d["cli0"]["rx_packets"] == d["srv0"]["tx_packets"]
    # SYN, SYN/ACK and each side's FIN went up.
    assert d["cli0"]["pass_tcp_flags"] >= 2 and d["srv0"]["pass_tcp_flags"] >= 2, d
    assert all(d[i][f"pass_{c}"] == 0 for i in d for c in ("no_xmit", "checksum", "no_route")), d


@pytest.mark.parametrize("family", [4, 6])
def test_udp_request_response_arrives_with_one_hop_less(fast, family):
    lab, tr, mode = fast
    port, sport = _port(), _port()
    host = lab.server_ip if family == 4 else lab.server_ip6
    srv = _echo(lab, port, family, 40)
    before = _fast_stats(tr)
    sent = _peer(lab, "client", "send", "--host", host, "--port", port, "--sport", sport,
                 "--count", 40, "--interval", 0.1)
    got = _echoed(srv)
    d = _delta(_fast_stats(tr), before)
    assert sent["echoed"] == 40 and got["seqs"] == list(range(40))
    assert set(got["ttls"]) == {63}, got["ttls"]     # sent with 64: one router
    # A UDP flow is a stream, ASSURED, once answered and 2 s old (as in the
    # kernel): the last 15 or so requests and replies take the fast path.
    assert d["cli0"]["rx_packets"] >= 10 and d["srv0"]["rx_packets"] >= 10, d
    assert d["cli0"]["rx_packets"] + d["cli0"]["pass_not_assured"] == 40, d
    flows = [f for f in tr.list_json() if f["proto"] == "udp" and f["orig"]["dport"] == port]
    assert len(flows) == 1 and "ASSURED" in flows[0]["flags"], flows
    assert flows[0]["packets"]["orig"] == 40 and flows[0]["packets"]["reply"] == 40, flows
    # The metrics say the same as `ctbpf stats`.
    st, text = _fast_stats(tr), _scrape(lab)
    assert _metric(text, "ctbpf_fast_path") == 1
    assert _metric(text, "ctbpf_fast_path_packets_total", interface="cli0",
                   direction="in") == st["cli0"]["rx_packets"]
    assert _metric(text, "ctbpf_fast_path_passed_packets_total", interface="cli0",
                   cause="not_assured") == st["cli0"]["pass_not_assured"]


@pytest.mark.parametrize("family", [4, 6])
def test_ttl_1_and_too_big_get_the_kernels_icmp(fast, family):
    lab, tr, mode = fast
    port, sport = _port(), _port()
    host = lab.server_ip if family == 4 else lab.server_ip6
    srv = _echo(lab, port, family, 20)
    _peer(lab, "client", "send", "--host", host, "--port", port, "--sport", sport,
          "--count", 5, "--interval", 0.6)   # the flow is a stream now (2 s, answered)
    before = _fast_stats(tr)
    hop = _peer(lab, "client", "send", "--host", host, "--port", port, "--sport", sport,
                "--count", 1, "--ttl", 1)
    lab.exec("router", ["ip", "link", "set", "dev", "srv0", "mtu", "1280"], timeout=10)
    try:
        big = _peer(lab, "client", "send", "--host", host, "--port", port, "--sport", sport,
                    "--count", 1, "--size", 1400, "--df")
    finally:
        lab.exec("router", ["ip", "link", "set", "dev", "srv0", "mtu", "1500"], timeout=10)
    d = _delta(_fast_stats(tr), before)
    srv.kill()
    srv.communicate(timeout=10)
    if family == 4:
        assert [11, 0] in [e[:2] for e in hop["errors"]], hop    # time exceeded
        assert [3, 4, 1280] in big["errors"], big                # fragmentation needed
    else:
        assert [3, 0] in [e[:2] for e in hop["errors"]], hop     # ICMPv6 time exceeded
        assert [2, 0, 1280] in big["errors"], big                # packet too big
    assert d["cli0"]["pass_ttl"] == 1 and d["cli0"]["pass_mtu"] == 1, d
    assert d["cli0"]["rx_packets"] == 0, d


def test_route_and_neighbour_changes_are_followed_within_a_second(fast):
    lab, tr, mode = fast
    port, sport = _port(), _port()
    count, interval = 700, 0.01
    # It cannot get them all (some are blackholed): it reports when its time is up.
    srv = _echo(lab, port, 4, count, timeout=count * interval + 4)
    sender = lab.popen("client", [sys.executable, str(PEER), "send", "--host", lab.server_ip,
                                  "--port", str(port), "--sport", str(sport),
                                  "--count", str(count), "--interval", str(interval)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=lab.traffic_env())
    new_mac = "02:00:5e:" + ":".join(f"{secrets.randbelow(256):02x}" for _ in range(3))
    time.sleep(2.5)   # answered and 2 s old: the flow is ASSURED and takes the fast path
    # The server gets a new MAC, the router's neighbour entry follows.
    lab.exec("server", ["ip", "link", "set", "dev", "eth0", "address", new_mac], timeout=10)
    lab.exec("router", ["ip", "neigh", "replace", lab.server_ip, "lladdr", new_mac,
                        "dev", "srv0", "nud", "reachable"], timeout=10)
    t_neigh = time.monotonic()
    time.sleep(1.4)
    t_route_asked = time.monotonic()
    lab.exec("router", ["ip", "route", "add", "blackhole", f"{lab.server_ip}/32"], timeout=10)
    t_route = time.monotonic()
    time.sleep(1.4)
    t_back_asked = time.monotonic()
    lab.exec("router", ["ip", "route", "del", "blackhole", f"{lab.server_ip}/32"], timeout=10)
    t_back = time.monotonic()
    out, err = sender.communicate(timeout=30)
    assert sender.returncode == 0, err
    sent = json.loads(out.strip().splitlines()[-1])
    got = set(_echoed(srv)["seqs"])
    times = sent["times"]

    def sent_between(a: float, b: float) -> set[int]:
        return {i for i, t in enumerate(times) if a <= t < b}

    after_neigh = sent_between(t_neigh + 1.0, t_route_asked)
    blackholed = sent_between(t_route + 1.0, t_back_asked)
    after_back = sent_between(t_back + 1.0, float("inf"))
    assert after_neigh and blackholed and after_back
    assert after_neigh <= got, f"lost after the neighbour change: {sorted(after_neigh - got)}"
    assert not blackholed & got, f"delivered through a blackhole: {sorted(blackholed & got)}"
    assert after_back <= got, f"lost after the route came back: {sorted(after_back - got)}"
    st = _fast_stats(tr)
    assert st["cli0"]["pass_no_route"] >= len(blackholed), st
    assert st["cli0"]["rx_packets"] >= len(after_neigh) + len(after_back) - 5, st


def test_offloaded_checksums_go_up_the_stack(lab, pin_dir, start_tracker):
    """Native XDP on a veth whose sender leaves checksums to offload (the
    default): an XDP frame would carry the checksum unfinished, so those
    frames go up the stack, counted, and the bytes still arrive intact."""
    for ns in ("client", "server"):
        lab.exec(ns, ["ethtool", "-K", "eth0", "gro", "on"], timeout=10)
    tr = start_tracker(pin_dir, extra=["--fast-path", "--xdp-mode", "native",
                                       "--metrics-addr", "none"])
    result, _ = _transfer(lab, tr, 4, 300_000)
    st = _fast_stats(tr)
    assert result["received"] == 300_000
    assert st["cli0"]["pass_checksum"] > 100 and st["cli0"]["rx_packets"] == 0, st
    tr.stop()


def test_a_removed_interface_is_let_go_and_the_others_keep_forwarding(lab, pin_dir,
                                                                      start_tracker):
    lab.exec("router", ["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1"],
             timeout=10)
    lab.exec("router", ["ip", "link", "set", "x0", "up"], timeout=10)
    for ns in ("client", "server"):
        lab.exec(ns, ["ethtool", "-K", "eth0", "tso", "off", "gso", "off"], timeout=10)
    tr = start_tracker(pin_dir, ifaces=("cli0", "srv0", "x0"),
                       extra=["--fast-path", "--metrics-addr", "none"])
    assert set(_fast_stats(tr)) == {"cli0", "srv0", "x0"}
    lab.exec("router", ["ip", "link", "del", "x0"], timeout=10)
    time.sleep(1.5)
    assert tr.running
    result, _ = _transfer(lab, tr, 4, 200_000)
    st = _fast_stats(tr)
    assert result["received"] == 200_000
    assert set(st) == {"cli0", "srv0"} and st["cli0"]["rx_packets"] > 50, st
    tr.ifaces = ("cli0", "srv0")   # x0 is gone: nothing to check there
    tr.stop()
    after = tr.stderr.split("skipping the kernel's forward hooks", 1)[1]
    gone = [line for line in after.splitlines() if "x0" in line]
    assert gone == ["ctbpf: interface x0 is gone: no longer tracked there; still tracking on "
                    "cli0, srv0"], tr.stderr
    assert "Traceback" not in tr.stderr


def test_a_resize_keeps_the_fast_path_forwarding(lab, pin_dir, start_tracker):
    """`ctbpf set max=N` rebuilds the datapath on new maps: the new programs
    get the interfaces' slots again, and the counters go on where they were."""
    for ns in ("client", "server"):
        lab.exec(ns, ["ethtool", "-K", "eth0", "tso", "off", "gso", "off"], timeout=10)
    tr = start_tracker(pin_dir, extra=["--fast-path", "--max", "4096", "--metrics-addr", "none"])
    result, _ = _transfer(lab, tr, 4, 200_000)
    before = _fast_stats(tr)
    assert result["received"] == 200_000 and before["cli0"]["rx_packets"] > 50, before
    cp = tr.cli("set", "max=16384", timeout=120)
    assert "-> 16384" in cp.stdout, cp.stdout
    result, _ = _transfer(lab, tr, 4, 200_000)
    d = _delta(_fast_stats(tr), before)
    assert result["received"] == 200_000
    assert d["cli0"]["rx_packets"] > 50 and d["srv0"]["rx_packets"] > 50, d
    tr.stop()
    assert "Traceback" not in tr.stderr


def test_native_xdp_into_a_veth_that_cannot_take_xdp_frames(lab, pin_dir, start_tracker):
    """A veth whose peer has neither GRO nor an XDP program drops the XDP
    frames redirected into it: ctbpf says so in one line and sends those
    packets up the stack instead; when the peer turns GRO on, it forwards."""
    tr = start_tracker(pin_dir, extra=["--fast-path", "--xdp-mode", "native",
                                       "--metrics-addr", "none"])
    for ns in ("client", "server"):
        lab.exec(ns, ["ethtool", "-K", "eth0", "tx", "off"], timeout=10)
    result, _ = _transfer(lab, tr, 4, 200_000)
    st = _fast_stats(tr)
    assert result["received"] == 200_000
    assert st["cli0"]["pass_no_xmit"] > 50 and st["cli0"]["rx_packets"] == 0, st
    for ns in ("client", "server"):
        lab.exec(ns, ["ethtool", "-K", "eth0", "gro", "on"], timeout=10)
    time.sleep(1.2)   # the agent looks again every half second
    result, _ = _transfer(lab, tr, 4, 200_000)
    d = _delta(_fast_stats(tr), st)
    assert result["received"] == 200_000
    assert d["cli0"]["rx_packets"] > 50 and d["cli0"]["pass_no_xmit"] == 0, d
    tr.stop()
    said = [line for line in tr.stderr.splitlines() if "cannot send XDP frames" in line]
    assert said == ["ctbpf: fast path: cli0, srv0 cannot send XDP frames (no ndo_xdp_xmit; a "
                    "veth needs GRO or an XDP program on its peer): what native XDP would "
                    "forward there goes up the stack"], tr.stderr
