"""Event lines, checked against what `conntrack -E` printed on this kernel
(nf_conntrack in a network namespace, loopback traffic), and the relay's
fan-out on a fake datapath: no root, no BPF."""

import json
import socket
import time

import pytest

from ctbpf import abi
from ctbpf.agent import events
from ctbpf.datapath.flowkey import key_from_tuple

T0 = 5_000 * 1_000_000_000   # the event's timestamp (CLOCK_MONOTONIC ns)
STAMP = T0 - 400             # the datapath read its clock just before the event's
TYPE = {n: abi.const(f"CT_EVENT_{n.upper()}") for n in ("new", "update", "destroy")}
REASON = {n: abi.const(f"CT_DESTROY_{n.upper()}") for n in ("none", "expired", "rst", "reopen",
                                                            "user")}
F = {n: abi.const(f"CT_F_{n}") for n in ("SEEN_REPLY", "ASSURED", "ORIG_IS_HI")}
STATE = {v: k for k, v in abi.TCP_STATE_NAMES.items()}


def ct_event(kind, src, dst, proto, sport=0, dport=0, *, state="NONE", timeout=120.0,
             flags=(), reason="none", icmp_query=0, packets=(1, 0)):
    """A ring-buffer record as the datapath writes it (bpf/conntrack.h ct_emit)."""
    key, src_is_hi = key_from_tuple(src, dst, proto, sport, dport, icmp_query)
    ev = abi.CtEvent()
    ev.timestamp_ns = T0
    ev.key = key
    # As the datapath stamps it (ct_deadline): the tick after the instant.
    ev.entry.expires = abi.ticks(STAMP + int(timeout * 1e9)) + 1
    ev.entry.created = abi.ticks(STAMP)
    ev.entry.state = STATE[state] if proto == 6 else 0
    ev.entry.flags = sum(F[f] for f in flags) | (F["ORIG_IS_HI"] if src_is_hi else 0)
    if packets is not None:
        ev.entry.flags |= abi.const("CT_F_ACCT")
        ev.acct.packets[:] = packets
    ev.type = TYPE[kind]
    ev.reason = REASON[reason]
    return ev


def line(ev):
    return events.text_line(events.from_ct_event(ev, T0, 1_700_000_000.0))


# Lines `conntrack -E` (v1.4.7) printed here for a connection on loopback, a
# refused one and a UDP datagram; ours must be byte-identical.
KERNEL = {
    "new": "    [NEW] tcp      6 120 SYN_SENT src=127.0.0.1 dst=127.0.0.1 sport=42968 dport=5555 "
           "[UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5555 dport=42968",
    "syn_recv": " [UPDATE] tcp      6 60 SYN_RECV src=127.0.0.1 dst=127.0.0.1 sport=42968 "
                "dport=5555 src=127.0.0.1 dst=127.0.0.1 sport=5555 dport=42968",
    "established": " [UPDATE] tcp      6 432000 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 "
                   "sport=42968 dport=5555 src=127.0.0.1 dst=127.0.0.1 sport=5555 dport=42968 "
                   "[ASSURED]",
    "refused": "[DESTROY] tcp      6 120 CLOSE src=127.0.0.1 dst=127.0.0.1 sport=39182 dport=5556 "
               "[UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5556 dport=39182",
    "udp": "    [NEW] udp      17 30 src=127.0.0.1 dst=127.0.0.1 sport=51463 dport=5557 "
           "[UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5557 dport=51463",
}
LO = "127.0.0.1"


