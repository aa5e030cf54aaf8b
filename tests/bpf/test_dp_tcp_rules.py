"""The TCP tracker's rules around the transition table: timeouts per state
and live tunables, tcp_loose, flag validation, and the special cases of
nf_conntrack_tcp_packet() (reopen, RST before a reply, SYN retransmission,
pickup, simultaneous open, resynchronisation, RFC 5961 challenge ACK).

Where the kernel's behaviour was not obvious from its source it was
checked on this machine's nf_conntrack (noted per test).
"""

from __future__ import annotations

import pytest

import packets as P
from ctbpf import tunables
from ctbpf.datapath import bpfsys

ORIG, REPLY = P.ORIG, P.REPLY
D = tunables.defaults()
T_SS, T_SR, T_ES = D["tcp_timeout_syn_sent"], D["tcp_timeout_syn_recv"], D["tcp_timeout_established"]
T_FW, T_CW, T_LA = D["tcp_timeout_fin_wait"], D["tcp_timeout_close_wait"], D["tcp_timeout_last_ack"]
T_TW, T_CL, T_S2 = D["tcp_timeout_time_wait"], D["tcp_timeout_close"], D["tcp_timeout_syn_sent2"]
T_UNACK = D["tcp_timeout_unacknowledged"]
T_RETRANS = D["tcp_timeout_max_retrans"]

FAMILIES = [pytest.param((P.A4, P.B4), id="ipv4"), pytest.param((P.A6, P.B6), id="ipv6")]


def step(t, dialog, direction, flags, state, timeout=None, pkt_state=None, **kw):
    """Send one segment; check the resulting state (and timeout, user-land state)."""
    out = t.send(dialog.frame(direction, flags, **kw))
    assert out.state != "invalid", f"{direction} {flags!r}: {out}"
    if pkt_state is not None:
        assert out.state == pkt_state, f"{direction} {flags!r}: {out}"
    flow = t.flow()
    assert flow.state == state, f"{direction} {flags!r}: {flow.state}, expected {state}"
    if timeout is not None:
        assert t.timeout_is(flow, timeout), f"{direction} {flags!r}: {flow}"
    return out, flow


def handshake(t, dialog):
    step(t, dialog, ORIG, "S", "SYN_SENT")
    step(t, dialog, REPLY, "SA", "SYN_RECV")
    step(t, dialog, ORIG, "A", "ESTABLISHED")


# --------------------------------------------------------------------------
# timeouts


@pytest.mark.parametrize("addrs", FAMILIES)
def test_each_state_stamps_its_default_timeout(tracker, addrs):
    d = P.TcpDialog(*addrs)
    out, f = step(tracker, d, ORIG, "S", "SYN_SENT", T_SS, "new")
    assert f.unreplied and not f.assured
    out, f = step(tracker, d, REPLY, "SA", "SYN_RECV", T_SR, "established")
    assert not f.unreplied and not f.assured and f.table == "new"
    out, f = step(tracker, d, ORIG, "A", "ESTABLISHED", T_ES, "established")
    assert f.assured and f.table == "assured" and out.moved("promote") == 1
    # data not yet acknowledged caps ESTABLISHED at tcp_timeout_unacknowledged
    # (the kernel's IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED), until the peer acks it
    step(tracker, d, ORIG, "A", "ESTABLISHED", T_UNACK, "established", payload=b"GET /")
    step(tracker, d, REPLY, "A", "ESTABLISHED", T_UNACK, "established", payload=b"200 OK")
    step(tracker, d, ORIG, "A", "ESTABLISHED", T_ES, "established")
    step(tracker, d, ORIG, "FA", "FIN_WAIT", T_FW)
    step(tracker, d, REPLY, "A", "CLOSE_WAIT", T_CW)
    step(tracker, d, REPLY, "FA", "LAST_ACK", T_LA)
    out, f = step(tracker, d, ORIG, "A", "TIME_WAIT", T_TW)
    assert f.assured and f.packets == (6, 4)


