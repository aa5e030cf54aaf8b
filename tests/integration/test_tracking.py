"""Real sockets through the lab's router, tracked by `ctbpf run` there.

Client and server talk through the router; ctbpf's XDP program sees every
packet on the router's cli0 and srv0. To hold a TCP connection in a state
long enough to read the table, nftables rules in the client's or the
server's *output* chain drop chosen packets, so the router sees only part
of the exchange; removing the rule lets TCP retransmit or the test send the
next segment. Sockets are driven step by step by a small command server
(PEER) running in the endpoint namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctbpf.lab.netns import Lab, list_namespaces
from ctbpf.lab.traffic import parse_result

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

REPO = Path(__file__).resolve().parents[2]
CTBPF = [sys.executable, "-m", "ctbpf"]

# --------------------------------------------------------------------------
# the spec's listing format

#: The spec's examples (Iptables Tutorial, "TCP connections"), one line each.
SPEC_EXAMPLES = [
    ("tcp      6 117 SYN_SENT src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 "
     "[UNREPLIED] src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 use=1",
     dict(state="SYN_SENT", unreplied=True, assured=False), 117),
    ("tcp      6 57 SYN_RECV src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 "
     "src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 use=1",
     dict(state="SYN_RECV", unreplied=False, assured=False), 57),
    ("tcp      6 431999 ESTABLISHED src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 "
     "src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 [ASSURED] use=1",
     dict(state="ESTABLISHED", unreplied=False, assured=True), 431999),
]
PROTONUM = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}


def proc_line_re(proto: str, src: str, dst: str, *, sport: int | None = None,
                 dport: int | None = None, state: str | None = None,
                 unreplied: bool = False, assured: bool = False,
                 icmp: tuple[int, int, int] | None = None,
                 icmp_id: int | None = None) -> re.Pattern:
    """A regex for one whole /proc/net/ip_conntrack line, built like the
    spec's example: `%-8s %u %ld STATE orig [UNREPLIED] reply [ASSURED] use=1`.
    Only the remaining seconds (and an unknown ICMP id) are left open.
    ``icmp`` is (request type, code, reply type)."""
    def tup(a: str, b: str, l4: str) -> str:
        return re.escape(f"src={a} dst={b} ") + l4

    if icmp is not None:
        qtype, code, rtype = icmp
        ident = r"(?P<id>\d+)" if icmp_id is None else str(icmp_id)
        same = r"(?P=id)" if icmp_id is None else str(icmp_id)
        orig = tup(src, dst, f"type={qtype} code={code} id={ident}")
        reply = tup(dst, src, f"type={rtype} code={code} id={same}")
    else:
        orig = tup(src, dst, re.escape(f"sport={sport} dport={dport}"))
        reply = tup(dst, src, re.escape(f"sport={dport} dport={sport}"))
    text = (re.escape(f"{proto:<8} {PROTONUM[proto]} ") + r"(?P<timeout>\d+) "
            + (re.escape(f"{state} ") if state else "")
            + orig + " " + (re.escape("[UNREPLIED] ") if unreplied else "")
            + reply + " " + (re.escape("[ASSURED] ") if assured else "") + re.escape("use=1"))
    return re.compile(f"^{text}$")


def test_line_regex_matches_the_spec_examples():
    """The oracle itself: built from the spec's values, it matches the spec's lines."""
    for line, kw, timeout in SPEC_EXAMPLES:
        rx = proc_line_re("tcp", "192.168.1.5", "192.168.1.35", sport=1031, dport=23, **kw)
        m = rx.match(line)
        assert m, (rx.pattern, line)
        assert int(m["timeout"]) == timeout
        # ...and nothing else: another state, flag or port does not match.
        assert not proc_line_re("tcp", "192.168.1.5", "192.168.1.35", sport=1031, dport=24,
                                **kw).match(line)
        other = dict(kw, unreplied=not kw["unreplied"])
        assert not proc_line_re("tcp", "192.168.1.5", "192.168.1.35", sport=1031, dport=23,
                                **other).match(line)


# --------------------------------------------------------------------------
# helpers


#: A line-oriented socket driver run with `python3 -c` inside a namespace.
#: Each command line gets one answer line: "ok [value]" or "err <why>".
PEER = r'''
import select, socket, struct, sys
ls = conn = udp = None
last = None
def fam(f):
    return socket.AF_INET6 if f == "6" else socket.AF_INET
def anyaddr(f):
    return "::" if f == "6" else "0.0.0.0"
def do(cmd, a):
    global ls, conn, udp, last
    if cmd == "listen":
        ls = socket.socket(fam(a[0]), socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((anyaddr(a[0]), int(a[1])))
        ls.listen(4)
        return ""
    if cmd == "accept":
        ls.settimeout(5)
        conn, _ = ls.accept()
        return ""
    if cmd == "connect":
        conn = socket.socket(fam(a[0]), socket.SOCK_STREAM)
        if len(a) > 3:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            conn.bind((anyaddr(a[0]), int(a[3])))
        conn.setblocking(False)
        conn.connect_ex((a[1], int(a[2])))
        return str(conn.getsockname()[1])
    if cmd == "wait_connected":
        _, w, _ = select.select([], [conn], [], 5)
        if not w:
            raise TimeoutError("connect still in progress after 5 s")
        err = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, "connect failed")
        conn.setblocking(True)
        return ""
    if cmd == "send":
        conn.sendall(a[0].encode())
        return ""
    if cmd == "recv":
        conn.settimeout(5)
        return conn.recv(1000).decode() or "EOF"
    if cmd == "shutdown":
        conn.shutdown(socket.SHUT_WR)
        return ""
    if cmd == "close":
        conn.close()
        return ""
    if cmd == "abort":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        return ""
    if cmd == "udp_bind":
        udp = socket.socket(fam(a[0]), socket.SOCK_DGRAM)
        udp.bind((anyaddr(a[0]), int(a[1])))
        return ""
    if cmd == "udp_send":
        if udp is None:
            udp = socket.socket(fam(a[0]), socket.SOCK_DGRAM)
        udp.sendto(a[3].encode(), (a[1], int(a[2])))
        return str(udp.getsockname()[1])
    if cmd == "udp_recv":
        udp.settimeout(5)
        data, last = udp.recvfrom(2000)
        return data.decode()
    if cmd == "udp_reply":
        udp.sendto(a[0].encode(), last)
        return ""
    raise ValueError("unknown command " + cmd)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "quit":
        break
    try:
        print("ok", do(cmd, args), flush=True)
    except Exception as e:
        print("err", type(e).__name__, e, flush=True)
'''


class Peer:
    """One PEER process in a namespace: peer("connect 4 10.1.2.2 80") -> "41234"."""

    def __init__(self, lab: Lab, ns: str) -> None:
        self.ns = ns
        self.proc = lab.popen(ns, [sys.executable, "-c", PEER], stdin=subprocess.PIPE,
                              cwd="/")

    def __call__(self, line: str, timeout: float = 8.0) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"{self.ns} peer: no answer to {line!r} within {timeout:g}s")
        answer = self.proc.stdout.readline().rstrip("\n")
        if not answer.startswith("ok"):
            raise AssertionError(f"{self.ns} peer: {line!r} -> {answer or self._dead()}")
        return answer[3:]

    def _dead(self) -> str:
        self.proc.wait(timeout=5)
        return f"exited {self.proc.returncode}: {self.proc.stderr.read().strip()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def peer():
    """peer(lab, ns) -> a Peer; all closed at teardown."""
    made: list[Peer] = []

    def make(lab: Lab, ns: str) -> Peer:
        p = Peer(lab, ns)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def addrs(lab: Lab, family: int) -> tuple[str, str]:
    return ((lab.client_ip, lab.server_ip) if family == 4
            else (lab.client_ip6, lab.server_ip6))


def free_port() -> int:
    return 20000 + secrets.randbelow(20000)


def hold(lab: Lab, ns: str, name: str, match: str) -> None:
    """Drop what `match` selects in ns's output chain until release()."""
    lab.nft(ns, f"table inet ctit_{name} {{\n"
                f"  chain out {{\n"
                f"    type filter hook output priority 0; policy accept;\n"
                f"    {match} drop\n"
                f"  }}\n"
                f"}}\n")


