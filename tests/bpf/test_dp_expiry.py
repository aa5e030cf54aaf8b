"""An entry whose expiry has passed counts as absent: the next packet is
judged as the first of a new flow, and the stale entry is replaced."""

from __future__ import annotations

import packets as P
from ctbpf import tunables

ORIG, REPLY = P.ORIG, P.REPLY
D = tunables.defaults()


def handshake(t, d):
    for direction, flags in ((ORIG, "S"), (REPLY, "SA"), (ORIG, "A")):
        assert t.send(d.frame(direction, flags)).state != "invalid"


def test_expired_entry_is_hidden_from_the_listing(tracker):
    tracker.send(P.frame(P.tcp("S")))
    tracker.expire()
    assert tracker.flows() == []
    assert len(tracker.entries()) == 1  # until a packet or the sweeper meets it


def test_new_syn_on_an_expired_entry_starts_a_fresh_flow(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.expire()
    out = tracker.send(d.frame(ORIG, "S"))
    assert out.state == "new" and out.moved("expired_seen") == 1 and out.moved("insert") == 1
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.unreplied and not f.assured and f.table == "new"
    assert f.packets == (1, 0) and tracker.timeout_is(f, D["tcp_timeout_syn_sent"])
    assert len(tracker.entries()) == 1, "the expired assured entry was not removed"


def test_mid_stream_reply_after_expiry_is_a_new_pickup(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.expire()
    out = tracker.send(d.frame(REPLY, "PA", payload=b"late data"))
    assert out.state == "new" and out.moved("expired_seen") == 1
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.unreplied and not f.assured and f.table == "new"
    # the server is now the opener
    assert (f.orig.src, f.orig.sport, f.orig.dst, f.orig.dport) == (P.B4, 80, P.A4, 40000)
    assert tracker.timeout_is(f, D["tcp_timeout_unacknowledged"])
    # and the client's next packet is its reply
    assert tracker.send(d.frame(ORIG, "A")).state == "established"
    assert not tracker.flow().unreplied


def test_mid_stream_packet_after_expiry_is_invalid_without_loose(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.expire()
    tracker.set(tcp_loose=0)
    out = tracker.send(d.frame(ORIG, "A"))
    assert (out.state, out.reason) == ("invalid", "tcp_not_syn")
    assert tracker.flows() == []


def test_expired_udp_flow_restarts_unreplied(tracker):
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    tracker.send(P.frame(P.udp(P.B4, P.A4, 53, 40000)))
    tracker.age(created_ago=5)
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    assert tracker.flow().assured
    tracker.expire()
    out = tracker.send(P.frame(P.udp(P.B4, P.A4, 53, 40000)))
    assert out.state == "new" and out.moved("expired_seen") == 1
    f = tracker.flow()
    assert f.orig.src == P.B4 and f.unreplied and not f.assured and f.table == "new"
    assert tracker.timeout_is(f, D["udp_timeout"])


def test_echo_reply_after_the_request_expired_is_invalid(tracker):
    tracker.send(P.frame(P.icmp_echo(P.A4, P.B4, id=4)))
    tracker.expire()
    out = tracker.send(P.frame(P.icmp_echo(P.B4, P.A4, id=4, reply=True)))
    assert (out.state, out.reason) == ("invalid", "icmp_type")


def test_entry_one_second_from_expiry_is_alive(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.age(expires_in=1)
    out = tracker.send(d.frame(REPLY, "A"))
    assert out.state == "established" and out.moved("expired_seen") == 0
    assert tracker.flow().assured