@pytest.mark.parametrize("addrs", FAMILIES)
def test_close_and_syn_sent2_timeouts(tracker, addrs):
    d = P.TcpDialog(*addrs)
    handshake(tracker, d)
    step(tracker, d, REPLY, "R", "CLOSE", T_CL)
    tracker.reset()
    d = P.TcpDialog(*addrs)
    step(tracker, d, ORIG, "S", "SYN_SENT", T_SS)
    step(tracker, d, REPLY, "S", "SYN_SENT2")
    # a SYN in SYN_SENT2 (the opener's retransmission: its ISN again), now
    # that a reply was seen, stamps SYN_SENT2's timeout
    step(tracker, d, ORIG, "S", "SYN_SENT2", T_S2, seq=d.isn[ORIG])


def test_every_state_reads_its_own_tunable(tracker):
    """Distinct values in every TCP timeout slot: each state must stamp its own.

    The caps stay above them all: tcp_timeout_max_retrans caps every state
    until an ACK sets the last window seen (the kernel's last_win is 0 after
    SYN and SYN/ACK), tcp_timeout_unacknowledged while a FIN is unacked."""
    custom = {"tcp_timeout_syn_sent": 1001, "tcp_timeout_syn_recv": 1002,
              "tcp_timeout_established": 1003, "tcp_timeout_fin_wait": 1004,
              "tcp_timeout_close_wait": 1005, "tcp_timeout_last_ack": 1006,
              "tcp_timeout_time_wait": 1007, "tcp_timeout_close": 1008,
              "tcp_timeout_syn_sent2": 1009, "tcp_timeout_unacknowledged": 2000,
              "tcp_timeout_max_retrans": 2001}
    tracker.set(**custom)
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT", 1001)
    step(tracker, d, REPLY, "SA", "SYN_RECV", 1002)
    step(tracker, d, ORIG, "A", "ESTABLISHED", 1003)
    step(tracker, d, ORIG, "FA", "FIN_WAIT", 1004)
    step(tracker, d, REPLY, "A", "CLOSE_WAIT", 1005)
    step(tracker, d, REPLY, "FA", "LAST_ACK", 1006)
    step(tracker, d, ORIG, "A", "TIME_WAIT", 1007)
    step(tracker, d, ORIG, "R", "CLOSE", 1008)
    tracker.reset()
    tracker.set(**custom)
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT", 1001)
    step(tracker, d, REPLY, "S", "SYN_SENT2")
    step(tracker, d, REPLY, "S", "SYN_SENT2", 1009, seq=d.isn[REPLY])  # retransmitted
    tracker.reset()
    tracker.set(**dict(custom, tcp_timeout_unacknowledged=999))
    step(tracker, P.TcpDialog(), ORIG, "A", "ESTABLISHED", 999)  # pickup: the cap


def test_no_window_seen_yet_caps_at_max_retrans(tracker):
    """The kernel's last_win is set by ACKs only (tcp_in_window's retransmission
    bookkeeping): until the first one, a state timeout above
    tcp_timeout_max_retrans is cut to it."""
    tracker.set(tcp_timeout_syn_sent=1001, tcp_timeout_syn_recv=1002)
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT", T_RETRANS)
    step(tracker, d, REPLY, "SA", "SYN_RECV", T_RETRANS)
    step(tracker, d, ORIG, "A", "ESTABLISHED", T_ES)