def release(lab: Lab, ns: str, name: str) -> None:
    lab.nft(ns, f"delete table inet ctit_{name}\n")


@contextlib.contextmanager
def holding(lab: Lab, ns: str, name: str, match: str):
    """hold() for the duration of a with block, released even on failure."""
    hold(lab, ns, name, match)
    try:
        yield
    finally:
        release(lab, ns, name)


def poll(fetch, pick, what: str, timeout: float = 5.0, interval: float = 0.1):
    """Call fetch() until pick(result) is truthy (bounded in count and time);
    return pick's value, or fail showing the last result."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / interval) + 2):
        last = fetch()
        got = pick(last)
        if got:
            return got
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    shown = "\n  ".join(last) if isinstance(last, list) and last and isinstance(last[0], str) \
        else repr(last)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last listing:\n  {shown}")


def flow_lines(lines: list[str], src: str, dst: str, sport: int, dport: int) -> list[str]:
    key = f" src={src} dst={dst} sport={sport} dport={dport} "
    return [line for line in lines if key in line]


def expect_line(tracker, rx: re.Pattern, lo: int, hi: int, what: str,
                selector=None, timeout: float = 5.0) -> re.Match:
    """Poll `ctbpf list` until a line matches rx byte for byte; its remaining
    seconds must be within [lo, hi]. selector(lines) narrows the lines to the
    flow's own, of which there must be exactly one."""
    def pick(lines):
        mine = selector(lines) if selector else lines
        for line in mine:
            m = rx.match(line)
            if m:
                assert len(mine) == 1, f"{what}: more than one entry for the flow: {mine}"
                return m
        return None

    m = poll(tracker.list_proc, pick, what, timeout=timeout)
    assert lo <= int(m["timeout"]) <= hi, f"{what}: timeout {m['timeout']} not in [{lo}, {hi}]: {m.string}"
    return m


def set_rto_min(lab: Lab, ns: str, seconds: int) -> None:
    """Make TCP in ns retransmit (data and FIN) no sooner than `seconds`: a
    FIN whose ACK we drop must not be retransmitted while we read FIN_WAIT
    (a second FIN would, as in the kernel, move the entry on to LAST_ACK)."""
    gw4 = lab.router_client_ip if ns == "client" else lab.router_server_ip
    gw6 = lab.router_client_ip6 if ns == "client" else lab.router_server_ip6
    for argv in (["ip", "route", "change", "default", "via", gw4, "rto_min", f"{seconds}s"],
                 ["ip", "-6", "route", "change", "default", "via", gw6, "rto_min", f"{seconds}s"]):
        lab.exec(ns, argv, check=True, timeout=10)


def stat_delta(before: dict, after: dict, section: str) -> dict:
    return {k: after[section][k] - before[section][k] for k in after[section]}


FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])


# --------------------------------------------------------------------------
# TCP


