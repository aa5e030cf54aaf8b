"""The listing formats, checked against the spec's own example lines."""

import json

import pytest

from ctbpf import abi
from ctbpf.datapath import formats
from ctbpf.datapath.flowkey import key_from_tuple
from ctbpf.datapath.table import decode

NOW = abi.tick_ns(abi.ticks(10_000 * 1_000_000_000))   # the start of a tick
F = {name: abi.const(f"CT_F_{name}") for name in ("SEEN_REPLY", "ASSURED", "ORIG_IS_HI")}


def flow(src, dst, proto, sport=0, dport=0, *, state=0, seconds_left=0.5, flags=(),
         icmp_query=0, packets=(1, 0), nbytes=(60, 0)):
    key, src_is_hi = key_from_tuple(src, dst, proto, sport, dport, icmp_query)
    entry = abi.CtEntry()
    # the first tick at or after the instant: at least seconds_left remain
    entry.expires = -(-(NOW + int(seconds_left * 1e9)) >> abi.TICK_SHIFT)
    entry.state = state
    entry.flags = sum(F[f] for f in flags) | (F["ORIG_IS_HI"] if src_is_hi else 0)
    acct = None if packets is None else (*packets, *nbytes)
    if acct is not None:
        entry.flags |= abi.const("CT_F_ACCT")
    return decode(key, entry, NOW, "ct_new", acct)


# The spec's three listing examples (section 7.4), joined onto one line each.
SPEC_LINES = [
    ("tcp      6 117 SYN_SENT src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 [UNREPLIED] "
     "src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 use=1", 1, 117.9, ()),
    ("tcp      6 57 SYN_RECV src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 "
     "src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 use=1", 2, 57.2, ("SEEN_REPLY",)),
    ("tcp      6 431999 ESTABLISHED src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 "
     "src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 [ASSURED] use=1", 3, 431999.5,
     ("SEEN_REPLY", "ASSURED")),
]


@pytest.mark.parametrize("line, state, left, flags", SPEC_LINES, ids=["syn_sent", "syn_recv", "established"])
def test_proc_line_is_the_spec_byte_for_byte(line, state, left, flags):
    f = flow("192.168.1.5", "192.168.1.35", 6, 1031, 23, state=state, seconds_left=left, flags=flags)
    assert formats.proc_line(f) == line


def test_opener_on_the_hi_side_keeps_its_direction():
    # 192.168.1.35 sorts after 192.168.1.5 byte-wise in word order; open from it
    f = flow("192.168.1.35", "192.168.1.5", 6, 23, 1031, state=1, seconds_left=120)
    assert (f.orig.src, f.orig.sport, f.reply.src, f.reply.sport) == ("192.168.1.35", 23, "192.168.1.5", 1031)


def test_udp_icmp_and_generic_lines():
    udp = flow("10.0.0.1", "10.0.0.2", 17, 5000, 53, seconds_left=29.5)
    assert formats.proc_line(udp) == ("udp      17 29 src=10.0.0.1 dst=10.0.0.2 sport=5000 dport=53 "
                                      "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=53 dport=5000 use=1")
    icmp = flow("10.0.0.1", "10.0.0.2", 1, 77, 77 ^ 0xFFFF, icmp_query=8 << 8, seconds_left=30,
                flags=("SEEN_REPLY",))
    assert formats.proc_line(icmp) == ("icmp     1 30 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=77 "
                                       "src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=77 use=1")
    gre = flow("fd00::1", "fd00::2", 47, seconds_left=600)
    assert formats.proc_line(gre) == ("unknown  47 600 src=fd00::1 dst=fd00::2 [UNREPLIED] "
                                      "src=fd00::2 dst=fd00::1 use=1")


def test_icmpv6_reply_type():
    f = flow("fd00::1", "fd00::2", 58, 9, 9 ^ 0xFFFF, icmp_query=128 << 8, seconds_left=30)
    assert (f.orig.type, f.reply.type, f.orig.id) == (128, 129, 9)


def test_conntrack_line_carries_counters_and_mark():
    f = flow("192.168.1.5", "192.168.1.35", 6, 1031, 23, state=3, seconds_left=431999.5,
             flags=("SEEN_REPLY", "ASSURED"), packets=(3, 2), nbytes=(180, 120))
    assert formats.conntrack_line(f) == (
        "tcp      6 431999 ESTABLISHED src=192.168.1.5 dst=192.168.1.35 sport=1031 dport=23 "
        "packets=3 bytes=180 src=192.168.1.35 dst=192.168.1.5 sport=23 dport=1031 packets=2 "
        "bytes=120 [ASSURED] mark=0 use=1")


def test_json_has_the_documented_keys():
    f = flow("10.0.0.1", "10.0.0.2", 6, 1, 2, state=1, seconds_left=120)
    (obj,) = json.loads(formats.json_text([f]))
    assert set(obj) >= {"proto", "protonum", "timeout", "state", "orig", "reply", "flags",
                        "packets", "bytes"}
    assert obj["orig"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2}
    assert obj["flags"] == ["UNREPLIED"] and obj["state"] == "SYN_SENT" and obj["timeout"] == 120