@pytest.mark.parametrize("name, ev", [
    ("new", ct_event("new", LO, LO, 6, 42968, 5555, state="SYN_SENT", timeout=120)),
    ("syn_recv", ct_event("update", LO, LO, 6, 42968, 5555, state="SYN_RECV", timeout=60,
                          flags=("SEEN_REPLY",))),
    ("established", ct_event("update", LO, LO, 6, 42968, 5555, state="ESTABLISHED",
                             timeout=432000, flags=("SEEN_REPLY", "ASSURED"))),
    ("refused", ct_event("destroy", LO, LO, 6, 39182, 5556, state="CLOSE", timeout=120,
                         reason="rst")),
    ("udp", ct_event("new", LO, LO, 17, 51463, 5557, timeout=30)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_text_line_is_conntrack_E_byte_for_byte(name, ev):
    assert line(ev) == KERNEL[name]


def test_type_column_is_nine_wide_right_aligned():
    for kind, prefix in (("new", "    [NEW] "), ("update", " [UPDATE] "),
                         ("destroy", "[DESTROY] ")):
        text = line(ct_event(kind, "10.0.0.1", "10.0.0.2", 17, 1, 2, timeout=29.5))
        assert text.startswith(prefix + "udp      17 "), text


def test_destroy_of_an_expired_entry_shows_no_timeout():
    """The kernel leaves a zero timeout out of destroy events."""
    ev = ct_event("destroy", "10.0.0.1", "10.0.0.2", 6, 1000, 80, state="ESTABLISHED",
                  timeout=-3, flags=("SEEN_REPLY", "ASSURED"), reason="expired")
    assert line(ev) == ("[DESTROY] tcp      6 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 "
                        "dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1000 [ASSURED]")
    udp = ct_event("destroy", "10.0.0.1", "10.0.0.2", 17, 5000, 53, timeout=0, reason="expired")
    assert line(udp).startswith("[DESTROY] udp      17 src=10.0.0.1 ")
    # NEW and UPDATE always show it, even 0
    assert line(ct_event("update", "10.0.0.1", "10.0.0.2", 17, 5000, 53, timeout=0.5)) \
        .startswith(" [UPDATE] udp      17 0 src=")


def test_opener_on_the_hi_side_and_icmp_and_ipv6():
    hi = ct_event("new", "10.0.0.9", "10.0.0.1", 6, 80, 1000, state="SYN_SENT")
    assert " src=10.0.0.9 dst=10.0.0.1 sport=80 dport=1000 [UNREPLIED] " in line(hi)
    ping = ct_event("new", "10.0.0.1", "10.0.0.2", 1, 77, 77 ^ 0xFFFF, icmp_query=8 << 8,
                    timeout=30)
    assert line(ping) == ("    [NEW] icmp     1 30 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=77 "
                          "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=77")
    v6 = ct_event("update", "fd00::1", "fd00::2", 58, 5, 5 ^ 0xFFFF, icmp_query=128 << 8,
                  timeout=30, flags=("SEEN_REPLY",))
    assert line(v6) == (" [UPDATE] icmpv6   58 30 src=fd00::1 dst=fd00::2 type=128 code=0 id=5 "
                        "src=fd00::2 dst=fd00::1 type=129 code=0 id=5")
    gre = ct_event("destroy", "10.0.0.1", "10.0.0.2", 47, timeout=0, reason="expired")
    assert line(gre) == ("[DESTROY] unknown  47 src=10.0.0.1 dst=10.0.0.2 [UNREPLIED] "
                         "src=10.0.0.2 dst=10.0.0.1")


def test_json_object_per_event():
    ev = ct_event("destroy", "10.0.0.1", "10.0.0.2", 6, 40000, 81, state="CLOSE", timeout=10,
                  reason="rst", packets=(1, 1))
    e = events.from_ct_event(ev, T0 + 2_000_000_000, 1_700_000_000.0)
    obj = json.loads(events.json_line(e))
    assert obj["event"] == "destroy" and obj["reason"] == "rst"
    assert obj["timestamp"] == pytest.approx(1_699_999_998.0)   # 2 s before "now"
    assert obj["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000, "dport": 81}
    assert obj["state"] == "CLOSE" and obj["flags"] == ["UNREPLIED"] and obj["timeout"] == 10
    assert obj["packets"] == {"orig": 1, "reply": 1}
    assert "\n" not in events.json_line(e)
    new = json.loads(events.json_line(events.from_ct_event(
        ct_event("new", "10.0.0.1", "10.0.0.2", 17, 1, 2, timeout=30))))
    assert new["event"] == "new" and "reason" not in new
    # what a client rebuilds from the line is the same event
    assert events.event_from_dict(obj) == e


@pytest.mark.parametrize("reason", ["expired", "rst", "reopen", "user"])
def test_destroy_reasons_named_from_the_abi(reason):
    e = events.from_ct_event(ct_event("destroy", "10.0.0.1", "10.0.0.2", 17, 1, 2,
                                      reason=reason))
    assert e.reason == reason


def test_table_follows_the_datapath_rule():
    assured = ct_event("update", "10.0.0.1", "10.0.0.2", 6, 1, 2, state="ESTABLISHED",
                       flags=("SEEN_REPLY", "ASSURED"))
    closing = ct_event("update", "10.0.0.1", "10.0.0.2", 6, 1, 2, state="FIN_WAIT",
                       flags=("SEEN_REPLY", "ASSURED"))
    udp = ct_event("update", "10.0.0.1", "10.0.0.2", 17, 1, 2, flags=("SEEN_REPLY", "ASSURED"))
    assert [events.from_ct_event(e).flow.table for e in (assured, closing, udp)] == \
        ["assured", "new", "assured"]


# --------------------------------------------------------------------------
# the relay, on a fake datapath


class FakeDatapath:
    def __init__(self):
        self.callback = None
        self.ring = []
        self.listeners = []     # what the relay told the datapath, in order

    def set_event_listeners(self, n):
        if not self.listeners or self.listeners[-1] != n:
            self.listeners.append(n)

    def open_events(self, callback):
        self.callback = callback

    def poll_events(self, timeout_ms=0):
        ring, self.ring = self.ring, []
        for ev in ring:
            self.callback(ev)


class FakeDaemon:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.pin_dir = run_dir / "no-such-pin-dir"
        self.datapath = FakeDatapath()


def _read_until(sock, want_lines, timeout=2.0):
    sock.settimeout(0.1)
    buf, deadline = b"", time.monotonic() + timeout
    while buf.count(b"\n") < want_lines and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        buf += data
    return [json.loads(x) for x in buf.decode().splitlines()]


@pytest.fixture
def relay(tmp_path):
    daemon = FakeDaemon(tmp_path)
    r = events.EventRelay()
    daemon.datapath.ring.append(ct_event("new", "10.9.9.9", "10.9.9.8", 17, 1, 2))  # stale
    r.start(daemon)
    yield r, daemon
    r.stop()
    assert not (tmp_path / events.SOCKET_NAME).exists()


def _connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def test_relay_fans_out_lines_to_every_client(relay, tmp_path):
    r, daemon = relay
    a, b = _connect(tmp_path / events.SOCKET_NAME), _connect(tmp_path / events.SOCKET_NAME)
    r.run_once(time.monotonic())
    assert r.clients == 2
    daemon.datapath.ring += [ct_event("new", "10.0.0.1", "10.0.0.2", 6, 1, 80, state="SYN_SENT"),
                             ct_event("destroy", "10.0.0.1", "10.0.0.2", 6, 1, 80,
                                      state="CLOSE", reason="rst")]
    r.run_once(time.monotonic())
    for s in (a, b):
        got = _read_until(s, 3)
        assert got[0]["event"] == "hello" and got[0]["pin_dir"] == str(daemon.pin_dir)
        assert [(o["event"], o.get("reason")) for o in got[1:]] == [("new", None),
                                                                     ("destroy", "rst")]
        assert all(o["orig"]["src"] == "10.0.0.1" for o in got[1:])  # the stale one is gone
    a.close()
    daemon.datapath.ring.append(ct_event("new", "10.0.0.1", "10.0.0.2", 17, 3, 4))
    r.run_once(time.monotonic())
    r.run_once(time.monotonic())
    assert r.clients == 1
    assert _read_until(b, 1)[0]["orig"]["sport"] == 3
    b.close()


def test_a_slow_client_loses_lines_and_is_told(relay, tmp_path, monkeypatch):
    """The daemon never blocks on a client: what does not fit its buffer is
    dropped and counted, and a "lost" line says how many once it reads again."""
    monkeypatch.setattr(events, "CLIENT_BUFFER", 4096)
    r, daemon = relay
    slow = _connect(tmp_path / events.SOCKET_NAME)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    r.run_once(time.monotonic())
    n = 2000
    daemon.datapath.ring += [ct_event("new", "10.0.0.1", "10.0.0.2", 17, 1000 + i, 53)
                             for i in range(n)]
    t = time.monotonic()
    r.run_once(t)
    assert time.monotonic() - t < 2.0, "the relay waited for a slow client"
    assert r.clients == 1
    got = _read_until(slow, n + 10, timeout=1.0)   # drain what was queued
    daemon.datapath.ring.append(ct_event("new", "10.0.0.1", "10.0.0.2", 17, 9999, 53))
    r.run_once(time.monotonic())
    got += _read_until(slow, 2, timeout=1.0)
    lost = [o for o in got if o["event"] == "lost"]
    new = [o for o in got if o["event"] == "new"]
    assert len(lost) == 1 and lost[0]["where"] == "client"
    assert len(new) - 1 + lost[0]["count"] == n    # each event either arrived or was counted
    assert new[-1]["orig"]["sport"] == 9999   # it catches up after the notice
    slow.close()


def test_relay_takes_over_a_stale_socket_and_keeps_another_daemons(tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / events.SOCKET_NAME))
    stale.close()   # a dead daemon's socket file
    first, second = events.EventRelay(), events.EventRelay()
    first.start(FakeDaemon(tmp_path))
    second.start(FakeDaemon(tmp_path))    # a newer daemon in the same namespace takes the path
    first.stop()                          # ...and the older one's stop leaves it alone
    assert (tmp_path / events.SOCKET_NAME).exists()
    second.stop()
    assert not (tmp_path / events.SOCKET_NAME).exists()


def test_relay_without_its_socket_still_drains(tmp_path, caplog):
    """A run dir it cannot use costs `ctbpf events`, never the tracking."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    daemon = FakeDaemon(blocker)          # run_dir is a file: no socket there
    r = events.EventRelay()
    r.start(daemon)
    assert "cannot listen" in caplog.text
    daemon.datapath.ring.append(ct_event("new", "10.0.0.1", "10.0.0.2", 17, 1, 2))
    r.run_once(time.monotonic())
    assert daemon.datapath.ring == [] and r.clients == 0
    r.stop()


def test_clients_beyond_the_limit_are_told_and_closed(relay, tmp_path, monkeypatch):
    monkeypatch.setattr(events, "MAX_CLIENTS", 1)
    r, _ = relay
    first, second = (_connect(tmp_path / events.SOCKET_NAME) for _ in range(2))
    r.run_once(time.monotonic())
    assert r.clients == 1
    assert _read_until(first, 1)[0]["event"] == "hello"
    (refused,) = _read_until(second, 1)
    assert refused["event"] == "error" and "too many" in refused["error"]
    assert second.recv(1) == b""   # closed by the daemon
    first.close()
    second.close()


def test_the_datapath_is_told_how_many_listen_before_a_client_hears_hello(relay, tmp_path):
    """With nobody listening the datapath writes no event; a client is
    counted before its hello, so no event after the hello is missed."""
    r, daemon = relay
    assert daemon.datapath.listeners == [0]
    a = _connect(tmp_path / events.SOCKET_NAME)
    r.run_once(time.monotonic())
    assert daemon.datapath.listeners == [0, 1] and _read_until(a, 1)[0]["event"] == "hello"
    b = _connect(tmp_path / events.SOCKET_NAME)
    r.run_once(time.monotonic())
    assert daemon.datapath.listeners[-1] == 2
    a.close()
    b.close()
    r.run_once(time.monotonic())
    r.run_once(time.monotonic())
    assert daemon.datapath.listeners[-1] == 0