@FAMILIES
def test_tcp_connection_walks_the_spec_states(lab, tracker, peer, family):
    """SYN_SENT [UNREPLIED] -> SYN_RECV -> ESTABLISHED [ASSURED] -> FIN_WAIT
    -> CLOSE_WAIT -> LAST_ACK -> TIME_WAIT, each with its spec timeout."""
    cip, sip = addrs(lab, family)
    port = free_port()
    set_rto_min(lab, "client", 5)
    srv, cli = peer(lab, "server"), peer(lab, "client")
    srv(f"listen {family} {port}")

    # SYN_SENT: the server's SYN/ACK never leaves the server.
    hold(lab, "server", "synack", "tcp flags & (syn | ack) == syn | ack")
    # (and the client's handshake ACK will not leave the client: see SYN_RECV)
    hold(lab, "client", "ack", "tcp flags == ack")
    sport = int(cli(f"connect {family} {sip} {port}"))
    mine = lambda lines: flow_lines(lines, cip, sip, sport, port)  # noqa: E731

    def line(state, unreplied=False, assured=False):
        return proc_line_re("tcp", cip, sip, sport=sport, dport=port, state=state,
                            unreplied=unreplied, assured=assured)

    seen = []
    m = expect_line(tracker, line("SYN_SENT", unreplied=True), 117, 120, "SYN_SENT", mine)
    seen.append(("SYN_SENT", int(m["timeout"])))

    # SYN_RECV: the SYN/ACK goes through (retransmitted), the ACK does not.
    release(lab, "server", "synack")
    m = expect_line(tracker, line("SYN_RECV"), 57, 60, "SYN_RECV", mine)
    seen.append(("SYN_RECV", int(m["timeout"])))

    # ESTABLISHED [ASSURED]: the client's first data segment acknowledges.
    release(lab, "client", "ack")
    cli("wait_connected")
    cli("send x")
    m = expect_line(tracker, line("ESTABLISHED", assured=True), 431998, 432000,
                    "ESTABLISHED", mine)
    seen.append(("ESTABLISHED", int(m["timeout"])))
    srv("accept")
    assert srv("recv") == "x"
    srv("send y")
    assert cli("recv") == "y"
    time.sleep(0.1)  # let the client's ACK of "y" go before the next rule

    # FIN_WAIT: the client half-closes; the server's ACK of the FIN is dropped.
    hold(lab, "server", "ack", "tcp flags == ack")
    cli("shutdown")
    m = expect_line(tracker, line("FIN_WAIT", assured=True), 118, 120, "FIN_WAIT", mine)
    seen.append(("FIN_WAIT", int(m["timeout"])))

    # CLOSE_WAIT: the server acknowledges the FIN with data (it may still send).
    release(lab, "server", "ack")
    assert srv("recv") == "EOF"
    srv("send z")
    m = expect_line(tracker, line("CLOSE_WAIT", assured=True), 43198, 43200, "CLOSE_WAIT", mine)
    seen.append(("CLOSE_WAIT", int(m["timeout"])))
    assert cli("recv") == "z"

    # LAST_ACK: the server closes; the client's ACK of that FIN is dropped.
    hold(lab, "client", "ack", "tcp flags == ack")
    srv("close")
    m = expect_line(tracker, line("LAST_ACK", assured=True), 28, 30, "LAST_ACK", mine)
    seen.append(("LAST_ACK", int(m["timeout"])))

    # TIME_WAIT: the server retransmits its FIN and this time the ACK passes.
    release(lab, "client", "ack")
    m = expect_line(tracker, line("TIME_WAIT", assured=True), 118, 120, "TIME_WAIT", mine)
    seen.append(("TIME_WAIT", int(m["timeout"])))

    assert [s for s, _ in seen] == ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
                                    "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"], seen
    # Closing, the flow keeps [ASSURED] but is back in the evictable table,
    # as the kernel's early drop may take closing flows too.
    (entry,) = [f for f in tracker.list_json("-p", "tcp") if f["orig"].get("sport") == sport]
    assert entry["table"] == "new" and entry["flags"] == ["ASSURED"]
    stats = tracker.stats()
    assert stats["packets"]["invalid"] == 0, stats


@FAMILIES
def test_refused_connection_entry_disappears(shared_tracker, peer, family):
    """No listener: the server's RST is the only reply, and the entry dies at once.
    The SYN counts as NEW, the RST as ESTABLISHED."""
    tracker = shared_tracker
    lab = tracker.lab
    cip, sip = addrs(lab, family)
    port = free_port()

    # 1. Plain: connect, get refused; the counters tell the story.
    before = tracker.stats()
    cp = lab.traffic("client", "tcp-client", "--host", sip, "--port", port, "--timeout", 5)
    assert cp.returncode == 1 and "refused" in cp.stderr, (cp.returncode, cp.stderr)
    after = tracker.stats()
    packets = stat_delta(before, after, "packets")
    events = stat_delta(before, after, "events")
    assert (packets["new"], packets["established"], packets["invalid"]) == (1, 1, 0), packets
    assert (events["insert"], events["delete"]) == (1, 1), events
    assert not [l for l in tracker.list_proc() if f"dport={port} " in l]

    # 2. Watched: hold the RST, see SYN_SENT [UNREPLIED], release it, see the entry go.
    cli = peer(lab, "client")
    with holding(lab, "server", "rst", "tcp flags & rst == rst"):
        start = tracker.stats()
        sport = int(cli(f"connect {family} {sip} {port}"))
        mine = lambda lines: flow_lines(lines, cip, sip, sport, port)  # noqa: E731
        syn_sent = proc_line_re("tcp", cip, sip, sport=sport, dport=port, state="SYN_SENT",
                                unreplied=True)
        expect_line(tracker, syn_sent, 117, 120, "SYN_SENT before the RST", mine)
        # A retransmitted SYN (1 s later) is tracked (a NEW packet) but, as
        # in the kernel, neither renews the timeout (a dead entry must not
        # live forever) nor counts in the entry's packets.
        poll(lambda: stat_delta(start, tracker.stats(), "packets"),
             lambda d: d["new"] >= 2, "a retransmitted SYN")
        flows = tracker.list_json("-p", "tcp", "--sport", sport, "--dport", port)
        assert [f["packets"]["orig"] for f in flows] == [1], flows
        m = expect_line(tracker, syn_sent, 110, 120, "SYN_SENT after a retransmission", mine)
        assert int(m["timeout"]) <= 118, f"a retransmitted SYN renewed the timeout: {m.string}"
        mid = tracker.stats()
    # Released: the client's retransmitted SYN draws a RST that gets through.
    poll(tracker.list_proc, lambda lines: not mine(lines) or None, "the entry to disappear",
         timeout=5)
    with pytest.raises(AssertionError, match="ConnectionRefused|connect failed|111"):
        cli("wait_connected")
    end = tracker.stats()
    packets = stat_delta(mid, end, "packets")
    assert packets["established"] == 1 and packets["new"] >= 1 and packets["invalid"] == 0, packets
    assert stat_delta(mid, end, "events")["delete"] == 1


