"""TCP window tracking (the kernel's tcp_in_window and the RST rules of
nf_conntrack_tcp_packet) through the loaded datapath, each check in both
directions: sequence wrap-around, window scaling, SACK, zero windows,
keep-alives, retransmissions, unacknowledged data, mid-stream pickup, blind
RSTs, out-of-window data and acks, tcp_be_liberal, and the TCP option walk.

The expectations follow net/netfilter/nf_conntrack_proto_tcp.c; the
scenarios were also run, packet for packet, through this machine's
nf_conntrack (a netns forwarding the frames, nft counting `ct state`,
/proc/net/nf_conntrack) and agree with it in verdict, state and timeout.
The VLAN and TC tests could not be fed to it that way.

Longer than 500 lines because every window check has its scenario here in
both directions, with the connection model (Conn) they all share.
"""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace

import pytest

import packets as P
from ctbpf import abi, tunables
from ctbpf.datapath import bpfsys, stats

ORIG, REPLY = P.ORIG, P.REPLY
M = 0xFFFFFFFF
D = tunables.defaults()
T_SS, T_SR, T_ES = D["tcp_timeout_syn_sent"], D["tcp_timeout_syn_recv"], D["tcp_timeout_established"]
T_CL, T_UNACK = D["tcp_timeout_close"], D["tcp_timeout_unacknowledged"]

TS_WINDOW_SCALE = abi.const("CT_TS_WINDOW_SCALE")
TS_SACK_PERM = abi.const("CT_TS_SACK_PERM")
TS_BE_LIBERAL = abi.const("CT_TS_BE_LIBERAL")
TS_DATA_UNACK = abi.const("CT_TS_DATA_UNACK")
TS_MAXACK_SET = abi.const("CT_TS_MAXACK_SET")

#: Which side sends the data (or the packet under test); the other receives.
SIDES = [pytest.param(ORIG, id="orig-sends"), pytest.param(REPLY, id="reply-sends")]
DIR_INDEX = {ORIG: 0, REPLY: 1}


def other(d: str) -> str:
    return REPLY if d == ORIG else ORIG


# --------------------------------------------------------------------------
# TCP options as raw bytes (so malformed ones can be written too)

NOP, EOL = b"\x01", b"\x00"
MSS = b"\x02\x04\x05\xb4"
SACK_PERM = b"\x04\x02"


def wscale(shift: int) -> bytes:
    return bytes((3, 3, shift))