def test_established_timeout_is_live(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    assert tracker.timeout_is(tracker.flow(), T_ES)
    tracker.set(tcp_timeout_established=100)
    step(tracker, d, ORIG, "A", "ESTABLISHED", 100, payload=b"x")
    tracker.set(tcp_timeout_established=T_ES)
    step(tracker, d, REPLY, "A", "ESTABLISHED", T_ES)


def test_rst_stamps_the_close_timeout(tracker):
    tracker.set(tcp_timeout_close=42)
    d = P.TcpDialog()
    handshake(tracker, d)
    step(tracker, d, ORIG, "RA", "CLOSE", 42)


# --------------------------------------------------------------------------
# tcp_loose


def test_loose_picks_up_a_mid_stream_flow(tracker):
    assert D["tcp_loose"] == 1
    out = tracker.send(P.frame(P.tcp("A", seq=777, ack=888)))
    assert out.state == "new" and out.moved("insert") == 1
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.unreplied and not f.assured and f.table == "new"
    assert f.flags == ["UNREPLIED"]
    assert tracker.timeout_is(f, T_UNACK), f


def test_loose_off_makes_a_non_syn_first_packet_invalid(tracker):
    tracker.set(tcp_loose=0)
    for flags in ("A", "PA", "AU"):
        out = tracker.send(P.frame(P.tcp(flags)))
        assert (out.state, out.reason) == ("invalid", "tcp_not_syn"), (flags, out)
    # a packet the NONE column rejects anyway keeps its own reason
    out = tracker.send(P.frame(P.tcp("FA")))
    assert (out.state, out.reason) == ("invalid", "tcp_state")
    assert tracker.flows() == []
    # a SYN still opens, and the flow then runs normally
    d = P.TcpDialog()
    handshake(tracker, d)
    step(tracker, d, REPLY, "A", "ESTABLISHED", pkt_state="established", payload=b"data")


# --------------------------------------------------------------------------
# flag validation (tcp_valid_flags)

VALID_SETS = ["S", "SU", "SA", "R", "RA", "FA", "FAU", "A", "AU"]
IGNORED_BITS = ["", "P", "E", "C", "PEC"]
ALL_IGNORED = ["", "P", "E", "C", "PE", "PC", "EC", "PEC"]
VALID_BYTES = {P.flag_bits(v + x) for v in VALID_SETS for x in ALL_IGNORED}
INVALID_SETS = {"syn+fin": "SF", "syn+rst": "SR", "syn+fin+rst": "SFR", "no-flags": "",
                "fin-alone": "F", "fin+psh+urg": "FPU", "psh-alone": "P", "urg-alone": "U",
                "rst+fin": "RF", "syn+ack+fin": "SAF", "rst+fin+ack": "RFA",
                "ece+cwr": "EC", "all-flags": "FSRPAUEC"}


@pytest.mark.parametrize("flags", list(INVALID_SETS.values()), ids=list(INVALID_SETS))
def test_invalid_flags_as_first_packet(tracker, flags):
    out = tracker.send(P.frame(P.tcp(flags)))
    assert (out.state, out.reason) == ("invalid", "tcp_flags"), out
    assert tracker.flows() == []


@pytest.mark.parametrize("flags", list(INVALID_SETS.values()), ids=list(INVALID_SETS))
def test_invalid_flags_on_an_established_flow(tracker, flags):
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.age(expires_in=50)
    before = tracker.flow()
    for direction in (ORIG, REPLY):
        out = tracker.send(d.frame(direction, flags))
        assert (out.state, out.reason) == ("invalid", "tcp_flags"), (direction, out)
    after = tracker.flow()
    assert (after.state, after.packets, after.assured) == (before.state, before.packets,
                                                          before.assured)
    assert tracker.timeout_is(after, 50)


@pytest.mark.parametrize("flags", [v + x for v in VALID_SETS for x in IGNORED_BITS],
                         ids=lambda f: f or "none")
def test_valid_flags_are_not_flag_invalid(tracker, flags):
    out = tracker.send(P.frame(P.tcp(flags)))
    assert out.reason != "tcp_flags", out
    # as the first packet: a SYN (with or without URG) opens, an ACK is
    # picked up, the rest are invalid for the NONE column only
    cls = P.flag_bits(flags) & 0x37
    if cls in (0x02, 0x22):
        assert out.state == "new" and tracker.flow().state == "SYN_SENT"
    elif cls in (0x10, 0x30):
        assert out.state == "new" and tracker.flow().state == "ESTABLISHED"
    else:
        assert (out.state, out.reason) == ("invalid", "tcp_state"), out
    tracker.reset()
    d = P.TcpDialog()
    handshake(tracker, d)
    out = tracker.send(d.frame(REPLY, flags))
    assert out.reason != "tcp_flags", out


def test_flag_validation_over_all_256_flag_bytes(tracker):
    """Every value of the flags byte, as a first packet: flag-invalid exactly
    when the kernel's tcp_valid_flags rejects it (PSH, ECE, CWR ignored)."""
    wrong = []
    for bits in range(256):
        frm = P.set_tcp_flags(P.frame(P.tcp("S", sport=1024 + bits)), bits)
        out = tracker.send(frm)
        if (out.reason == "tcp_flags") == (bits in VALID_BYTES):
            wrong.append((hex(bits), str(out)))
    assert not wrong, wrong
    assert all(f.state in ("SYN_SENT", "ESTABLISHED") for f in tracker.flows())


# --------------------------------------------------------------------------
# RST before any reply, ASSURED, SYN retransmission


def test_rst_as_the_only_reply_deletes_the_entry(tracker):
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT")
    out = tracker.send(d.frame(REPLY, "RA"))
    assert out.state == "established" and out.moved("delete") == 1, out
    assert tracker.flows() == []
    # the client tries again: a fresh entry
    out = tracker.send(d.frame(ORIG, "S"))
    assert out.state == "new" and tracker.flow().packets == (1, 0)


def test_rst_from_the_opener_before_any_reply_deletes_the_entry(tracker):
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT")
    out = tracker.send(d.frame(ORIG, "R"))
    assert out.state == "new" and out.moved("delete") == 1, out
    assert tracker.flows() == []


def test_rst_on_an_unanswered_pickup_deletes_the_entry(tracker):
    d = P.TcpDialog()
    step(tracker, d, ORIG, "A", "ESTABLISHED")
    out = tracker.send(d.frame(ORIG, "RA"))
    assert out.state == "new" and out.moved("delete") == 1
    assert tracker.flows() == []


def test_rst_after_a_reply_closes_instead(tracker):
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT")
    step(tracker, d, REPLY, "SA", "SYN_RECV")
    out, f = step(tracker, d, ORIG, "R", "CLOSE", T_CL)
    assert out.moved("delete") == 0 and not f.assured


def test_assured_after_the_handshake_and_only_then(tracker):
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT")
    out, f = step(tracker, d, REPLY, "SA", "SYN_RECV")
    assert not f.assured and f.table == "new" and out.moved("promote") == 0
    out, f = step(tracker, d, ORIG, "A", "ESTABLISHED")
    assert f.assured and f.table == "assured" and out.moved("promote") == 1
    assert f.flags == ["ASSURED"]
    assert len(tracker.entries()) == 1, "the promoted entry is still in ct_new too"
    out, f = step(tracker, d, REPLY, "A", "ESTABLISHED")
    assert f.assured and out.moved("promote") == 0


def test_syn_retransmit_does_not_refresh_syn_sent(tracker):
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT", T_SS)
    tracker.age(expires_in=20)
    out = tracker.send(d.frame(ORIG, "S", seq=d.isn[ORIG]))
    assert out.state == "new"
    f = tracker.flow()
    # neither refreshed nor counted: the kernel returns before nf_ct_refresh_acct
    assert f.state == "SYN_SENT" and tracker.timeout_is(f, 20) and f.packets == (1, 0)


def test_pickup_is_capped_until_answered_then_assured(tracker):
    """Checked on this kernel: the answer itself still gets the 300 s cap
    (SEEN_REPLY is set only after the tracker ran) and ASSURED comes with the
    next packet: `ESTABLISHED 299 [UNREPLIED]` (twice), `ESTABLISHED 299`,
    `ESTABLISHED 299 [ASSURED]`, `ESTABLISHED 431999 [ASSURED]`. The
    picked-up side is liberal: its window checks fail quietly and record
    nothing, so the data of the second packet is only recorded (as
    unacknowledged) by the opener's next in-window ACK, and the full timeout
    waits for the peer's ACK of it."""
    d = P.TcpDialog()
    out, f = step(tracker, d, ORIG, "A", "ESTABLISHED", T_UNACK, "new")
    assert f.unreplied and not f.assured
    out, f = step(tracker, d, ORIG, "A", "ESTABLISHED", T_UNACK, "new", payload=b"more")
    assert f.unreplied and not f.assured
    out, f = step(tracker, d, REPLY, "A", "ESTABLISHED", T_UNACK, "established")
    assert not f.unreplied and not f.assured and f.table == "new"
    out, f = step(tracker, d, ORIG, "A", "ESTABLISHED", T_UNACK, "established")
    assert f.assured and f.table == "assured" and out.moved("promote") == 1
    out, f = step(tracker, d, REPLY, "A", "ESTABLISHED", T_ES, "established")
    assert f.assured


def test_pickup_with_a_lower_unacknowledged_cap(tracker):
    tracker.set(tcp_timeout_unacknowledged=77)
    step(tracker, P.TcpDialog(), ORIG, "AU", "ESTABLISHED", 77)


# --------------------------------------------------------------------------
# simultaneous open, reopen, resynchronisation, challenge ACK


def test_simultaneous_open(tracker):
    """Checked on this kernel: SYN_SENT 119, SYN_SENT2 (timeout not renewed),
    SYN_RECV 59, ESTABLISHED 431999 [ASSURED]."""
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT", T_SS, "new")
    tracker.age(expires_in=50)
    out, f = step(tracker, d, REPLY, "S", "SYN_SENT2", pkt_state="established")
    assert tracker.timeout_is(f, 50), "the answering SYN renewed SYN_SENT's timeout"
    assert not f.unreplied
    step(tracker, d, ORIG, "SA", "SYN_RECV", T_SR, "established")
    out, f = step(tracker, d, REPLY, "A", "ESTABLISHED", T_ES, "established")
    assert f.assured and f.table == "assured"


def test_ack_from_the_responder_in_plain_syn_recv_stays(tracker):
    """Without a simultaneous open, the reply-direction ACK in SYN_RECV is
    the table's SR -> SR."""
    d = P.TcpDialog()
    step(tracker, d, ORIG, "S", "SYN_SENT")
    step(tracker, d, REPLY, "SA", "SYN_RECV")
    out, f = step(tracker, d, REPLY, "A", "SYN_RECV", T_SR)
    assert not f.assured


def _to_time_wait(t, d):
    handshake(t, d)
    step(t, d, ORIG, "FA", "FIN_WAIT")
    step(t, d, REPLY, "A", "CLOSE_WAIT")
    step(t, d, REPLY, "FA", "LAST_ACK")
    step(t, d, ORIG, "A", "TIME_WAIT")


@pytest.mark.parametrize("addrs", FAMILIES)
def test_reopen_from_time_wait_by_the_client(tracker, addrs):
    d = P.TcpDialog(*addrs)
    _to_time_wait(tracker, d)
    out = tracker.send(d.frame(ORIG, "S"))
    assert out.state == "new" and out.moved("delete") == 1 and out.moved("insert") == 1
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.orig.src == addrs[0] and f.unreplied and f.table == "new"
    assert f.packets == (1, 0)
    step(tracker, d, REPLY, "SA", "SYN_RECV")
    step(tracker, d, ORIG, "A", "ESTABLISHED")


def test_reopen_from_time_wait_by_the_server_swaps_the_opener(tracker):
    d = P.TcpDialog()
    _to_time_wait(tracker, d)
    out = tracker.send(d.frame(REPLY, "S"))
    assert out.state == "new" and out.moved("delete") == 1
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.unreplied
    assert (f.orig.src, f.orig.sport, f.orig.dst, f.orig.dport) == (P.B4, 80, P.A4, 40000)
    # the old client now answers: reply direction of the new entry
    out = tracker.send(d.frame(ORIG, "SA"))
    assert out.state == "established" and tracker.flow().state == "SYN_RECV"


def test_reopen_from_close_after_the_openers_own_rst(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    step(tracker, d, ORIG, "R", "CLOSE")
    out = tracker.send(d.frame(ORIG, "S"))
    assert out.state == "new" and out.moved("delete") == 1
    assert tracker.flow().state == "SYN_SENT" and tracker.flow().table == "new"


def test_syn_in_close_after_the_peers_rst_is_ignored_then_synack_resyncs(tracker):
    """The peer reset the connection: a new SYN from the client is not a
    reopen (no FIN seen, the RST came from the other side) but is ignored;
    the server's SYN/ACK acknowledging it resynchronises to SYN_RECV."""
    d = P.TcpDialog()
    handshake(tracker, d)
    step(tracker, d, REPLY, "R", "CLOSE")
    tracker.age(expires_in=9)
    out = tracker.send(d.frame(ORIG, "S"))
    assert out.state == "established" and out.moved("ignored") == 1 and out.moved("delete") == 0
    f = tracker.flow()
    assert f.state == "CLOSE" and tracker.timeout_is(f, 9)
    out, f = step(tracker, d, REPLY, "SA", "SYN_RECV", T_SR, "established")
    assert out.moved("ignored") == 0


@pytest.mark.parametrize("ack_delta", [0, 1, -1], ids=["ack=last_end", "ack=last_end+1",
                                                      "ack=last_end-1"])
def test_synack_after_an_ignored_syn_in_established(tracker, ack_delta):
    """tcp.h's resync rule: a SYN/ACK answering the SYN we ignored (its ack
    is that SYN's seq + 1, the tracked last_end) moves the flow to SYN_RECV;
    any other ack leaves it ignored."""
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.age(expires_in=33)
    out = tracker.send(d.frame(ORIG, "S"))  # fresh ISN: client restarted
    assert out.state == "established" and out.moved("ignored") == 1
    last_end = d.isn[ORIG] + 1
    out = tracker.send(d.frame(REPLY, "SA", ack=last_end + ack_delta))
    f = tracker.flow()
    if ack_delta == 0:
        assert out.moved("ignored") == 0 and f.state == "SYN_RECV" and tracker.timeout_is(f, T_SR)
        step(tracker, d, ORIG, "A", "ESTABLISHED", T_ES)
    else:
        assert out.moved("ignored") == 1 and f.state == "ESTABLISHED"
        assert tracker.timeout_is(f, 33)


def test_synack_resync_counts_seq_plus_payload(tracker):
    """last_end is seq + payload + SYN: a SYN carrying data (TFO-like) moves it."""
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.send(d.frame(ORIG, "S", payload=b"12345"))
    out = tracker.send(d.frame(REPLY, "SA", ack=d.isn[ORIG] + 1 + 5))
    assert out.moved("ignored") == 0 and tracker.flow().state == "SYN_RECV"


def test_challenge_ack_in_last_ack_does_not_close(tracker):
    """RFC 5961: a SYN in LAST_ACK is ignored and may draw a challenge ACK
    from the peer, which must not be taken as the last ACK."""
    d = P.TcpDialog()
    handshake(tracker, d)
    step(tracker, d, ORIG, "FA", "FIN_WAIT")
    step(tracker, d, REPLY, "A", "CLOSE_WAIT")
    step(tracker, d, REPLY, "FA", "LAST_ACK")
    tracker.age(expires_in=25)
    rcv_nxt = d.nxt[ORIG]          # what the server expects from the client
    out = tracker.send(d.frame(ORIG, "S"))
    assert out.moved("ignored") == 1 and tracker.flow().state == "LAST_ACK"
    # the challenge ACK acks the old connection's sequence, not the new SYN
    out = tracker.send(d.frame(REPLY, "A", ack=rcv_nxt))
    assert out.state == "established" and out.moved("ignored") == 1
    f = tracker.flow()
    assert f.state == "LAST_ACK" and tracker.timeout_is(f, 25)
    # the next ACK is a real one
    step(tracker, d, REPLY, "A", "TIME_WAIT", T_TW, ack=rcv_nxt)


def test_ack_from_the_same_side_after_an_ignored_syn_is_not_a_challenge_ack(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    step(tracker, d, ORIG, "FA", "FIN_WAIT")
    step(tracker, d, REPLY, "A", "CLOSE_WAIT")
    step(tracker, d, REPLY, "FA", "LAST_ACK")
    snd_nxt = d.nxt[ORIG]
    tracker.send(d.frame(ORIG, "S"))
    # the client's last ACK, in the old connection's sequence space
    step(tracker, d, ORIG, "A", "TIME_WAIT", T_TW, seq=snd_nxt)


# --------------------------------------------------------------------------
# accounting, the other program


def test_packets_and_bytes_per_direction(tracker):
    d = P.TcpDialog()
    handshake(tracker, d)
    tracker.send(d.frame(ORIG, "PA", payload=b"x" * 100))
    tracker.send(d.frame(REPLY, "PA", payload=b"y" * 1000))
    f = tracker.flow()
    assert f.packets == (3, 2)
    assert f.bytes == (40 + 40 + 140, 40 + 1040)


def test_tc_egress_program_tracks_the_same_way(tracker):
    """ctbpf_tc_egress runs ct_process() on what the host sends; through
    BPF_PROG_TEST_RUN the skb has no ingress interface, so it is tracked."""
    d = P.TcpDialog()
    tc_fd = tracker.dp.prog_fd("ctbpf_tc_egress")
    run = bpfsys.prog_test_run(tc_fd, d.frame(ORIG, "S"))
    assert run.retval == 0  # TC_ACT_OK
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.orig.src == P.A4
    step(tracker, d, REPLY, "SA", "SYN_RECV")
    bpfsys.prog_test_run(tc_fd, d.frame(ORIG, "A"))
    assert tracker.flow().state == "ESTABLISHED" and tracker.flow().assured