def _connected_pair(lab: Lab, peer, family: int, port: int, bind_port: int = 0):
    """A server listening on port and a client connected to it (one byte each way)."""
    cip, sip = addrs(lab, family)
    srv, cli = peer(lab, "server"), peer(lab, "client")
    srv(f"listen {family} {port}")
    sport = int(cli(f"connect {family} {sip} {port}" + (f" {bind_port}" if bind_port else "")))
    cli("wait_connected")
    srv("accept")
    cli("send a")
    assert srv("recv") == "a"
    srv("send b")
    assert cli("recv") == "b"
    return srv, cli, sport


@FAMILIES
def test_reset_connection_is_close_for_10_seconds(shared_tracker, peer, family):
    """Spec: "If the connection is reset by a RST packet, the state is changed
    to CLOSE ... 10 seconds"."""
    tracker = shared_tracker
    lab = tracker.lab
    cip, sip = addrs(lab, family)
    port = free_port()
    srv, cli, sport = _connected_pair(lab, peer, family, port)
    mine = lambda lines: flow_lines(lines, cip, sip, sport, port)  # noqa: E731

    def line(state):
        return proc_line_re("tcp", cip, sip, sport=sport, dport=port, state=state, assured=True)

    expect_line(tracker, line("ESTABLISHED"), 431998, 432000, "ESTABLISHED", mine)
    cli("abort")  # SO_LINGER 0: close() sends a RST
    expect_line(tracker, line("CLOSE"), 8, 10, "CLOSE after the RST", mine)


@FAMILIES
def test_new_syn_reopens_a_time_wait_entry(shared_tracker, peer, family):
    """The server closes first (so the router's entry ends in TIME_WAIT and
    the client's port is free again); a new connection from the same port
    replaces the entry with a fresh one, as the kernel does (RFC 1122 reopen)."""
    tracker = shared_tracker
    lab = tracker.lab
    cip, sip = addrs(lab, family)
    port = free_port()
    sport = 40000 + secrets.randbelow(20000)
    srv, cli, _ = _connected_pair(lab, peer, family, port, bind_port=sport)
    mine = lambda lines: flow_lines(lines, cip, sip, sport, port)  # noqa: E731
    srv("close")
    assert cli("recv") == "EOF"
    cli("close")
    expect_line(tracker, proc_line_re("tcp", cip, sip, sport=sport, dport=port,
                                      state="TIME_WAIT", assured=True),
                117, 120, "TIME_WAIT", mine)
    (old,) = [f for f in tracker.list_json("-p", "tcp", "--sport", sport, "--dport", port)]
    before = tracker.stats()

    cli(f"connect {family} {sip} {port} {sport}")
    cli("wait_connected")
    srv("accept")
    expect_line(tracker, proc_line_re("tcp", cip, sip, sport=sport, dport=port,
                                      state="ESTABLISHED", assured=True),
                431998, 432000, "the reopened connection ESTABLISHED", mine)
    (new,) = [f for f in tracker.list_json("-p", "tcp", "--sport", sport, "--dport", port)]
    # A fresh entry: its counters start again (SYN + ACK, and the SYN/ACK).
    assert new["packets"]["orig"] < old["packets"]["orig"], (old, new)
    events = stat_delta(before, tracker.stats(), "events")
    assert events["delete"] == 1 and events["insert"] == 1, events


# --------------------------------------------------------------------------
# UDP and ICMP


@FAMILIES
def test_udp_unreplied_then_replied_then_assured(shared_tracker, peer, family):
    tracker = shared_tracker
    lab = tracker.lab
    cip, sip = addrs(lab, family)
    port = free_port()

    # A closed port: the ICMP port unreachable is RELATED, and is no reply.
    before = tracker.stats()
    cp = lab.traffic("client", "udp-client", "--host", sip, "--port", port + 1, "--timeout", 1)
    assert cp.returncode == 1 and "unreachable" in cp.stderr, cp.stderr
    packets = stat_delta(before, tracker.stats(), "packets")
    assert (packets["new"], packets["related"], packets["invalid"]) == (1, 1, 0), packets
    (closed,) = [f for f in tracker.list_json("-p", "udp") if f["orig"]["dport"] == port + 1]
    assert closed["flags"] == ["UNREPLIED"] and closed["packets"] == {"orig": 1, "reply": 0}

    srv, cli = peer(lab, "server"), peer(lab, "client")
    srv(f"udp_bind {family} {port}")
    sport = int(cli(f"udp_send {family} {sip} {port} hello"))
    mine = lambda lines: flow_lines(lines, cip, sip, sport, port)  # noqa: E731

    def line(unreplied=False, assured=False):
        return proc_line_re("udp", cip, sip, sport=sport, dport=port,
                            unreplied=unreplied, assured=assured)

    assert srv("udp_recv") == "hello"
    expect_line(tracker, line(unreplied=True), 28, 30, "UDP NEW [UNREPLIED]", mine)
    (flow,) = [f for f in tracker.list_json("-p", "udp") if f["orig"]["sport"] == sport]
    assert flow["flags"] == ["UNREPLIED"] and flow["state"] is None
    assert flow["packets"] == {"orig": 1, "reply": 0}

    srv("udp_reply hi")
    assert cli("udp_recv") == "hi"
    expect_line(tracker, line(), 28, 30, "UDP replied", mine)

    if family == 6:
        return  # the stream part is the same for both families: save two seconds
    # Still talking two seconds after it began: a stream, ASSURED, 180 s.
    time.sleep(2.1)
    cli(f"udp_send {family} {sip} {port} again")
    assert srv("udp_recv") == "again"
    expect_line(tracker, line(assured=True), 178, 180, "UDP stream [ASSURED]", mine)