def sack(*blocks: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!II", left & M, right & M) for left, right in blocks)
    return bytes((5, 2 + len(body))) + body


def timestamp(val: int = 1234, ecr: int = 0) -> bytes:
    return b"\x08\x0a" + struct.pack("!II", val, ecr)


TS_ALIGNED = NOP + NOP + timestamp()


def padded(opts: bytes) -> bytes:
    """Options padded with EOL to a multiple of 4 bytes."""
    return opts + EOL * (-len(opts) % 4)


# --------------------------------------------------------------------------
# a connection with explicit windows and options


class Conn:
    """Both ends of one TCP connection: each side's next sequence number
    (`nxt`), advertised raw window (`win`). `frame` builds a segment with
    the side's next sequence number and the peer's as ack unless given;
    seq + len advances `nxt` when it goes beyond it, unless the segment has
    an explicit seq (out-of-window probes leave the model alone)."""

    def __init__(self, isn=(1000, 500000), win=(64240, 65160), v6: bool = False,
                 ports=(40100, 80), vlans=(), **ipkw) -> None:
        self.vlans, self.ipkw = vlans, ipkw
        client, server = (P.A6, P.B6) if v6 else (P.A4, P.B4)
        self.addr = {ORIG: (client, ports[0]), REPLY: (server, ports[1])}
        self.isn = {ORIG: isn[0] & M, REPLY: isn[1] & M}
        self.nxt = dict(self.isn)
        self.win = {ORIG: win[0], REPLY: win[1]}

    def frame(self, d: str, flags: str, payload: bytes = b"", seq: int | None = None,
              ack: int | None = None, window: int | None = None, opts: bytes = b"",
              advance: bool | None = None) -> bytes:
        src, sport = self.addr[d]
        dst, dport = self.addr[other(d)]
        if advance is None:
            advance = seq is None
        seq = self.nxt[d] if seq is None else seq & M
        if ack is None:
            ack = self.nxt[other(d)] if "A" in flags else 0
        end = (seq + len(payload) + ("S" in flags) + ("F" in flags)) & M
        if advance and ((end - self.nxt[d]) & M) < 1 << 31:
            self.nxt[d] = end
        opts = padded(opts)
        pkt = P.tcp(flags, src, dst, sport, dport, seq=seq, ack=ack, payload=opts + payload,
                    window=self.win[d] if window is None else window,
                    dataofs=5 + len(opts) // 4, **self.ipkw)
        return P.frame(pkt, self.vlans)


def invalid_counts(t) -> dict[str, int]:
    """The per-reason INVALID counters, by the names `ctbpf stats` shows."""
    return stats.summary(t.counters(), {})["invalid"]


def send(t, frm: bytes, state: str = "established"):
    """A packet the tracker must accept (not INVALID, not ignored)."""
    out = t.send(frm)
    assert out.state == state and out.moved("ignored") == 0, out
    return out


def ignored(t, frm: bytes):
    """A packet the window checks ignore: it passes (not INVALID, no
    reason counted), the entry is left as it was."""
    out = t.send(frm)
    assert out.state != "invalid" and out.moved("ignored") == 1, out
    return out


def invalid(t, frm: bytes, reason: str):
    """A packet that must be INVALID for `reason`, counted under that
    reason's name and no other."""
    before = invalid_counts(t)
    out = t.send(frm)
    assert (out.state, out.reason) == ("invalid", reason), out
    after = invalid_counts(t)
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert moved == {reason: 1}, moved
    return out


def entry(t):
    return t.entry().entry


def side(t, d: str):
    """Direction d's window, with its scale and flags (bytes of the entry)."""
    e, i = entry(t), DIR_INDEX[d]
    s = e.side[i]
    return SimpleNamespace(td_end=s.td_end, td_maxend=s.td_maxend, td_maxwin=s.td_maxwin,
                           td_maxack=s.td_maxack, td_scale=e.td_scale[i], flags=e.td_flags[i])


def windows(e) -> bytes:
    """Everything of an entry's window state: both sides, their scales and flags."""
    return bytes(e.side[0]) + bytes(e.side[1]) + bytes(e.td_scale) + bytes(e.td_flags)


def state_timeout(t, state: str, timeout: int) -> None:
    f = t.flow()
    assert f.state == state and t.timeout_is(f, timeout), f


def handshake(t, c: Conn, syn_opts: bytes = b"", synack_opts: bytes = b"") -> None:
    send(t, c.frame(ORIG, "S", opts=syn_opts), "new")
    send(t, c.frame(REPLY, "SA", opts=synack_opts))
    send(t, c.frame(ORIG, "A"))
    f = t.flow()
    assert f.state == "ESTABLISHED" and f.assured, f


def exchange(t, c: Conn, x: str, n: int = 100) -> None:
    """x sends n bytes, the peer acks them all."""
    send(t, c.frame(x, "PA", b"d" * n))
    send(t, c.frame(other(x), "A"))


def unchanged_by(t, frm: bytes, reason: str, noted: bool = False) -> None:
    """An INVALID packet changes not a byte of the entry: state, flags,
    timeout, counters, windows, retransmission bookkeeping. With `noted`,
    the packet is an out-of-window FIN or RST on an ASSURED flow, which the
    kernel notes as the last packet seen (nf_tcp_handle_invalid)."""
    before = entry(t)
    invalid(t, frm, reason)
    after = entry(t)
    if noted:
        after.last_class, after.last_dir = before.last_class, before.last_dir
    assert bytes(after) == bytes(before), "an INVALID packet changed the entry"


# --------------------------------------------------------------------------
# sequence numbers wrap at 2^32


@pytest.mark.parametrize("x", SIDES)
def test_sequence_numbers_wrap_around(tracker, x):
    isn = {ORIG: (M - 150, 500000), REPLY: (1000, M - 150)}[x]
    c = Conn(isn=isn)
    handshake(tracker, c)
    for _ in range(4):                      # 4 x 100 bytes: the data crosses 0
        exchange(tracker, c, x, 100)
    assert c.nxt[x] < 1000, c.nxt[x]        # wrapped
    s = side(tracker, x)
    assert s.td_end == c.nxt[x]
    assert side(tracker, other(x)).td_maxack == c.nxt[x]
    assert s.td_maxend == (c.nxt[x] + c.win[other(x)]) & M
    assert not s.flags & TS_DATA_UNACK
    state_timeout(tracker, "ESTABLISHED", T_ES)
    # after the wrap, the window still bounds data and acks both ways
    unchanged_by(tracker, c.frame(x, "PA", b"z", seq=c.nxt[x] + (1 << 20)), "tcp_seq_over")
    unchanged_by(tracker, c.frame(other(x), "A", ack=c.nxt[x] + 1), "tcp_ack_over")
    # data just below the wrap point, retransmitted, is in the window
    send(tracker, c.frame(x, "PA", b"r" * 100, seq=c.nxt[x] - 100))


# --------------------------------------------------------------------------
# window scale


@pytest.mark.parametrize("x", SIDES)
@pytest.mark.parametrize("shift,applied", [(0, 0), (14, 14), (15, 14), (255, 14)],
                         ids=["scale0", "scale14", "scale15-as-14", "scale255-as-14"])
def test_window_scale(tracker, x, shift, applied):
    """Both SYNs announce `shift` (above 14 counts as 14). The receiver then
    advertises a raw window of 4: 4 << 14 = 65536 bytes let data 60000
    bytes ahead in; unscaled, the 1000-byte window of the SYNs holds, and
    data that far ahead is more than the window can excuse."""
    c = Conn(win=(1000, 1000))
    send(tracker, c.frame(ORIG, "S", opts=MSS + wscale(shift)), "new")
    send(tracker, c.frame(REPLY, "SA", opts=MSS + wscale(shift)))
    for d in (ORIG, REPLY):
        s = side(tracker, d)
        assert (s.td_scale, s.flags & TS_WINDOW_SCALE) == (applied, TS_WINDOW_SCALE)
    c.win = {ORIG: 4, REPLY: 4}
    send(tracker, c.frame(ORIG, "A"))
    send(tracker, c.frame(other(x), "A"))   # the receiver's scaled window
    y = other(x)
    # the SYN's window is never scaled; the ACKs' are
    assert side(tracker, y).td_maxwin == max(1000, 4 << applied)
    edge = 4 << applied if x == REPLY else max(1000, 4 << applied)
    assert side(tracker, x).td_maxend == (c.nxt[x] + edge) & M
    far = c.frame(x, "PA", b"w" * 10, seq=c.nxt[x] + 60000)
    if applied:
        send(tracker, far)
        assert side(tracker, x).td_end == (c.nxt[x] + 60010) & M
    else:
        unchanged_by(tracker, far, "tcp_seq_over")


@pytest.mark.parametrize("x", SIDES)
@pytest.mark.parametrize("silent", [ORIG, REPLY], ids=["orig-no-wscale", "reply-no-wscale"])
def test_no_window_scale_on_one_side_turns_scaling_off(tracker, x, silent):
    """RFC 7323 (tcp_init_sender): unless both SYNs carry the option,
    neither side's window is scaled."""
    c = Conn(win=(1000, 1000))
    opts = {ORIG: MSS + wscale(7), REPLY: MSS + wscale(7)}
    opts[silent] = MSS + SACK_PERM
    send(tracker, c.frame(ORIG, "S", opts=opts[ORIG]), "new")
    send(tracker, c.frame(REPLY, "SA", opts=opts[REPLY]))
    for d in (ORIG, REPLY):
        s = side(tracker, d)
        assert s.td_scale == 0
        assert bool(s.flags & TS_WINDOW_SCALE) == (d != silent)
    c.win = {ORIG: 100, REPLY: 100}       # 12800 bytes if scaled by 7
    send(tracker, c.frame(ORIG, "A"))
    send(tracker, c.frame(other(x), "A"))
    assert side(tracker, other(x)).td_maxwin == 1000
    unchanged_by(tracker, c.frame(x, "PA", b"w", seq=c.nxt[x] + 5000), "tcp_seq_over")


@pytest.mark.parametrize("opts,kept", [(b"", True), (NOP * 4, False)], ids=["no-options", "nops"])
def test_a_new_syn_rereads_the_options_only_if_it_has_some(tracker, opts, kept):
    """A SYN with a higher ISN in SYN_SENT starts its side over
    (tcp_init_sender); tcp_options() returns at once for a header without
    options, so the scale of the first SYN stays, while options without a
    window scale clear it."""
    c = Conn()
    send(tracker, c.frame(ORIG, "S", opts=SACK_PERM + wscale(5)), "new")
    c.nxt[ORIG] = c.isn[ORIG] = (c.isn[ORIG] + 5000) & M
    send(tracker, c.frame(ORIG, "S", opts=opts), "new")
    assert side(tracker, ORIG).td_end == c.nxt[ORIG]
    send(tracker, c.frame(REPLY, "SA", opts=wscale(6)))
    o, r = side(tracker, ORIG), side(tracker, REPLY)
    if kept:
        assert (o.td_scale, o.flags & (TS_WINDOW_SCALE | TS_SACK_PERM), r.td_scale) == \
            (5, TS_WINDOW_SCALE | TS_SACK_PERM, 6)
    else:
        assert (o.td_scale, o.flags & (TS_WINDOW_SCALE | TS_SACK_PERM), r.td_scale) == (0, 0, 0)


# --------------------------------------------------------------------------
# SACK


@pytest.mark.parametrize("x", SIDES)
def test_sack_blocks_are_checked_against_the_data_sent(tracker, x):
    """The highest SACK edge counts as the ack (tcp_sack) when the data's
    sender allowed SACK: inside the data sent it is fine, beyond it INVALID."""
    c = Conn()
    handshake(tracker, c, syn_opts=MSS + SACK_PERM, synack_opts=MSS + SACK_PERM)
    y = other(x)
    base = c.nxt[x]
    for _ in range(3):
        send(tracker, c.frame(x, "PA", b"s" * 100))
    win = side(tracker, y).td_maxwin
    # the first segment was lost: ack base, SACK the other two
    send(tracker, c.frame(y, "A", ack=base, opts=NOP + NOP + sack((base + 100, base + 300))))
    assert side(tracker, y).td_maxwin == max(win, c.win[y] + 300)   # win + (sack - ack)
    assert side(tracker, y).td_maxack == base
    unchanged_by(tracker, c.frame(y, "A", ack=base,
                                  opts=NOP + NOP + sack((base + 100, base + 301))),
                 "tcp_ack_over")
    # several blocks: the highest right edge counts, wherever it is
    unchanged_by(tracker, c.frame(y, "A", ack=base, opts=NOP + NOP + sack(
        (base + 100, base + 200), (base + 200, base + 250), (base + 250, base + 260),
        (base + 300, base + 400))), "tcp_ack_over")
    # an edge below the ack is no SACK at all
    send(tracker, c.frame(y, "A", ack=base + 300, opts=NOP + NOP + sack((base - 50, base - 10))))


@pytest.mark.parametrize("x", SIDES)
def test_sack_is_ignored_when_the_sender_did_not_permit_it(tracker, x):
    c = Conn()
    y = other(x)
    opts = {x: MSS, y: MSS + SACK_PERM}
    handshake(tracker, c, syn_opts=opts[ORIG], synack_opts=opts[REPLY])
    assert not side(tracker, x).flags & TS_SACK_PERM
    base = c.nxt[x]
    send(tracker, c.frame(x, "PA", b"s" * 100))
    send(tracker, c.frame(y, "A", ack=base, opts=NOP + NOP + sack((base + 500, base + 900))))


@pytest.mark.parametrize("x", SIDES)
def test_only_the_first_well_formed_sack_option_counts(tracker, x):
    """tcp_sack() skips a SACK option of a bad length (not 2 + 8n) and
    stops after the first good one."""
    c = Conn()
    handshake(tracker, c, syn_opts=SACK_PERM, synack_opts=SACK_PERM)
    y = other(x)
    base = c.nxt[x]
    send(tracker, c.frame(x, "PA", b"s" * 200))
    bad_len = bytes((5, 6)) + struct.pack("!I", base + 50)          # 2 + 4: skipped
    beyond = sack((base + 100, base + 999))
    within = sack((base + 100, base + 200))
    unchanged_by(tracker, c.frame(y, "A", ack=base, opts=bad_len + beyond), "tcp_ack_over")
    send(tracker, c.frame(y, "A", ack=base, opts=within + beyond))


# --------------------------------------------------------------------------
# zero windows, keep-alives


@pytest.mark.parametrize("x", SIDES)
def test_zero_window_and_its_probes(tracker, x):
    """A zero window caps the timeout at tcp_timeout_max_retrans (the last
    ACK's raw window is 0) but does not pull the window's right edge back:
    the probes pass, data far beyond the window does not."""
    tracker.set(tcp_timeout_max_retrans=200, tcp_timeout_unacknowledged=250)
    c = Conn()
    handshake(tracker, c)
    y = other(x)
    send(tracker, c.frame(x, "PA", b"d" * 100))
    maxend = side(tracker, x).td_maxend
    send(tracker, c.frame(y, "A", window=0))                  # full: window 0
    assert side(tracker, x).td_maxend == maxend               # an edge never moves back
    state_timeout(tracker, "ESTABLISHED", 200)
    # Linux's zero-window probe: seq snd_una - 1, no data
    send(tracker, c.frame(x, "A", seq=c.nxt[x] - 1))
    state_timeout(tracker, "ESTABLISHED", T_ES)
    send(tracker, c.frame(y, "A", window=0))
    state_timeout(tracker, "ESTABLISHED", 200)
    # a probe with one byte of data, at the window's edge
    probe_at = c.nxt[x]
    send(tracker, c.frame(x, "PA", b"p"))
    state_timeout(tracker, "ESTABLISHED", 250)               # the byte is unacked
    send(tracker, c.frame(y, "A", ack=probe_at, window=0))   # not taken
    state_timeout(tracker, "ESTABLISHED", 250)
    unchanged_by(tracker, c.frame(x, "PA", b"x" * 10, seq=c.nxt[x] + (1 << 20)), "tcp_seq_over")
    # the window opens: the probe byte is acked
    send(tracker, c.frame(y, "A"))
    state_timeout(tracker, "ESTABLISHED", T_ES)


@pytest.mark.parametrize("x", SIDES)
@pytest.mark.parametrize("garbage", [b"", b"\0"], ids=["bare", "one-byte"])
def test_answered_keepalives_keep_the_flow_established(tracker, x, garbage):
    """A keep-alive is seq snd_nxt - 1 (with or without a byte of garbage):
    in the window, acknowledging nothing new."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    for _ in range(6):
        send(tracker, c.frame(x, "A", garbage, seq=c.nxt[x] - 1))
        send(tracker, c.frame(other(x), "A"))
        state_timeout(tracker, "ESTABLISHED", T_ES)
    assert entry(tracker).retrans == 0


@pytest.mark.parametrize("x", SIDES)
def test_unanswered_keepalives_count_as_retransmissions(tracker, x):
    tracker.set(tcp_timeout_max_retrans=100)
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    keepalive = c.frame(x, "A", seq=c.nxt[x] - 1)
    for n in range(4):
        send(tracker, keepalive)
        assert entry(tracker).retrans == n
        state_timeout(tracker, "ESTABLISHED", 100 if n >= 3 else T_ES)


# --------------------------------------------------------------------------
# retransmissions, unacknowledged data


@pytest.mark.parametrize("x", SIDES)
@pytest.mark.parametrize("max_retrans", [3, 1])
def test_retransmitted_data_caps_the_timeout(tracker, x, max_retrans):
    """tcp_max_retrans identical ACK-class segments after the first one
    (same direction, seq, ack, end, raw window) cap the timeout at
    tcp_timeout_max_retrans; any other segment resets the count."""
    tracker.set(tcp_max_retrans=max_retrans, tcp_timeout_max_retrans=100,
                tcp_timeout_unacknowledged=250)
    c = Conn()
    handshake(tracker, c)
    seg = c.frame(x, "PA", b"r" * 100)
    for n in range(max_retrans + 2):
        send(tracker, seg)
        assert entry(tracker).retrans == n
        state_timeout(tracker, "ESTABLISHED", 100 if n >= max_retrans else 250)
    send(tracker, c.frame(other(x), "A"))
    assert entry(tracker).retrans == 0
    state_timeout(tracker, "ESTABLISHED", T_ES)


@pytest.mark.parametrize("x", SIDES)
def test_duplicate_acks_count_as_retransmissions(tracker, x):
    tracker.set(tcp_timeout_max_retrans=100)
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    dup = c.frame(other(x), "A")
    for n in range(1, 4):
        send(tracker, dup)
        assert entry(tracker).retrans == n
    state_timeout(tracker, "ESTABLISHED", 100)
    # a different window is a different segment: the count starts over
    send(tracker, c.frame(other(x), "A", window=c.win[other(x)] - 1))
    assert entry(tracker).retrans == 0
    state_timeout(tracker, "ESTABLISHED", T_ES)


def test_the_retransmission_counter_is_eight_bits(tracker):
    """The kernel's ip_ct_tcp.retrans is a u8 incremented without a limit:
    the 256th retransmission wraps it to 0 and the cap no longer applies."""
    tracker.set(tcp_timeout_max_retrans=100)
    c = Conn()
    handshake(tracker, c)
    dup = c.frame(REPLY, "A")
    for _ in range(256):
        send(tracker, dup)
    state_timeout(tracker, "ESTABLISHED", 100)          # 255 retransmissions
    send(tracker, dup)                                  # the 256th: retrans wraps to 0
    assert entry(tracker).retrans == 0
    state_timeout(tracker, "ESTABLISHED", T_ES)


@pytest.mark.parametrize("x", SIDES)
def test_unacknowledged_data_caps_the_timeout_until_acked(tracker, x):
    tracker.set(tcp_timeout_unacknowledged=250)
    c = Conn()
    handshake(tracker, c)
    y = other(x)
    base = c.nxt[x]
    send(tracker, c.frame(x, "PA", b"u" * 100))
    assert side(tracker, x).flags & TS_DATA_UNACK
    state_timeout(tracker, "ESTABLISHED", 250)
    send(tracker, c.frame(y, "A", ack=base + 60))          # part of it
    state_timeout(tracker, "ESTABLISHED", 250)
    send(tracker, c.frame(y, "A"))                         # all of it
    assert not side(tracker, x).flags & TS_DATA_UNACK
    state_timeout(tracker, "ESTABLISHED", T_ES)


# --------------------------------------------------------------------------
# mid-stream pickup (tcp_loose)


def test_pickup_is_liberal_but_rsts_are_checked(tracker):
    """An ACK mid-stream opens an entry whose sides are both be-liberal and
    SACK-permitted (tcp_new): out-of-window data and acks pass, in both
    directions, but a RST below what the peer acknowledged is INVALID."""
    c = Conn(isn=(7_000_000, 9_000_000))
    send(tracker, c.frame(ORIG, "A"), "new")
    for d in (ORIG, REPLY):
        assert side(tracker, d).flags & (TS_BE_LIBERAL | TS_SACK_PERM) == \
            TS_BE_LIBERAL | TS_SACK_PERM
    send(tracker, c.frame(ORIG, "PA", b"o", seq=c.nxt[ORIG] + (1 << 24)), "new")
    send(tracker, c.frame(REPLY, "A", ack=c.nxt[ORIG]))
    send(tracker, c.frame(REPLY, "PA", b"r", seq=c.nxt[REPLY] + (1 << 24)))
    send(tracker, c.frame(ORIG, "A", ack=c.nxt[REPLY] + (1 << 24)))
    send(tracker, c.frame(ORIG, "A"))
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured, f
    for d in (ORIG, REPLY):
        assert side(tracker, d).flags & TS_MAXACK_SET
    invalid(tracker, c.frame(REPLY, "R", seq=side(tracker, ORIG).td_maxack - 1), "tcp_rst")
    invalid(tracker, c.frame(ORIG, "R", seq=side(tracker, REPLY).td_maxack - 1), "tcp_rst")
    send(tracker, c.frame(ORIG, "R", seq=side(tracker, REPLY).td_maxack))
    state_timeout(tracker, "CLOSE", T_CL)


# --------------------------------------------------------------------------
# RSTs


@pytest.mark.parametrize("x", SIDES)
def test_rst_with_the_exact_sequence_number_closes(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    exchange(tracker, c, other(x))
    send(tracker, c.frame(x, "R"))
    state_timeout(tracker, "CLOSE", T_CL)


@pytest.mark.parametrize("x", SIDES)
def test_blind_rst_in_the_window_keeps_established_for_the_challenge_ack(tracker, x):
    """RFC 5961: the receiver answers a RST that is in the window but not
    exact with a challenge ACK; the kernel keeps the state (with the RST's
    close timeout), the challenge ACK brings a longer one back and the
    sender's exact RST then closes."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    exchange(tracker, c, other(x))
    send(tracker, c.frame(x, "R", seq=c.nxt[x] + 1000))
    state_timeout(tracker, "ESTABLISHED", T_CL)
    # The RST's seq moved td_end (tcp_in_window takes any accepted end), so
    # the challenge ACK, which acks less, leaves "data" unacknowledged.
    assert side(tracker, x).td_end == (c.nxt[x] + 1000) & M
    send(tracker, c.frame(other(x), "A"))                      # the challenge ACK
    state_timeout(tracker, "ESTABLISHED", T_UNACK)
    send(tracker, c.frame(x, "R"))
    state_timeout(tracker, "CLOSE", T_CL)


@pytest.mark.parametrize("x", SIDES)
def test_rst_below_the_ack_is_invalid(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    exchange(tracker, c, other(x))
    assert side(tracker, other(x)).td_maxack == c.nxt[x]
    unchanged_by(tracker, c.frame(x, "R", seq=c.nxt[x] - 1), "tcp_rst")
    unchanged_by(tracker, c.frame(x, "RA", seq=c.nxt[x] - 50), "tcp_rst")
    state_timeout(tracker, "ESTABLISHED", T_ES)


@pytest.mark.parametrize("x", SIDES)
def test_rst_below_the_ack_with_tcp_ignore_invalid_rst(tracker, x):
    """tcp_ignore_invalid_rst=1: the RST below td_maxack is not INVALID; not
    being exact, it keeps ESTABLISHED (a challenge ACK may follow)."""
    tracker.set(tcp_ignore_invalid_rst=1)
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    exchange(tracker, c, other(x))
    send(tracker, c.frame(x, "R", seq=c.nxt[x] - 1))
    state_timeout(tracker, "ESTABLISHED", T_CL)


@pytest.mark.parametrize("x", SIDES)
def test_rst_at_the_end_of_a_data_train_closes(tracker, x):
    """A RST right after the same side's data, at its end (the kernel's
    "part of a train"), closes although the peer never acked that data."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, other(x))
    send(tracker, c.frame(x, "PA", b"t" * 19))
    send(tracker, c.frame(x, "R"))
    state_timeout(tracker, "CLOSE", T_CL)


@pytest.mark.parametrize("x", SIDES)
def test_rst_far_beyond_the_window_is_invalid(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    unchanged_by(tracker, c.frame(x, "R", seq=c.nxt[x] + (1 << 20)), "tcp_seq_over", noted=True)


@pytest.mark.parametrize("x", SIDES)
def test_out_of_window_fin_answered_by_out_of_window_rst_cuts_the_timeout(tracker, x):
    """nf_tcp_handle_invalid: on an ASSURED flow an out-of-window FIN is
    noted; the other side's out-of-window RST then cuts the timeout to
    tcp_timeout_unacknowledged. The state stays."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    invalid(tracker, c.frame(x, "FA", seq=c.nxt[x] + (1 << 20)), "tcp_seq_over")
    state_timeout(tracker, "ESTABLISHED", T_ES)
    invalid(tracker, c.frame(other(x), "R", seq=c.nxt[other(x)] + (1 << 20)), "tcp_seq_over")
    state_timeout(tracker, "ESTABLISHED", T_UNACK)


# --------------------------------------------------------------------------
# out-of-window data and acks


@pytest.mark.parametrize("x", SIDES)
def test_data_far_beyond_the_window_is_invalid_and_changes_nothing(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    unchanged_by(tracker, c.frame(x, "PA", b"f" * 100, seq=c.nxt[x] + (1 << 20)), "tcp_seq_over")
    unchanged_by(tracker, c.frame(x, "PA", b"f" * 100, seq=c.nxt[x] + (1 << 30)), "tcp_seq_over")
    state_timeout(tracker, "ESTABLISHED", T_ES)
    exchange(tracker, c, x)                      # the flow goes on


@pytest.mark.parametrize("x", SIDES)
def test_data_a_little_beyond_the_window_is_ignored_but_remembered(tracker, x):
    """A sender that overruns the window by less than the receiver's
    largest window: ignored (passes, no reason counted), and td_end moves so
    that the receiver's ack of it is not taken for an ack of unsent data."""
    c = Conn()
    handshake(tracker, c)
    edge = side(tracker, x).td_maxend
    ignored(tracker, c.frame(x, "PA", b"o" * 100, seq=edge + 1))
    assert side(tracker, x).td_end == (edge + 101) & M
    send(tracker, c.frame(other(x), "A", ack=edge + 101))


@pytest.mark.parametrize("x", SIDES)
def test_old_data_below_the_window_is_ignored(tracker, x):
    c = Conn(win=(1000, 1000))
    handshake(tracker, c)
    for _ in range(3):
        exchange(tracker, c, x, 900)
    before = entry(tracker)
    ignored(tracker, c.frame(x, "PA", b"o" * 100, seq=c.nxt[x] - 2000))
    after = entry(tracker)
    assert windows(after) == windows(before), "an ignored packet moved a window"
    assert after.expires == before.expires


@pytest.mark.parametrize("x", SIDES)
def test_ack_of_unsent_data_is_invalid(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    unchanged_by(tracker, c.frame(other(x), "A", ack=c.nxt[x] + 1), "tcp_ack_over")
    unchanged_by(tracker, c.frame(other(x), "PA", b"a", ack=c.nxt[x] + 70000), "tcp_ack_over")
    send(tracker, c.frame(other(x), "A"))


@pytest.mark.parametrize("x", SIDES)
def test_an_ack_lagging_beyond_maxackwindow_is_ignored(tracker, x):
    """An ack more than MAXACKWINDOW (66000, or the sender's larger window)
    below the data sent is overly delayed: ignored, the entry untouched;
    one within it is an ordinary (old) ack."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    before = entry(tracker)
    ignored(tracker, c.frame(other(x), "A", ack=c.nxt[x] - 70000))
    after = entry(tracker)
    assert windows(after) == windows(before)
    send(tracker, c.frame(other(x), "A", ack=c.nxt[x] - 60000))
    assert side(tracker, other(x)).td_maxack == c.nxt[x]      # the highest ack stays

def test_synack_with_a_wrong_ack_is_invalid(tracker):
    c = Conn()
    send(tracker, c.frame(ORIG, "S"), "new")
    invalid(tracker, c.frame(REPLY, "SA", ack=c.nxt[ORIG] + 1), "tcp_synack_ack")
    f = tracker.flow()
    assert f.state == "SYN_SENT" and f.unreplied and tracker.timeout_is(f, T_SS), f
    send(tracker, c.frame(REPLY, "SA", seq=c.isn[REPLY]))
    state_timeout(tracker, "SYN_RECV", T_SR)


def test_synack_with_a_wrong_ack_in_a_simultaneous_open_is_invalid(tracker):
    """The opener's SYN/ACK (SYN_SENT2) is checked the same way."""
    c = Conn()
    send(tracker, c.frame(ORIG, "S"), "new")
    send(tracker, c.frame(REPLY, "S"))
    assert tracker.flow().state == "SYN_SENT2"
    unchanged_by(tracker, c.frame(ORIG, "SA", seq=c.isn[ORIG], ack=c.nxt[REPLY] + 1),
                 "tcp_synack_ack")
    send(tracker, c.frame(ORIG, "SA", seq=c.isn[ORIG]))
    assert tracker.flow().state == "SYN_RECV"


# --------------------------------------------------------------------------
# tcp_be_liberal


@pytest.mark.parametrize("x", SIDES)
def test_be_liberal_accepts_out_of_window_data_but_checks_rsts(tracker, x):
    tracker.set(tcp_be_liberal=1)
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    held = windows(entry(tracker))
    send(tracker, c.frame(x, "PA", b"l" * 100, seq=c.nxt[x] + (1 << 20)))
    send(tracker, c.frame(other(x), "A", ack=c.nxt[x] + (1 << 21)))
    # the failed checks return at once: no window moved
    assert windows(entry(tracker)) == held
    state_timeout(tracker, "ESTABLISHED", T_ES)
    invalid(tracker, c.frame(x, "R", seq=side(tracker, other(x)).td_maxack - 1), "tcp_rst")


# --------------------------------------------------------------------------
# the option walk


def _scales_after(tracker, syn_opts: bytes, synack_opts: bytes = wscale(7)):
    c = Conn()
    send(tracker, c.frame(ORIG, "S", opts=syn_opts), "new")
    send(tracker, c.frame(REPLY, "SA", opts=synack_opts))
    o, r = side(tracker, ORIG), side(tracker, REPLY)
    return o.td_scale, o.flags & (TS_WINDOW_SCALE | TS_SACK_PERM), r.td_scale


K2 = bytes((30, 2))    # an unknown option of length 2

OPTION_CASES = {
    # name: (SYN options, orig's scale, orig's flags)
    "nops-then-wscale": (NOP + NOP + NOP + wscale(9), 9, TS_WINDOW_SCALE),
    "eight-nops": (NOP * 8 + SACK_PERM + wscale(9), 9, TS_WINDOW_SCALE | TS_SACK_PERM),
    "eol-stops": (SACK_PERM + EOL + wscale(9), 0, TS_SACK_PERM),
    "length-below-2-stops": (SACK_PERM + bytes((30, 1)) + wscale(9), 0, TS_SACK_PERM),
    "length-0-stops": (SACK_PERM + bytes((30, 0)) + wscale(9), 0, TS_SACK_PERM),
    "length-past-the-end-stops": (SACK_PERM + wscale(9) + bytes((30, 40)), 9,
                                  TS_WINDOW_SCALE | TS_SACK_PERM),
    "partial-option-stops": (SACK_PERM + bytes((30, 12)) + wscale(9) + NOP * 3, 0, TS_SACK_PERM),
    "wscale-of-bad-length": (bytes((3, 4, 9, 0)) + SACK_PERM, 0, TS_SACK_PERM),
    "sackperm-of-bad-length": (bytes((4, 3, 0)) + wscale(9), 9, TS_WINDOW_SCALE),
    "later-wscale-wins": (wscale(3) + wscale(11), 11, TS_WINDOW_SCALE),
    "timestamp-and-all": (MSS + SACK_PERM + timestamp() + NOP + wscale(9), 9,
                          TS_WINDOW_SCALE | TS_SACK_PERM),
    "aligned-timestamp-syn": (TS_ALIGNED, 0, 0),
    # Linux's SYN layout (read without the walk) and near misses of it (walked)
    "linux-layout-scale-capped": (MSS + SACK_PERM + timestamp() + NOP + wscale(15), 14,
                                  TS_WINDOW_SCALE | TS_SACK_PERM),
    "linux-layout-eol-for-nop": (MSS + SACK_PERM + timestamp() + EOL + wscale(9), 0,
                                 TS_SACK_PERM),
    "linux-layout-nops-for-sackperm": (MSS + NOP + NOP + timestamp() + NOP + wscale(9), 9,
                                       TS_WINDOW_SCALE),
    "linux-layout-unknown-for-mss": (bytes((30, 4, 5, 0xb4)) + SACK_PERM + timestamp() + NOP +
                                     wscale(9), 9, TS_WINDOW_SCALE | TS_SACK_PERM),
    # the slowest 40 bytes to walk: 7 x (3 NOPs, a 2-byte option), 2 NOPs, wscale
    "slowest-walk": ((NOP * 3 + K2) * 7 + NOP * 2 + wscale(9), 9, TS_WINDOW_SCALE),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_syn_option_walk(tracker, case):
    opts, scale, flags = OPTION_CASES[case]
    assert len(padded(opts)) <= 40
    o_scale, o_flags, r_scale = _scales_after(tracker, opts)
    # the reply announced 7: both scale only when the opener's option was read
    assert (o_scale, o_flags) == (scale, flags)
    assert r_scale == (7 if flags & TS_WINDOW_SCALE else 0)


@pytest.mark.parametrize("x", SIDES)
def test_sack_after_an_aligned_timestamp_is_read(tracker, x):
    """The fast path skips exactly the 12 bytes NOP NOP TIMESTAMP; a SACK
    behind them is still walked."""
    c = Conn()
    handshake(tracker, c, syn_opts=SACK_PERM + TS_ALIGNED, synack_opts=SACK_PERM + TS_ALIGNED)
    y = other(x)
    base = c.nxt[x]
    send(tracker, c.frame(x, "PA", b"s" * 100, opts=TS_ALIGNED))
    send(tracker, c.frame(y, "A", ack=base, opts=TS_ALIGNED))
    unchanged_by(tracker, c.frame(y, "A", ack=base,
                                  opts=TS_ALIGNED + NOP + NOP + sack((base + 50, base + 101))),
                 "tcp_ack_over")
    send(tracker, c.frame(y, "A", ack=base, opts=TS_ALIGNED + NOP + NOP + sack((base + 50, base + 100))))
    # a SACK behind 4 NOPs and a timestamp that is not aligned
    unchanged_by(tracker, c.frame(y, "A", ack=base, opts=NOP * 4 + timestamp() + NOP + NOP +
                                  sack((base + 50, base + 101))), "tcp_ack_over")


@pytest.mark.parametrize("x", SIDES)
def test_sack_walk_stops_at_a_malformed_option(tracker, x):
    c = Conn()
    handshake(tracker, c, syn_opts=SACK_PERM, synack_opts=SACK_PERM)
    y = other(x)
    base = c.nxt[x]
    send(tracker, c.frame(x, "PA", b"s" * 100))
    beyond = sack((base + 50, base + 500))
    send(tracker, c.frame(y, "A", ack=base, opts=EOL + NOP + beyond))
    send(tracker, c.frame(y, "A", ack=base, opts=bytes((30, 1)) + beyond))
    send(tracker, c.frame(y, "A", ack=base, opts=bytes((30, 20)) + beyond))
    unchanged_by(tracker, c.frame(y, "A", ack=base, opts=K2 + NOP + NOP + beyond), "tcp_ack_over")


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_window_checks_in_both_families(tracker, v6):
    c = Conn(v6=v6)
    handshake(tracker, c, syn_opts=MSS + SACK_PERM + wscale(7),
              synack_opts=MSS + SACK_PERM + wscale(7))
    for x in (ORIG, REPLY):
        exchange(tracker, c, x, 500)
        unchanged_by(tracker, c.frame(x, "PA", b"v", seq=c.nxt[x] + (1 << 28)), "tcp_seq_over")
        unchanged_by(tracker, c.frame(other(x), "A", ack=c.nxt[x] + 1), "tcp_ack_over")
    state_timeout(tracker, "ESTABLISHED", T_ES)


# --------------------------------------------------------------------------
# more of nf_conntrack_tcp_packet's window rules


def test_synack_acking_a_little_below_the_syn_end_is_accepted(tracker):
    """Only an ack beyond the SYN's end is over the bound; one below it
    passes the lower bound (td_end - MAXACKWINDOW) and is accepted."""
    c = Conn()
    send(tracker, c.frame(ORIG, "S"), "new")
    send(tracker, c.frame(REPLY, "SA", ack=c.isn[ORIG]))
    state_timeout(tracker, "SYN_RECV", T_SR)


@pytest.mark.parametrize("x", SIDES)
def test_rst_ack_with_ack_zero_is_taken_as_acking_everything(tracker, x):
    """Broken stacks send RST/ACK with ack 0: the kernel checks it as if it
    acked the peer's td_end, so the exact RST closes instead of being
    ignored as an overly old ack."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    exchange(tracker, c, other(x))
    send(tracker, c.frame(x, "RA", ack=0))
    state_timeout(tracker, "CLOSE", T_CL)


@pytest.mark.parametrize("x", SIDES)
def test_rst_ack_acking_unsent_data_is_invalid(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    exchange(tracker, c, other(x))
    unchanged_by(tracker, c.frame(x, "RA", ack=c.nxt[other(x)] + 5000), "tcp_ack_over",
                 noted=True)
    state_timeout(tracker, "ESTABLISHED", T_ES)


def test_pickup_answer_to_a_keepalive_moves_the_openers_end(tracker):
    """A flow picked up from a keep-alive (seq snd_nxt - 1): the answer acks
    one byte more than the keep-alive ends at, which the kernel takes as
    the answer to a keep-alive and counts into the opener's td_end."""
    c = Conn(isn=(7_000_000, 9_000_000))
    send(tracker, c.frame(ORIG, "A", seq=c.nxt[ORIG] - 1), "new")
    assert side(tracker, ORIG).td_end == c.nxt[ORIG] - 1
    send(tracker, c.frame(REPLY, "A"))
    o, r = side(tracker, ORIG), side(tracker, REPLY)
    assert o.td_end == c.nxt[ORIG]
    assert r.flags & TS_MAXACK_SET and r.td_maxack == c.nxt[ORIG]
    assert not o.flags & TS_DATA_UNACK


@pytest.mark.parametrize("x", SIDES)
def test_data_straddling_the_right_edge_widens_the_receivers_window(tracker, x):
    """seq within the window, end beyond it: accepted, and the receiver's
    td_maxwin grows by what lay beyond (the kernel trusts the receiver)."""
    c = Conn()
    handshake(tracker, c)
    edge = side(tracker, x).td_maxend
    maxwin = side(tracker, other(x)).td_maxwin
    send(tracker, c.frame(x, "PA", b"e" * 100, seq=edge - 10))
    assert side(tracker, other(x)).td_maxwin == maxwin + 90
    assert side(tracker, x).td_end == (edge + 90) & M


@pytest.mark.parametrize("x", SIDES)
def test_fin_beyond_the_window_is_invalid_and_an_in_window_fin_closes(tracker, x):
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    unchanged_by(tracker, c.frame(x, "FA", seq=c.nxt[x] + (1 << 20)), "tcp_seq_over", noted=True)
    send(tracker, c.frame(x, "FA"))
    assert tracker.flow().state == "FIN_WAIT"
    assert side(tracker, x).td_end == c.nxt[x]            # the FIN counts one
    unchanged_by(tracker, c.frame(other(x), "A", ack=c.nxt[x] + 1), "tcp_ack_over")
    send(tracker, c.frame(other(x), "A"))
    assert tracker.flow().state == "CLOSE_WAIT"


def test_data_with_the_handshake_ack(tracker):
    """The client's request on the third segment of the handshake."""
    c = Conn()
    send(tracker, c.frame(ORIG, "S"), "new")
    send(tracker, c.frame(REPLY, "SA"))
    send(tracker, c.frame(ORIG, "PA", b"GET / HTTP/1.1\r\n\r\n"))
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured and tracker.timeout_is(f, T_UNACK), f


@pytest.mark.parametrize("accepted", [True, False], ids=["data-acked", "data-refused"])
def test_syn_with_data(tracker, accepted):
    """A SYN carrying data (TCP Fast Open): its end covers the data; the
    SYN/ACK may ack it all or only the SYN."""
    c = Conn()
    send(tracker, c.frame(ORIG, "S", b"early"), "new")
    assert side(tracker, ORIG).td_end == c.isn[ORIG] + 6
    ack = c.nxt[ORIG] if accepted else c.isn[ORIG] + 1
    send(tracker, c.frame(REPLY, "SA", ack=ack))
    send(tracker, c.frame(ORIG, "A", seq=c.nxt[ORIG]))
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured, f


def test_simultaneous_open_windows(tracker):
    """SYN, SYN, SYN/ACK, SYN/ACK (ignored in SYN_RECV), ACK: both windows
    are set up and checked like after a plain handshake."""
    c = Conn()
    send(tracker, c.frame(ORIG, "S", opts=MSS + wscale(2)), "new")
    send(tracker, c.frame(REPLY, "S", opts=MSS + wscale(3)))
    send(tracker, c.frame(ORIG, "SA", seq=c.isn[ORIG], opts=MSS + wscale(2)))
    assert tracker.flow().state == "SYN_RECV"
    ignored(tracker, c.frame(REPLY, "SA", seq=c.isn[REPLY], opts=MSS + wscale(3)))
    send(tracker, c.frame(REPLY, "A"))
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured, f
    assert (side(tracker, ORIG).td_scale, side(tracker, REPLY).td_scale) == (2, 3)
    for x in (ORIG, REPLY):
        exchange(tracker, c, x)
        unchanged_by(tracker, c.frame(x, "PA", b"s", seq=c.nxt[x] + (1 << 24)), "tcp_seq_over")


def test_an_ack_in_syn_recv_acking_unsent_data_is_invalid(tracker):
    c = Conn()
    send(tracker, c.frame(ORIG, "S"), "new")
    send(tracker, c.frame(REPLY, "SA"))
    unchanged_by(tracker, c.frame(ORIG, "A", ack=c.nxt[REPLY] + 1), "tcp_ack_over")
    assert tracker.flow().state == "SYN_RECV"


def test_max_retrans_zero_caps_every_state(tracker):
    """tcp_max_retrans = 0: retrans >= 0 always holds, so every state
    longer than tcp_timeout_max_retrans gets it."""
    tracker.set(tcp_max_retrans=0, tcp_timeout_max_retrans=100)
    c = Conn()
    send(tracker, c.frame(ORIG, "S"), "new")
    state_timeout(tracker, "SYN_SENT", min(T_SS, 100))
    send(tracker, c.frame(REPLY, "SA"))
    send(tracker, c.frame(ORIG, "A"))
    state_timeout(tracker, "ESTABLISHED", 100)


def test_an_ignored_syn_with_window_0_caps_the_timeout(tracker):
    """An ignored packet still records its raw window (last_win); a 0 there
    caps the next accepted packet's timeout at tcp_timeout_max_retrans."""
    tracker.set(tcp_timeout_max_retrans=100)
    c = Conn()
    handshake(tracker, c)
    ignored(tracker, c.frame(ORIG, "S", seq=c.nxt[ORIG] + 1_000_000, window=0))
    send(tracker, c.frame(REPLY, "FA"))
    state_timeout(tracker, "FIN_WAIT", 100)


def test_rst_answering_an_ignored_syn_closes_without_the_window(tracker):
    """The SYN was ignored (the tracker may be out of sync); the peer's RST
    acking it closes (the kernel skips td_maxack, possibly outdated, and
    the window)."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, ORIG)
    new_isn = c.nxt[ORIG] + 3_000_000
    ignored(tracker, c.frame(ORIG, "S", seq=new_isn))
    send(tracker, c.frame(REPLY, "RA", seq=0, ack=new_isn + 1))
    state_timeout(tracker, "CLOSE", T_CL)


@pytest.mark.parametrize("x", SIDES)
def test_rst_far_below_with_tcp_ignore_invalid_rst_is_ignored(tracker, x):
    """Not INVALID with tcp_ignore_invalid_rst=1, but more than a window
    below what was sent: the window checks ignore it, nothing changes."""
    tracker.set(tcp_ignore_invalid_rst=1)
    c = Conn(win=(1000, 1000))
    handshake(tracker, c)
    for _ in range(3):
        exchange(tracker, c, x, 900)
    exchange(tracker, c, other(x), 10)
    before = entry(tracker)
    ignored(tracker, c.frame(x, "R", seq=c.nxt[x] - 2000))
    after = entry(tracker)
    assert (after.state, after.expires) == (before.state, before.expires)


def test_out_of_window_fin_and_rst_leave_a_short_timeout_alone(tracker):
    """nf_tcp_handle_invalid cuts only a timeout of 120 s or more."""
    tracker.set(tcp_timeout_established=100)
    c = Conn()
    handshake(tracker, c)
    invalid(tracker, c.frame(ORIG, "FA", seq=c.nxt[ORIG] + (1 << 20)), "tcp_seq_over")
    invalid(tracker, c.frame(REPLY, "R", seq=c.nxt[REPLY] + (1 << 20)), "tcp_seq_over")
    state_timeout(tracker, "ESTABLISHED", 100)


def test_out_of_window_fins_from_one_side_only_do_not_cut(tracker):
    c = Conn()
    handshake(tracker, c)
    for _ in range(2):
        invalid(tracker, c.frame(ORIG, "FA", seq=c.nxt[ORIG] + (1 << 20)), "tcp_seq_over")
    state_timeout(tracker, "ESTABLISHED", T_ES)


def test_resync_after_an_ignored_syn_takes_its_window_and_scale(tracker):
    """The client restarted (new ISN, new scale); the tracker ignored its SYN
    and the server's SYN/ACK acknowledging it resynchronises: the opener's
    side comes from the annotated SYN, the server's from the SYN/ACK, and
    the windows then hold in the new sequence space."""
    c = Conn()
    handshake(tracker, c, syn_opts=MSS + wscale(1), synack_opts=MSS + wscale(1))
    exchange(tracker, c, ORIG)
    c.isn[ORIG] = c.nxt[ORIG] = (c.nxt[ORIG] + 7_000_000) & M
    c.isn[REPLY] = c.nxt[REPLY] = (c.nxt[REPLY] + 9_000_000) & M
    ignored(tracker, c.frame(ORIG, "S", opts=MSS + SACK_PERM + wscale(6), advance=True))
    send(tracker, c.frame(REPLY, "SA", opts=MSS + SACK_PERM + wscale(8), advance=True))
    o, r = side(tracker, ORIG), side(tracker, REPLY)
    assert tracker.flow().state == "SYN_RECV"
    assert (o.td_end, o.td_scale, o.flags & (TS_WINDOW_SCALE | TS_SACK_PERM)) == \
        (c.nxt[ORIG], 6, TS_WINDOW_SCALE | TS_SACK_PERM)
    assert (r.td_end, r.td_scale) == (c.nxt[REPLY], 8)
    send(tracker, c.frame(ORIG, "A"))
    assert tracker.flow().state == "ESTABLISHED"
    for x in (ORIG, REPLY):
        exchange(tracker, c, x)
        unchanged_by(tracker, c.frame(x, "PA", b"n", seq=c.nxt[x] + (1 << 28)), "tcp_seq_over")


# --------------------------------------------------------------------------
# the options wherever the TCP header sits


def _sack_beyond_is_invalid(tracker, c: Conn) -> None:
    handshake(tracker, c, syn_opts=MSS + SACK_PERM + wscale(2),
              synack_opts=MSS + SACK_PERM + wscale(2))
    assert side(tracker, ORIG).td_scale == 2
    base = c.nxt[ORIG]
    send(tracker, c.frame(ORIG, "PA", b"s" * 100))
    unchanged_by(tracker, c.frame(REPLY, "A", ack=base, opts=NOP + NOP + sack((base + 10, base + 101))),
                 "tcp_ack_over")
    send(tracker, c.frame(REPLY, "A", ack=base, opts=NOP + NOP + sack((base + 10, base + 100))))


@pytest.mark.parametrize("vlans", [P.DOT1Q, P.QINQ], ids=["dot1q", "qinq"])
def test_options_behind_vlan_tags(tracker, vlans):
    _sack_beyond_is_invalid(tracker, Conn(vlans=vlans))


def test_options_behind_ipv4_options(tracker):
    _sack_beyond_is_invalid(tracker, Conn(options=P.ipv4_options()))


def test_options_behind_ipv6_extension_headers(tracker):
    _sack_beyond_is_invalid(tracker, Conn(v6=True, ext=(P.hop_by_hop(), P.dest_opts(pad=6))))


def test_options_through_the_tc_program(tracker):
    """The TC program reads the options with bpf_skb_load_bytes: the same
    walk, the same verdicts."""
    from ctbpf.datapath import bpfsys  # noqa: PLC0415

    tc_fd = tracker.dp.prog_fd("ctbpf_tc_egress")
    base_inv = abi.const("CT_STAT_INVALID_BASE") + abi.const("CT_INV_TCP_ACK_OVER")

    def tc(frm: bytes) -> int:
        before = tracker.counters()[base_inv]
        assert bpfsys.prog_test_run(tc_fd, frm).retval == 0
        return tracker.counters()[base_inv] - before

    c = Conn()
    for frm in (c.frame(ORIG, "S", opts=MSS + SACK_PERM + wscale(4)),
                c.frame(REPLY, "SA", opts=MSS + SACK_PERM + wscale(5)),
                c.frame(ORIG, "A")):
        assert tc(frm) == 0
    assert (side(tracker, ORIG).td_scale, side(tracker, REPLY).td_scale) == (4, 5)
    base = c.nxt[ORIG]
    assert tc(c.frame(ORIG, "PA", b"s" * 100)) == 0
    assert tc(c.frame(REPLY, "A", ack=base, opts=TS_ALIGNED + NOP + NOP +
                      sack((base + 10, base + 101)))) == 1
    assert tc(c.frame(REPLY, "A", ack=base, opts=TS_ALIGNED + NOP + NOP +
                      sack((base + 10, base + 100)))) == 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_ethernet_padding_is_not_data(tracker, v6):
    """Short frames are padded to 60 bytes on the wire: seq + len comes from
    the IP length (the kernel trims the skb to it), not from the frame."""
    def pad(frm: bytes) -> bytes:
        return frm + b"\0" * (60 - len(frm)) if len(frm) < 60 else frm + b"\0" * 8

    c = Conn(v6=v6)
    send(tracker, pad(c.frame(ORIG, "S")), "new")
    send(tracker, pad(c.frame(REPLY, "SA")))
    send(tracker, pad(c.frame(ORIG, "A")))
    send(tracker, pad(c.frame(REPLY, "A")))
    for d in (ORIG, REPLY):
        s = side(tracker, d)
        assert s.td_end == c.nxt[d] and not s.flags & TS_DATA_UNACK, d
    state_timeout(tracker, "ESTABLISHED", T_ES)
    send(tracker, pad(c.frame(ORIG, "PA", b"x")))
    assert side(tracker, ORIG).td_end == c.nxt[ORIG]


def test_ignored_packets_are_not_accounted(tracker):
    """Checked on this kernel (nf_conntrack_acct=1): a SYN ignored in
    ESTABLISHED leaves `packets=2 bytes=80` as it was. The window checks'
    ignored packets (below the window, a slight overrun) return the same way."""
    c = Conn(win=(1000, 1000))
    handshake(tracker, c)
    exchange(tracker, c, ORIG, 900)
    before = tracker.flow()
    ignored(tracker, c.frame(ORIG, "S", seq=c.nxt[ORIG] + 1_000_000))
    ignored(tracker, c.frame(ORIG, "PA", b"o" * 100, seq=c.nxt[ORIG] - 2000))
    after = tracker.flow()
    assert (after.packets, after.bytes) == (before.packets, before.bytes)


@pytest.mark.parametrize("x", SIDES)
def test_windows_still_hold_while_closing(tracker, x):
    """A closing flow is back in ct_new (the other stage program): the same
    checks apply to its data and acks."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    send(tracker, c.frame(other(x), "FA"))
    send(tracker, c.frame(x, "A"))
    f = tracker.flow()
    assert f.state == "CLOSE_WAIT" and f.table == "new", f
    exchange(tracker, c, x)
    unchanged_by(tracker, c.frame(x, "PA", b"c", seq=c.nxt[x] + (1 << 22)), "tcp_seq_over")
    unchanged_by(tracker, c.frame(other(x), "A", ack=c.nxt[x] + 1), "tcp_ack_over")
    unchanged_by(tracker, c.frame(x, "A", ack=c.nxt[other(x)] + 1), "tcp_ack_over")


@pytest.mark.parametrize("seq", ["zero", "exact", "below", "far"])
@pytest.mark.parametrize("x", SIDES)
def test_rst_in_syn_recv(tracker, x, seq):
    """Not ESTABLISHED: a RST with seq 0 skips the td_maxack rule (the
    kernel takes it for an answer to a SYN it let through) but not the
    window; an exact one closes; one below td_maxack, when the peer has
    acked, is INVALID; one far beyond the window is INVALID. (The ISNs are
    far from 0: with a small ISN, seq 0 would be in the window.)"""
    c = Conn(isn=(1_000_000, 500_000))
    send(tracker, c.frame(ORIG, "S"), "new")
    send(tracker, c.frame(REPLY, "SA"))
    send(tracker, c.frame(REPLY, "A"))              # SYN_RECV still; REPLY has acked
    assert tracker.flow().state == "SYN_RECV"
    s = {"zero": 0, "exact": c.nxt[x], "below": c.nxt[x] - 10, "far": c.nxt[x] + (1 << 24)}[seq]
    out = tracker.send(c.frame(x, "R", seq=s))
    f = tracker.flow()
    expect = {
        # ORIG: REPLY's td_maxack (set by its ACKs) bounds ORIG's RSTs
        (ORIG, "zero"): ("ignored", "SYN_RECV"), (ORIG, "exact"): ("ok", "CLOSE"),
        (ORIG, "below"): ("tcp_rst", "SYN_RECV"), (ORIG, "far"): ("tcp_seq_over", "SYN_RECV"),
        # REPLY: ORIG sent no ACK yet, so no td_maxack bounds REPLY's RSTs
        (REPLY, "zero"): ("ignored", "SYN_RECV"), (REPLY, "exact"): ("ok", "CLOSE"),
        (REPLY, "below"): ("ok", "CLOSE"), (REPLY, "far"): ("tcp_seq_over", "SYN_RECV"),
    }[(x, seq)]
    verdict, state = expect
    if verdict == "ok":
        assert out.state == "established" and out.moved("ignored") == 0, out
    elif verdict == "ignored":
        assert out.state == "established" and out.moved("ignored") == 1, out
    else:
        assert (out.state, out.reason) == ("invalid", verdict), out
    assert f.state == state, f


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_pickup_from_the_servers_side_first(tracker, v6):
    """The first packet seen is the server's data: it becomes the opener of
    a liberal entry; the windows learn from the traffic that follows."""
    c = Conn(v6=v6, isn=(3_000_000_000, 123_456))
    send(tracker, c.frame(ORIG, "PA", b"x" * 300), "new")
    send(tracker, c.frame(REPLY, "A"))
    send(tracker, c.frame(ORIG, "PA", b"y" * 300))
    send(tracker, c.frame(REPLY, "A"))
    f = tracker.flow()
    assert f.state == "ESTABLISHED" and f.assured, f
    o = side(tracker, ORIG)
    assert o.td_end == c.nxt[ORIG] and o.flags & TS_BE_LIBERAL
    send(tracker, c.frame(ORIG, "PA", b"z", seq=c.nxt[ORIG] + (1 << 30)))   # liberal


def test_an_unanswered_syn_retransmission_is_not_accounted(tracker):
    """Checked on this kernel (nf_conntrack_acct=1): SYN, SYN, SYN with the
    same ISN leave `packets=1 bytes=40`: "do not renew timeout on SYN
    retransmit" returns before the accounting too."""
    c = Conn()
    for _ in range(3):
        send(tracker, c.frame(ORIG, "S", seq=c.isn[ORIG]), "new")
    f = tracker.flow()
    assert (f.packets, f.bytes) == ((1, 0), (40, 0)), f


# --------------------------------------------------------------------------
# a rebuild's copy (CT_TS_RESYNC, ctbpf/agent/resync.py)

TS_RESYNC = abi.const("CT_TS_RESYNC")


def resync_hold(t, on: bool) -> None:
    from ctbpf.datapath import configmap  # noqa: PLC0415

    fd = bpfsys.obj_get(str(t.pin_dir / configmap.MAP))
    try:
        configmap.set_resync_hold(fd, on)
    finally:
        os.close(fd)


def marks(t) -> list[bool]:
    return [bool(f & TS_RESYNC) for f in entry(t).td_flags]


@pytest.mark.parametrize("x", SIDES)
def test_a_rebuilds_lagging_copy_catches_up_while_marked(tracker, x):
    """An entry copied by a rebuild, then left behind by traffic only the
    old tables saw (300 bytes x sent), is marked for resync on both sides.
    Its packets pass without the checks and still move the windows; while
    the agent holds the marks, none clears; then each side's next packet
    clears its own. Echoed data is the case that shows it: each segment acks
    the peer's last one, so a copy that let them pass without recording
    them (as liberal does) stayed behind for good, and once strict again
    every segment was an ack of unsent data."""
    c = Conn()
    handshake(tracker, c)
    exchange(tracker, c, x)
    raw = tracker.entry()
    stale = bytes(raw.entry)
    for _ in range(3):
        exchange(tracker, c, x)                 # what only the old tables saw
    raw.entry = abi.CtEntry.from_buffer_copy(stale)
    for d in range(2):
        raw.entry.td_flags[d] |= TS_RESYNC
    tracker._write(raw)
    resync_hold(tracker, True)
    try:
        for _ in range(2):                      # an echo: data both ways, each acking the other's
            send(tracker, c.frame(other(x), "PA", b"e"))
            send(tracker, c.frame(x, "PA", b"e"))
        assert marks(tracker) == [True, True], "a held mark was cleared"
        assert (side(tracker, x).td_end, side(tracker, other(x)).td_end) == \
            (c.nxt[x], c.nxt[other(x)])
    finally:
        resync_hold(tracker, False)
    send(tracker, c.frame(other(x), "PA", b"e"))
    assert side(tracker, other(x)).flags & TS_RESYNC == 0
    assert side(tracker, x).flags & TS_RESYNC, "only the sender's own mark clears"
    send(tracker, c.frame(x, "PA", b"e"))
    assert marks(tracker) == [False, False]
    for _ in range(2):                          # strict again, and still in step
        send(tracker, c.frame(other(x), "PA", b"e"))
        send(tracker, c.frame(x, "PA", b"e"))
    send(tracker, c.frame(other(x), "A"))
    unchanged_by(tracker, c.frame(other(x), "A", ack=c.nxt[x] + 1), "tcp_ack_over")
    state_timeout(tracker, "ESTABLISHED", T_ES)