@FAMILIES
def test_ping_entries(shared_tracker, family):
    tracker = shared_tracker
    lab = tracker.lab
    cip, sip = addrs(lab, family)
    assert lab.ping("client", sip, count=3)
    proto, qtype, rtype, size = (("icmp", 8, 0, 84) if family == 4
                                 else ("icmpv6", 128, 129, 104))
    rx = proc_line_re(proto, cip, sip, icmp=(qtype, 0, rtype))
    m = expect_line(tracker, rx, 28, 30, f"{proto} echo entry",
                    lambda lines: [l for l in lines if l.startswith(proto + " ")])
    ident = int(m["id"])
    (flow,) = [f for f in tracker.list_json("-p", proto) if f["orig"]["id"] == ident]
    assert flow["protonum"] == PROTONUM[proto] and flow["state"] is None
    assert flow["orig"] == {"src": cip, "dst": sip, "type": qtype, "code": 0, "id": ident}
    assert flow["reply"] == {"src": sip, "dst": cip, "type": rtype, "code": 0, "id": ident}
    assert flow["flags"] == []
    # ping -c 3: three requests and three replies of 56 data bytes each.
    assert flow["packets"] == {"orig": 3, "reply": 3}
    assert flow["bytes"] == {"orig": 3 * size, "reply": 3 * size}


# --------------------------------------------------------------------------
# JSON and the conntrack -L listing


JSON_KEYS = {"proto", "protonum", "timeout", "state", "orig", "reply", "flags", "packets", "bytes"}


def test_json_listing_keys_and_counters(shared_tracker):
    tracker = shared_tracker
    lab = tracker.lab
    port = free_port()
    flows = {}
    for family in (4, 6):
        cip, sip = addrs(lab, family)
        server = lab.traffic_popen("server", "udp-server", "--port", port, "--family", family,
                                   "--count", 3, "--timeout", 10)
        assert lab.wait_listening("server", port, "udp")
        cp = lab.traffic("client", "udp-client", "--host", sip, "--port", port, "--count", 3,
                         "--size", 100, "--bind-port", port + family)
        assert cp.returncode == 0, cp.stderr
        assert parse_result(cp.stdout)["received"] == 3
        out, err = server.communicate(timeout=15)
        assert server.returncode == 0, err
        flows[family] = (cip, sip, port + family)

    listing = tracker.list_json()
    assert isinstance(listing, list) and listing
    for f in listing:
        assert JSON_KEYS <= set(f), sorted(JSON_KEYS - set(f))
        assert isinstance(f["timeout"], int) and isinstance(f["flags"], list)
        assert set(f["packets"]) == set(f["bytes"]) == {"orig", "reply"}

    for family, (cip, sip, sport) in flows.items():
        (f,) = [f for f in listing if f["proto"] == "udp" and f["orig"]["src"] == cip
                and f["orig"]["sport"] == sport and f["orig"]["dport"] == port]
        assert f["protonum"] == 17 and f["state"] is None
        assert f["orig"] == {"src": cip, "dst": sip, "sport": sport, "dport": port}
        assert f["reply"] == {"src": sip, "dst": cip, "sport": port, "dport": sport}
        assert f["flags"] == []   # replied; not a stream yet (under 2 s)
        assert 28 <= f["timeout"] <= 30
        size = 100 + 8 + (20 if family == 4 else 40)   # L3 bytes per datagram
        assert f["packets"] == {"orig": 3, "reply": 3}, f
        assert f["bytes"] == {"orig": 3 * size, "reply": 3 * size}, f

        # conntrack -L style: the same counters after each tuple.
        (line,) = [l for l in tracker.list_conntrack("-p", "udp", "--dport", port)
                   if f"src={cip} " in l]
        assert (f"src={cip} dst={sip} sport={sport} dport={port} packets=3 bytes={3 * size} "
                f"src={sip} dst={cip} sport={port} dport={sport} packets=3 bytes={3 * size} "
                f"mark=0 use=1") in line, line

    # Filters select what they say.
    assert {f["proto"] for f in tracker.list_json("-p", "udp")} == {"udp"}
    v6 = tracker.list_json("--src", f"fd00:{lab.n}:1::/64")
    assert v6 and all(f["orig"]["src"] == lab.client_ip6 for f in v6)
    assert [f["orig"]["sport"]
            for f in tracker.list_json("--sport", port + 4, "--dport", port)] == [port + 4]
    assert tracker.list_json("--dport", port, "--src", lab.server_ip) == []


def test_tcp_json_after_a_full_connection(shared_tracker):
    """A whole connection (labtraffic, client closes first) ends in TIME_WAIT [ASSURED]."""
    tracker = shared_tracker
    lab = tracker.lab
    port = free_port()
    server = lab.traffic_popen("server", "tcp-server", "--port", port, "--timeout", 10)
    assert lab.wait_listening("server", port)
    cp = lab.traffic("client", "tcp-client", "--host", lab.server_ip, "--port", port,
                     "--data", 1000)
    assert cp.returncode == 0, cp.stderr
    sport = parse_result(cp.stdout)["sport"]
    server.communicate(timeout=15)
    assert server.returncode == 0

    def pick(flows):
        mine = [f for f in flows if f["proto"] == "tcp" and f["orig"]["sport"] == sport]
        return mine if mine and mine[0]["state"] == "TIME_WAIT" else None

    (f,) = poll(lambda: tracker.list_json("-p", "tcp"), pick, "TIME_WAIT in the JSON listing")
    assert f["protonum"] == 6 and f["flags"] == ["ASSURED"] and f["table"] == "new"  # closing
    assert f["orig"] == {"src": lab.client_ip, "dst": lab.server_ip, "sport": sport, "dport": port}
    assert 118 <= f["timeout"] <= 120
    # 1000 bytes each way, plus handshake and teardown: at least 5 segments each way.
    assert f["packets"]["orig"] >= 5 and f["packets"]["reply"] >= 4, f
    assert f["bytes"]["orig"] >= 1000 + 5 * 40 and f["bytes"]["reply"] >= 1000 + 4 * 40, f


def _split_timeout(line: str) -> tuple[str, int]:
    """("tcp      6 * ESTABLISHED ...", 431999): the line with its timeout taken out."""
    m = re.match(r"^(\S+ +\d+ )(\d+)( .*)$", line)
    assert m, line
    return m[1] + "*" + m[3], int(m[2])


def test_conntrack_listing_matches_the_kernels(lab, tracker):
    """The router's own nf_conntrack sees the same packets: `ctbpf list -o conntrack`
    must print what `conntrack -L` prints, byte for byte (timeouts within a second)."""
    lab.exec("router", ["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1"], check=True)
    # Any ct expression makes the router's netfilter track its traffic.
    lab.nft("router", "table inet ctit_oracle {\n"
                      "  chain pre { type filter hook prerouting priority 0; ct state new counter; }\n"
                      "}\n")
    port = free_port()
    server = lab.traffic_popen("server", "tcp-server", "--port", port, "--count", 2,
                               "--timeout", 10)
    server6 = lab.traffic_popen("server", "tcp-server", "--port", port, "--family", 6,
                                "--timeout", 10)
    udp = lab.traffic_popen("server", "udp-server", "--port", port, "--count", 2,
                            "--timeout", 10)
    assert lab.wait_listening("server", port) and lab.wait_listening("server", port, "udp")
    held = lab.traffic_popen("client", "tcp-client", "--host", lab.server_ip, "--port", port,
                             "--hold", 3)
    for host in (lab.server_ip, lab.server_ip6):
        cp = lab.traffic("client", "tcp-client", "--host", host, "--port", port, "--data", 3000)
        assert cp.returncode == 0, cp.stderr
    cp = lab.traffic("client", "udp-client", "--host", lab.server_ip, "--port", port,
                     "--count", 2)
    assert cp.returncode == 0, cp.stderr
    assert lab.ping("client", lab.server_ip, count=2)
    assert lab.ping("client", lab.server_ip6, count=2)
    cp = lab.traffic("client", "tcp-client", "--host", lab.server_ip, "--port", port + 1)
    assert cp.returncode == 1  # refused: in neither table
    for proc in (server6, udp):
        proc.communicate(timeout=15)
    time.sleep(0.2)  # the last ACKs

    def kernel() -> list[str]:
        lines = []
        for fam in ("ipv4", "ipv6"):
            cp = lab.exec("router", ["conntrack", "-L", "-f", fam], check=True)
            lines += cp.stdout.splitlines()
        return lines

    ours = {_split_timeout(l) for l in tracker.list_conntrack()}
    theirs = {_split_timeout(l) for l in kernel()}
    assert len(ours) == 6, ours  # tcp (open, closed v4, closed v6), udp, icmp, icmpv6
    assert {l for l, _ in ours} == {l for l, _ in theirs}, (
        "only ctbpf: " + "\n".join(sorted({l for l, _ in ours} - {l for l, _ in theirs}))
        + "\nonly the kernel: " + "\n".join(sorted({l for l, _ in theirs} - {l for l, _ in ours})))
    theirs_t = dict(theirs)
    for line, t in ours:
        assert abs(t - theirs_t[line]) <= 1, (line, t, theirs_t[line])
    assert held.poll() is None  # still open (the lab's teardown ends it and the server)


# --------------------------------------------------------------------------
# the pinned maps outlive the tracker; egress


def test_restart_keeps_flows(lab, pin_dir, start_tracker, peer):
    """A tracker restarted on the same pins carries on with the flows it had:
    an ESTABLISHED connection is found again, not picked up as a new one."""
    port = free_port()
    first = start_tracker(pin_dir)
    srv, cli = peer(lab, "server"), peer(lab, "client")
    srv(f"listen 4 {port}")
    sport = int(cli(f"connect 4 {lab.server_ip} {port}"))
    cli("wait_connected")
    srv("accept")
    cli("send a")
    assert srv("recv") == "a"
    srv("send b")
    assert cli("recv") == "b"

    def mine(flows):
        return [f for f in flows if f["proto"] == "tcp" and f["orig"]["sport"] == sport]

    (was,) = poll(lambda: mine(first.list_json()),
                  lambda fs: fs if fs and fs[0]["state"] == "ESTABLISHED" else None,
                  "ESTABLISHED before the restart")
    first.stop()
    second = start_tracker(pin_dir)
    assert second.attached() == ["cli0", "srv0"]
    before = second.stats()
    cli("send c")
    assert srv("recv") == "c"
    srv("send d")
    assert cli("recv") == "d"
    time.sleep(0.1)
    (now,) = mine(second.list_json())
    assert now["state"] == "ESTABLISHED" and now["flags"] == ["ASSURED"], now
    assert now["packets"]["orig"] > was["packets"]["orig"], (was, now)
    assert now["packets"]["reply"] > was["packets"]["reply"], (was, now)
    packets = stat_delta(before, second.stats(), "packets")
    assert packets["new"] == 0 and packets["established"] >= 3, packets
    second.stop()


def _tc_egress(lab: Lab, iface: str) -> str:
    return lab.exec("router", ["tc", "filter", "show", "dev", iface, "egress"],
                    check=True).stdout


def test_egress_tracks_the_routers_own_traffic(lab, pin_dir, start_tracker):
    tr = start_tracker(pin_dir, extra=["--egress"])
    assert tr.ready_line.split(";")[0].endswith("with egress"), tr.ready_line
    for iface in ("cli0", "srv0"):
        assert "ctbpf_tc_egress" in _tc_egress(lab, iface)
    assert lab.ping("router", lab.server_ip, count=2)
    assert lab.ping("router", lab.client_ip6, count=2)
    flows = tr.list_json()
    (v4,) = [f for f in flows if f["proto"] == "icmp" and f["orig"]["src"] == lab.router_server_ip]
    assert v4["orig"]["dst"] == lab.server_ip and v4["packets"] == {"orig": 2, "reply": 2}
    (v6,) = [f for f in flows if f["proto"] == "icmpv6"
             and f["orig"]["dst"] == lab.client_ip6]
    assert v6["orig"]["src"] == lab.router_client_ip6 and v6["packets"] == {"orig": 2, "reply": 2}
    tr.stop()
    for iface in ("cli0", "srv0"):
        assert "ctbpf" not in _tc_egress(lab, iface)
        qdiscs = lab.exec("router", ["tc", "qdisc", "show", "dev", iface], check=True).stdout
        assert "clsact" not in qdiscs, qdiscs


# --------------------------------------------------------------------------
# pins found per network namespace


def test_pins_are_found_per_network_namespace(lab, start_tracker, run_ctbpf):
    """`ip netns exec <router> ctbpf list` finds the maps of a tracker started
    with `ip netns exec <router> ctbpf run` (no --pin-dir on either side); the
    host namespace does not see that router's flows."""
    tr = start_tracker(None)
    assert tr.ready_line.rstrip().endswith(f"ctbpf@{lab.router}"), tr.ready_line
    assert Path(f"/sys/fs/bpf/ctbpf@{lab.router}").is_dir()
    assert lab.ping("client", lab.server_ip, count=1)

    cp = run_ctbpf("list")
    assert cp.returncode == 0, cp.stderr
    assert [l for l in cp.stdout.splitlines()
            if l.startswith("icmp ") and f"src={lab.client_ip} dst={lab.server_ip} " in l], cp.stdout
    cp = run_ctbpf("stats", "-o", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["entries"]["total"] >= 1

    # Entered without `ip netns exec` (host /sys, so the host's bpffs at
    # /sys/fs/bpf): the namespace's name still picks the same directory.
    if shutil.which("nsenter"):
        cp = subprocess.run(["nsenter", f"--net=/run/netns/{lab.router}", *CTBPF, "list"],
                            capture_output=True, text=True, timeout=15, cwd=REPO,
                            env=Lab.traffic_env())
        assert cp.returncode == 0, cp.stderr
        assert f"src={lab.client_ip} dst={lab.server_ip} " in cp.stdout, cp.stdout

    host = run_ctbpf("list", ns=None)
    assert lab.client_ip not in host.stdout and lab.server_ip not in host.stdout
    if host.returncode != 0:
        assert host.stderr.startswith("ctbpf: error: no ctbpf maps"), host.stderr
    tr.stop()
    assert not tr.attached()


# --------------------------------------------------------------------------
# stopping


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_detaches(lab, tracker, sig):
    assert "cli0 (" in tracker.ready_line and "srv0 (" in tracker.ready_line, tracker.ready_line
    assert tracker.attached() == ["cli0", "srv0"]
    assert tracker.stop(sig) == 0
    # Traffic still flows without the tracker.
    assert lab.ping("client", lab.server_ip, count=1)


# --------------------------------------------------------------------------
# the demo


def _lab_prefix(stdout: str) -> str:
    m = re.search(r"^\s+router\s+(ctl[0-9a-f]{5})-rtr\b", stdout, re.M)
    assert m, stdout
    return m[1]


def test_demo(need_bpf):
    """`ctbpf demo`: exit 0 within 30 s, the spec's listing, and nothing left behind."""
    t0 = time.monotonic()
    cp = subprocess.run([*CTBPF, "demo"], capture_output=True,
                        text=True, timeout=60, cwd=REPO, env=Lab.traffic_env())
    elapsed = time.monotonic() - t0
    assert cp.returncode == 0, cp.stderr
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"
    assert "Traceback" not in cp.stderr and cp.stderr == "", cp.stderr
    out = cp.stdout
    prefix = _lab_prefix(out)
    for title in ("Lab", "Tracker", "Traffic", "ctbpf list", "conntrack", "ctbpf stats",
                  "Enforce mode", "Where to look", "Stop"):
        assert re.search(rf"^== \d+\. .*{re.escape(title)}", out, re.M), title
    assert "ctbpf: tracking on cli0" in out
    lines = out.splitlines()
    tcp = [l for l in lines if l.startswith("tcp      6 ")]
    n = int(re.search(r"10\.(\d+)\.1\.2", out)[1])
    c4, s4, c6, s6 = f"10.{n}.1.2", f"10.{n}.2.2", f"fd00:{n}:1::2", f"fd00:{n}:2::2"
    want = [(c4, s4, 8080, "ESTABLISHED", 431998, 432000), (c4, s4, 8081, "TIME_WAIT", 117, 120),
            (c6, s6, 8443, "TIME_WAIT", 117, 120)]
    for src, dst, dport, state, lo, hi in want:
        found = [l for l in tcp if f" dport={dport} " in l and " packets=" not in l]
        assert len(found) == 1, (dport, tcp)
        sport = int(re.search(r"sport=(\d+)", found[0])[1])
        m = proc_line_re("tcp", src, dst, sport=sport, dport=dport, state=state,
                         assured=True).match(found[0])
        assert m and lo <= int(m["timeout"]) <= hi, found[0]
    assert not [l for l in tcp if "dport=8082 " in l]     # refused: gone
    assert [l for l in lines if l.startswith("udp      17 ") and "dport=5353 " in l]
    assert [l for l in lines if l.startswith("icmp     1 ")]
    assert [l for l in lines if l.startswith("icmpv6   58 ")]
    # Printed after the lab is gone: nothing that names it, but the way to keep it.
    hints = out[out.index("Where to look"):out.index("== 9.")]
    assert prefix not in hints, hints
    assert " demo --keep " in hints and " demo --cleanup " in hints, hints
    # Enforce mode: the client still gets out, the server's SYN dies at XDP.
    assert re.search(r"client pings \S+ +-> NEW out, answer back: passes", out)
    assert re.search(r"server connects to \S+ port 2222 +-> NEW from outside: dropped", out)
    assert "mode: enforce" in lines
    assert "srv0:in  accept established,related; else drop" in lines
    srv0 = lines[lines.index("srv0:in  accept established,related; else drop") + 1]
    assert re.search(r"\bnew/drop [1-9]", srv0), srv0
    assert "ct state { established, related } accept" in out
    assert not {f"{prefix}-{r}" for r in ("cli", "rtr", "srv")} & set(list_namespaces())
    assert not Path(f"/sys/fs/bpf/ctbpf@{prefix}-rtr").exists()
    assert not Path(f"/run/ctbpf/{prefix}-rtr").exists()     # the daemon's status dir
    assert not list(Path("/run/ctbpf-lab").glob(f"{prefix}.demo*"))   # its log


def _printed_commands(hints: str) -> list[list[str]]:
    """The `ip netns exec ...` lines of "Where to look", comments cut, as argv."""
    cmds = []
    for line in hints.splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("ip netns exec ") and " ping " not in line:
            cmds.append(line.split())
    return cmds


def _gone(prefix: str) -> bool:
    return (not {f"{prefix}-{r}" for r in ("cli", "rtr", "srv")} & set(list_namespaces())
            and not Path(f"/sys/fs/bpf/ctbpf@{prefix}-rtr").exists())


def test_demo_keep_leaves_a_lab_whose_commands_work_until_cleanup(need_bpf):
    """`ctbpf demo --keep`: every command "Where to look" prints works after
    the demo has exited; `ctbpf demo --cleanup` stops the tracker and
    removes the lab, its maps and the tracker's log."""
    cp = subprocess.run([*CTBPF, "demo", "--keep"], capture_output=True, text=True,
                        timeout=60, cwd=REPO, env=Lab.traffic_env())
    kept = {}
    try:
        assert cp.returncode == 0 and cp.stderr == "", cp.stderr
        prefix = _lab_prefix(cp.stdout)
        hints = cp.stdout[cp.stdout.index("Where to look"):]
        assert "== 9." not in hints and "Stop the tracker" not in hints, hints
        assert " demo --cleanup" in hints, hints
        kept = json.loads(Path(f"/run/ctbpf-lab/{prefix}.demo.json").read_text())
        os.kill(kept["pid"], 0)     # the tracker outlived the demo
        cmds = _printed_commands(hints)
        assert len(cmds) >= 5, hints
        for argv in cmds:
            if "curl" in argv:
                argv = [*argv[:argv.index("curl")], "curl", "-sf", "--max-time", "5",
                        *argv[argv.index("curl") + 2:]]
            if argv[-1] == "events":
                continue   # streams until stopped; test_events covers it
            run = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                 env=Lab.traffic_env())
            assert run.returncode == 0, (argv, run.stderr)
            assert run.stdout.strip(), argv
        time.sleep(1.5)
        assert "Traceback" not in Path(kept["log"]).read_text()
    finally:
        done = subprocess.run([*CTBPF, "demo", "--cleanup"], capture_output=True, text=True,
                              timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"ctbpf demo: removed lab {prefix}, its tracker "
                                   f"(pid {kept['pid']}) and /sys/fs/bpf/ctbpf@{prefix}-rtr")
    assert _gone(prefix)
    with pytest.raises(ProcessLookupError):
        os.kill(kept["pid"], 0)
    assert not list(Path("/run/ctbpf-lab").glob(f"{prefix}.demo*"))
    again = subprocess.run([*CTBPF, "demo", "--cleanup"], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
    assert (again.returncode, again.stdout) == (0, "ctbpf demo: no kept demo lab to remove\n")


def test_demo_on_a_terminal_waits_for_enter_with_the_lab_up(need_bpf):
    """On a terminal the printed commands work while the demo waits; Enter
    ends it and the lab goes."""
    import pty  # noqa: PLC0415

    master, slave = pty.openpty()
    proc = subprocess.Popen([*CTBPF, "demo"], stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, env=Lab.traffic_env(), start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"Press Enter" not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                out += os.read(master, 65536)
        text = out.decode(errors="replace").replace("\r", "")
        assert "Press Enter" in text, text
        prefix = _lab_prefix(text)
        cmds = [c for c in _printed_commands(text[text.index("Where to look"):])
                if c[-1] in ("list", "stats")]
        assert len(cmds) == 2, text
        for argv in cmds:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                 env=Lab.traffic_env())
            assert run.returncode == 0 and run.stdout.strip(), (argv, run.stderr)
        os.write(master, b"\n")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
        os.close(master)
    assert _gone(prefix)


def test_demo_failure_is_one_line_and_cleans_up(need_bpf, monkeypatch, capsys):
    """A step that fails: one line on stderr, exit 1, no namespace, no pins,
    no tracker left running."""
    from ctbpf.lab import demo  # noqa: PLC0415

    seen = {}

    def broken_traffic(self):
        seen["tracker"] = self.tracker
        raise demo.DemoError("injected failure in the traffic step")

    monkeypatch.setattr(demo._Demo, "traffic", broken_traffic)
    rc = demo.main()
    out, err = capsys.readouterr()
    assert rc == 1
    assert err.strip().splitlines() == ["ctbpf demo: error: injected failure in the traffic step"]
    prefix = _lab_prefix(out)
    assert seen["tracker"].poll() is not None, "the tracker is still running"
    assert not {f"{prefix}-{r}" for r in ("cli", "rtr", "srv")} & set(list_namespaces())
    assert not Path(f"/sys/fs/bpf/ctbpf@{prefix}-rtr").exists()
