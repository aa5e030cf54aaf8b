"""Per-packet cost of the datapath through BPF_PROG_TEST_RUN (issue 6).

Measured on the real ctbpf_xdp program (bpf/ctbpf.c, loaded with
ctbpf.datapath.loader.Datapath into a private pin directory) beside three
baselines from bench/bpf/baseline.c, all loaded into this kernel in the
same run: an empty XDP program, a bare "parse + one hash lookup +
counter" program and a bare "parse + one LRU insert + counter" program,
whose maps have the datapath's 40-byte key, struct ct_entry value (120 bytes
since window tracking; 56 before) and max entries.

Paths, each for IPv4 and IPv6 on minimum-size frames (64 bytes, or the
headers' size when larger: 74 for IPv6 TCP):

  tcp_hit        ACK of an ESTABLISHED ASSURED flow, <= 1k flows in the
                 tables, and again with 1M flows (warm: the same few hundred
                 frames over and over; cold: every packet a different flow)
  udp_hit        datagram of an ASSURED UDP stream
  icmp_related   ICMP/ICMPv6 destination unreachable quoting a tracked flow
  new_flow       SYN of a flow never seen, ct_new 25% and 90% full
  malformed      IPv4 header longer than the frame / IPv6 payload length
                 beyond the frame
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import secrets
import struct
import time
from pathlib import Path

import numpy as np

from ctbpf import abi
from ctbpf.datapath import bpfsys, configmap, stats
from ctbpf.datapath.loader import Datapath, remove_pins
from ctbpf.paths import BPF_DIR

from . import common

HELP = "per-packet cost of the datapath (BPF_PROG_TEST_RUN) beside empty/bare-lookup/bare-insert"

NOTES = """\
**What is measured.** `bench/datapath.py` runs the real `ctbpf_xdp` program
(`bpf/ctbpf.c`, loaded by `ctbpf.datapath.loader.Datapath` into a private pin
directory) through `BPF_PROG_TEST_RUN` and reads the kernel's own per-run
duration, which leaves out the system call. In the same run and on the same
frames it runs three baselines from `bench/bpf/baseline.c`, loaded with BCC:
an *empty* XDP program, a *bare lookup* (parse Ethernet / IPv4 or IPv6 / the
ports, or an ICMP error's quoted header; build the same 40-byte
`struct ct_key` with the same lo/hi ordering; one lookup in a hash of the
datapath's size with its `struct ct_entry` value; one per-CPU counter) and a *bare
insert* (the same parse, one `update` into an LRU hash of the same size).
Variants run interleaved, in random order, run after run, so drift and the
other work on the machine hit all alike; each figure is the median of the
runs, with min and max. Frames are 64 bytes, or the headers' size when that
is larger (74 bytes for IPv6 TCP, 70/110 for ICMP errors).

**Net of the empty program.** On this 2-CPU VM (retpolines on) the test
harness alone costs about 20-25 ns per run with an empty program (softirq
toggling and the repeat loop), which a NIC driver's XDP loop does not pay
per packet. Every ctbpf and baseline figure is therefore given net of the
empty program measured the same way in the same run (`ctbpf - empty`); the
gross figures are kept in the results (`*_gross`). Every program is
attached (XDP) to a down veth in a private network namespace while it is
measured: otherwise each test run with `repeat > 1` adds the program to the
kernel's XDP dispatcher and removes it again, two RCU grace periods (~25 ms)
per call, and runs it through a retpolined indirect call instead of the
dispatcher's direct call. The kernel truncates its per-run average to whole
nanoseconds; 0.5 ns is added back to every `repeat > 1` figure (the same for
every program, so differences are unaffected).

**Varying keys.** `repeat=N` replays one frame. Hits, ICMP errors and
malformed frames use 250 distinct flows per path, each frame replayed
`repeat` times (warm caches: the cost of the code). For cold caches and for
new flows, a fourth program, `bench_wrap`, writes another client address
into the frame on every iteration and tail-calls the program measured
(ctbpf, bare lookup, bare insert or empty), so one test run sends
thousands of different flows; the wrapper's cost is removed by subtracting
wrap -> empty. The *cold* 1M figure sends 200,000 flows per run, one packet
each, taken with a large prime stride through the table's flows, so that
neither the buckets (spread by the hash) nor the elements (laid out in
insertion order) are met in an order the caches or prefetchers could use.

**Realistic tables.** The <= 1k-flow tables are built by the datapath itself:
a SYN, SYN/ACK, ACK handshake per TCP flow, and a request, a reply and a
third datagram 2 s later per UDP flow, so every entry is ESTABLISHED (or a
UDP stream) and ASSURED in `ct_assured`. The 1M-flow table is filled with
`BPF_MAP_UPDATE_BATCH` with copies of a handshake-made entry (the exact
layout the datapath writes); a sample of those flows is sent through the
datapath first and must count as ESTABLISHED, with no insert or promotion.
Every timed run is checked against the counters (`ct_stats` ESTABLISHED,
RELATED, INVALID, NEW and INSERT; the baselines' hit and insert counters),
so each path is really the one taken. New flows go into `ct_new` filled to
25% / 90% with SYN_SENT entries (`ct_assured` empty), with fresh keys every
run, and are deleted again after each run so the fill level stays put.
Events are on (the default) with nobody listening, the daemon's state
while no `ctbpf events` client is connected: the datapath then writes no
event (the relay keeps its client count in ct_config). The same with a
listener (a NEW event per flow, the ring drained between slices of 4,096
packets) is shown too. The expiry index's ring (`ct_timers`, read by the
sweeper in a running agent) is drained the same way, so every new flow
writes its record. Per-flow counters are off (`acct`, the kernel's
default).

**Where the time goes** (issue 15). The breakdown comes from `python -m
bench dpcompare` variants (bench/dpvariants.py), each a copy of bpf/ with
one part taken out, measured interleaved with this tree in one run (TCP ACK
with the timestamp option, 1k flows, warm; a SYN with Linux's options,
ct_new 25% full):

- *Established hit.* With `acct` off the hit has no ct_acct lookup and no
  atomic adds on a shared line: a UDP stream's hit costs what the bare
  lookup does (about 38-39 ns net), and a TCP ACK about 62 ns, of which
  window tracking is about 10 ns (the `nowin` variant of the window
  tracking issue) and option handling about 2 ns (`noopt`). The rest of
  the TCP hit's extra over UDP is the state table, the retransmission
  bookkeeping and the second program (the ASSURED stage is tail-called).
  With `acct=1` the same hit costs about 125 ns: the ct_acct lookup and two
  atomic adds. What would close the remaining 1.6x: an ACK fast path in
  the ASSURED stage (ESTABLISHED, ASSURED, no mark, ACK without SYN, FIN
  or RST: the window check and the expiry only, no state table), and a
  parse stage that does not zero the ICMP error's inner tuple for every
  frame.
- *Cold hit at 1M flows.* The lookup's cache misses dominate both sides;
  ctbpf writes the entry's line (windows, expiry when its tick moves) where
  the bare lookup only reads it.
- *New flow.* A SYN cost about 1,050 ns net with a listener against a bare
  LRU insert's 400-650. The NEW event was about 160-175 ns (`noevents`):
  it is no longer written while nobody listens. The option walk of a SYN
  was about 135-160 ns (`noopt`): Linux's SYN options are now read in
  place (about 30-45 ns saved; the rest of `noopt`'s gain is the header
  parse around it). What remains over the bare insert: the expiry index's
  record, about 80 ns (`notimer`), and the two lookups that miss
  (ct_assured, then ct_new) before the insert, which the bare insert does
  not make. Tried and not taken: `BPF_F_NO_COMMON_LRU` for ct_new
  (`percpulru`) gains 30-40 ns, within the noise, and gives each CPU a
  fixed share of new_max, so one CPU's flows could evict each other while
  the other CPU's share sits free. `BPF_NOEXIST` first, ct_new looked up
  only on `EEXIST`, would spare the second miss, but an LRU update takes a
  free node before it checks the key (kernel/bpf/hashtab.c,
  htab_lru_map_update_elem), evicting another flow when none is free:
  every SYN of an existing flow (retransmissions, port reuse) would then
  evict an unrelated unassured flow; the kernel too looks up before it
  allocates. What would close it: the expiry record batched per CPU (a
  per-CPU array of pending records the sweeper drains), and one lookup for
  both tables (a single table with the ASSURED bit in the value and a
  separate eviction policy, which BPF hash maps do not offer).
"""

BPFFS = Path("/sys/fs/bpf")
BASELINE_SRC = Path(__file__).resolve().parent / "bpf" / "baseline.c"
NS = 1_000_000_000
DAY_NS = 86400 * NS
KEY_SIZE = ctypes.sizeof(abi.CtKey)
ENTRY_SIZE = ctypes.sizeof(abi.CtEntry)
EXPIRES_AT = abi.CtEntry.expires.offset
CREATED_AT = abi.CtEntry.created.offset
F4, F6 = abi.const("CT_FAMILY_IPV4"), abi.const("CT_FAMILY_IPV6")
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SPORT, DPORT_TCP, DPORT_UDP = 40000, 443, 53
REPEAT_BIAS_NS = 0.5          # the kernel's per-run average is truncated to whole ns
# ct_timers for the benches: two slices of 4,096 new flows (56-byte records).
TIMERS_BYTES = 1 << 19

STAT = {n: abi.const(f"CT_STAT_{n.upper()}") for n in
        ("pkt_new", "pkt_established", "pkt_related", "pkt_invalid", "found", "insert",
         "insert_failed", "promote", "event_lost")}
if "CT_STAT_TIMER_LOST" in abi.CONSTS:       # the expiry index (ct_timers), when built in
    STAT["timer_lost"] = abi.const("CT_STAT_TIMER_LOST")
BENCH_HIT, BENCH_MISS, BENCH_INSERT, BENCH_INSERT_FAILED, BENCH_UNPARSED, BENCH_ACCT_HIT = range(6)

# Targets of issue 15 (the malformed frame's is issue 6's).
TARGET_HIT_WARM_RATIO = 1.5      # x bare lookup, 1k and 1M flows
TARGET_HIT_COLD_RATIO = 1.1      # x bare lookup, 1M flows
TARGET_NEW_QUARTER_RATIO = 1.2   # x bare LRU insert, ct_new 25% full
TARGET_NEW_FULL_RATIO = 1.25     # ... 90% full
TARGET_MALFORMED_NS = 30.0


def add_arguments(g) -> None:
    g.add_argument("--datapath-table-size", type=int, default=1 << 20, metavar="N",
                   help="max entries of every table, datapath and baselines (default 1048576)")
    g.add_argument("--datapath-flows", type=int, default=1000, metavar="N",
                   help="flows in the small tables, made by handshakes (default 1000)")
    g.add_argument("--datapath-big-flows", type=int, default=1_000_000, metavar="N",
                   help="flows in the big table (default 1000000)")
    g.add_argument("--datapath-packets", type=int, default=200_000, metavar="N",
                   help="packets per run of a replayed-frames figure (default 200000)")
    g.add_argument("--datapath-cold-packets", type=int, default=200_000, metavar="N",
                   help="packets per run of the cold figure, each another flow (default 200000)")
    g.add_argument("--datapath-new-flows", type=int, default=50_000, metavar="N",
                   help="new flows per run (at most 5%% of the table; default 50000)")
    g.add_argument("--datapath-total", type=int, default=1_000_000, metavar="N",
                   help="packets per figure at least, over all runs (default 1000000)")
    g.add_argument("--datapath-runs", type=int, default=9, metavar="N",
                   help=f"runs per figure at least (default 9; at least {common.MIN_RUNS}: "
                        f"more runs keep the medians steady on a shared machine)")
    g.add_argument("--datapath-max-seconds", type=float, default=900, metavar="S",
                   help="give up after this long (default 900)")


# --------------------------------------------------------------------------
# BPF_PROG_TEST_RUN without per-call allocations


XDP_PASS = 2
CLONE_NEWNET = 0x40000000


class Runner:
    """Runs a program over an (n, L) array of frames, one test run per frame."""

    def __init__(self) -> None:
        self.nr = bpfsys.syscall_nr()
        libc = ctypes.CDLL(None, use_errno=True)
        self.call = libc.syscall
        self.call.restype = ctypes.c_long
        self.call.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_long]
        self.attr = bpfsys.TestRunAttr()
        self.ref = ctypes.addressof(self.attr)
        self.size = ctypes.sizeof(self.attr)

    def run(self, fd: int, frames: np.ndarray, repeat: int = 1, start: int = 0,
            stop: int | None = None) -> float:
        """Sum over frames[start:stop] of the kernel's ns per run (the
        kernel truncates its per-run average to whole ns: with repeat > 1
        half a nanosecond is added back per frame). Every run must return
        XDP_PASS (a failed tail call returns XDP_ABORTED)."""
        n, length = frames.shape
        stop = n if stop is None else stop
        base = frames.ctypes.data
        a, call, nr, ref, size = self.attr, self.call, self.nr, self.ref, self.size
        a.prog_fd, a.data_size_in, a.repeat, a.data_out = fd, length, repeat, 0
        total = 0
        for i in range(start, stop):
            a.data_in = base + i * length
            a.data_size_out = 0
            if call(nr, bpfsys.BPF_PROG_TEST_RUN, ref, size) < 0:
                err = ctypes.get_errno()
                raise bpfsys.BpfError(err, f"test run: {os.strerror(err)}")
            if a.retval != XDP_PASS:
                raise RuntimeError(f"test run returned {a.retval}, not XDP_PASS")
            total += a.duration
        return total + (REPEAT_BIAS_NS * (stop - start) if repeat > 1 else 0.0)


class Hooks:
    """A private network namespace holding one veth pair per program, each
    program attached (XDP) to one end. An attached program sits in the
    kernel's XDP dispatcher; one that is not is added to it and removed again
    by every BPF_PROG_TEST_RUN with repeat > 1, two RCU grace periods (about
    25 ms here) per call. Attached, a call costs only its runs, and the
    programs are entered as a driver enters them (a direct call). The
    interfaces stay down: no packet reaches them. Deleting the namespace
    detaches everything."""

    def __init__(self) -> None:
        self.ns = f"ctbpf-bench-{secrets.token_hex(4)}"
        self.created = False
        self.count = 0

    def attach(self, fd: int) -> None:
        from bcc.libbcc import lib  # noqa: PLC0415

        if not self.created:
            _ip("netns", "add", self.ns)
            self.created = True
        dev = f"b{self.count}"
        self.count += 1
        _ip("-n", self.ns, "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {self.ns}")
            try:
                if lib.bpf_attach_xdp(dev.encode(), fd, 0) < 0:
                    raise RuntimeError(f"cannot attach XDP to {dev} in {self.ns}")
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to our namespace")
        finally:
            os.close(home)
            os.close(there)

    def close(self) -> None:
        if self.created:
            _ip("netns", "del", self.ns)
            self.created = False


def _ip(*args: str) -> None:
    import subprocess  # noqa: PLC0415

    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


# --------------------------------------------------------------------------
# flows and frames
#
# Every flow is client -> server with the client's address varying. The
# addresses are chosen so that the server is always the key's lo side (the
# words compare as host-order integers, so the byte that differs last in
# memory decides): IPv4 clients end in .2 and the server is 192.168.0.1;
# IPv6 clients live in fd00:1::/32 and the server is fd00::1. Keys can then
# be written with array slices, without a Python loop per flow.

ETH = bytes.fromhex("020000000002" "020000000001")
SERVER4 = bytes([192, 168, 0, 1])
SERVER6 = bytes.fromhex("fd000000000000000000000000000001")
CLIENT6_PREFIX = bytes.fromhex("fd000001" "0000000000000000")
MIN_FRAME = 64


def _ipv4(src: bytes, dst: bytes, proto: int, l4_len: int, ihl: int = 5) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + l4_len, 0, 0x4000, 64, proto, 0,
                       src, dst)


def _ipv6(src: bytes, dst: bytes, nexthdr: int, payload_len: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, nexthdr, 64, src, dst)


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)


def _udp(sport: int, dport: int, payload: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + payload, 0) + bytes(payload)


def _pad(frame: bytes) -> bytes:
    return frame + bytes(max(0, MIN_FRAME - len(frame)))


class FlowSet:
    """n flows of one family and protocol, numbered first..first+n-1."""

    def __init__(self, family: int, proto: int, first: int, n: int) -> None:
        if first + n > 240 << 16:
            raise ValueError("flow numbers beyond the address plan")
        self.family, self.proto, self.first, self.n = family, proto, first, n
        self.alen = 4 if family == F4 else 16
        self.dport = DPORT_TCP if proto == TCP else DPORT_UDP

    def clients(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), alen) uint8: the clients' addresses."""
        v = (np.asarray(idx, dtype=np.uint32) + np.uint32(self.first))
        out = np.empty((len(v), self.alen), dtype=np.uint8)
        if self.family == F4:
            out[:, 0] = 11 + (v >> 16)
            out[:, 1] = (v >> 8) & 0xFF
            out[:, 2] = v & 0xFF
            out[:, 3] = 2
        else:
            out[:, :12] = np.frombuffer(CLIENT6_PREFIX + bytes(4), dtype=np.uint8)[:12]
            out[:, 12:] = v.astype(">u4").view(np.uint8).reshape(-1, 4)
        return out

    def client_bytes(self, i: int) -> bytes:
        return self.clients(np.array([i])).tobytes()

    @property
    def server(self) -> bytes:
        return SERVER4 if self.family == F4 else SERVER6

    def keys(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), 40) uint8: the datapath's keys of these flows."""
        out = np.zeros((len(idx), KEY_SIZE), dtype=np.uint8)
        out[:, 0:self.alen] = np.frombuffer(self.server, dtype=np.uint8)
        out[:, 16:16 + self.alen] = self.clients(idx)
        out[:, 32:34] = np.frombuffer(struct.pack("!H", self.dport), dtype=np.uint8)
        out[:, 34:36] = np.frombuffer(struct.pack("!H", SPORT), dtype=np.uint8)
        out[:, 36] = self.proto
        out[:, 37] = self.family
        return out

    # Each template has zeros where the client's address goes: offsets listed.
    def _template(self, kind: str) -> tuple[bytes, list[int]]:
        c = bytes(self.alen)
        s = self.server
        v4 = self.family == F4
        ethertype = b"\x08\x00" if v4 else b"\x86\xdd"
        l3 = 14
        src_at, dst_at = (l3 + 12, l3 + 16) if v4 else (l3 + 8, l3 + 24)

        def ip(src, dst, proto, l4_len):
            return _ipv4(src, dst, proto, l4_len) if v4 else _ipv6(src, dst, proto, l4_len)

        if kind in ("syn", "ack", "synack"):
            if kind == "synack":
                l4 = _tcp(DPORT_TCP, SPORT, 5000, 1001, 0x12)
                return _pad(ETH + ethertype + ip(s, c, TCP, 20) + l4), [dst_at]
            l4 = (_tcp(SPORT, DPORT_TCP, 1000, 0, 0x02) if kind == "syn"
                  else _tcp(SPORT, DPORT_TCP, 1001, 5001, 0x10))
            return _pad(ETH + ethertype + ip(c, s, TCP, 20) + l4), [src_at]
        if kind in ("udp", "udp_reply"):
            payload = (MIN_FRAME - 14 - (20 if v4 else 40) - 8)
            if kind == "udp_reply":
                return ETH + ethertype + ip(s, c, UDP, 8 + payload) + _udp(
                    DPORT_UDP, SPORT, payload), [dst_at]
            return ETH + ethertype + ip(c, s, UDP, 8 + payload) + _udp(
                SPORT, DPORT_UDP, payload), [src_at]
        if kind == "icmp_error":
            # The server's side reports the client's TCP segment unreachable.
            quoted_l4 = _tcp(SPORT, DPORT_TCP, 1001, 5001, 0x10)[:8]
            if v4:
                inner = _ipv4(c, s, TCP, 20) + quoted_l4
                icmp = struct.pack("!BBHI", 3, 1, 0, 0) + inner
                frame = ETH + ethertype + _ipv4(s, c, ICMP, len(icmp)) + icmp
                return _pad(frame), [dst_at, l3 + 20 + 8 + 12]
            inner = _ipv6(c, s, TCP, 20) + quoted_l4
            icmp = struct.pack("!BBHI", 1, 3, 0, 0) + inner
            frame = ETH + ethertype + _ipv6(s, c, ICMPV6, len(icmp)) + icmp
            return _pad(frame), [dst_at, l3 + 40 + 8 + 8]
        if kind == "malformed":
            if v4:   # IHL 15: a 60-byte header that the 64-byte frame cuts short
                frame = ETH + ethertype + _ipv4(c, s, TCP, 20, ihl=15) + _tcp(
                    SPORT, DPORT_TCP, 1001, 5001, 0x10)
            else:    # payload length beyond the frame
                frame = ETH + ethertype + _ipv6(c, s, TCP, 1000) + _tcp(
                    SPORT, DPORT_TCP, 1001, 5001, 0x10)
            return _pad(frame), [src_at]
        raise ValueError(kind)

    def frames(self, kind: str, idx) -> np.ndarray:
        """(len(idx), L) uint8, C-contiguous: one frame per flow."""
        idx = np.asarray(idx)
        template, offsets = self._template(kind)
        out = np.tile(np.frombuffer(template, dtype=np.uint8), (len(idx), 1))
        addrs = self.clients(idx)
        for at in offsets:
            out[:, at:at + self.alen] = addrs
        return np.ascontiguousarray(out)


def entries_like(template: bytes, n: int, now_ns: int) -> np.ndarray:
    """(n, ENTRY_SIZE) uint8: copies of a datapath-made entry, created a
    second ago, expiring in five days (times in ticks, abi.h)."""
    out = np.tile(np.frombuffer(template, dtype=np.uint8), (n, 1))
    w = out.view(np.uint32)
    w[:, EXPIRES_AT // 4] = abi.ticks(now_ns + 5 * DAY_NS)
    w[:, CREATED_AT // 4] = abi.ticks(now_ns - NS)
    return out


def update_batch(fd: int, keys: np.ndarray, values: np.ndarray, chunk: int = 1 << 16) -> int:
    keys = np.ascontiguousarray(keys)
    values = np.ascontiguousarray(values)
    done = 0
    for at in range(0, len(keys), chunk):
        k, v = keys[at:at + chunk], values[at:at + chunk]
        done += bpfsys.update_batch(fd, k.ctypes.data, v.ctypes.data, len(k))
    return done


def delete_keys(fd: int, keys: np.ndarray, chunk: int = 1 << 16) -> int:
    done = 0
    for at in range(0, len(keys), chunk):
        done += bpfsys.delete_batch(fd, keys[at:at + chunk].tobytes(), KEY_SIZE)
    return done


def percpu_sum(fd: int, index: int, value_size: int = 8) -> int:
    ncpu = bpfsys.possible_cpus()
    buf = ctypes.create_string_buffer(value_size * ncpu)
    bpfsys.lookup(fd, ctypes.c_uint32(index), buf)
    return sum(struct.unpack_from("<Q", buf.raw, c * value_size)[0] for c in range(ncpu))


# --------------------------------------------------------------------------
# the loaded programs

SLOT = {"ctbpf": 0, "empty": 1, "lookup": 2, "insert": 3, "acct": 4}
HIT_COUNTER = {"lookup": BENCH_HIT, "acct": BENCH_ACCT_HIT}


class _WrapCfg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("at", "family", "first", "count", "next",
                                                "target", "stride")]


SCATTER = 1_000_003    # a prime: the cold walk's stride (coprime with any count below it)


class Baseline:
    """bench/bpf/baseline.c: empty, bare lookup, bare insert and the wrapper."""

    def __init__(self, entries: int, lru_entries: int | None = None) -> None:
        import bcc  # noqa: PLC0415

        self.entries = entries
        self.bpf = bcc.BPF(src_file=str(BASELINE_SRC).encode(),
                           cflags=[f"-I{BPF_DIR}", f"-DBENCH_ENTRIES={entries}",
                                   f"-DBENCH_LRU_ENTRIES={lru_entries or entries}",
                                   "-Wno-unused-function"])
        self.fd = {name: self.bpf.load_func(f"bench_{name}".encode(), bcc.BPF.XDP).fd
                   for name in ("empty", "lookup", "acct", "insert", "wrap")}
        self.hash_fd = self.bpf[b"bench_hash"].map_fd
        self.lru_fd = self.bpf[b"bench_lru"].map_fd
        self.stats_fd = self.bpf[b"bench_stats"].map_fd
        self.cfg_fd = self.bpf[b"bench_wrap_cfg"].map_fd
        targets = self.bpf[b"bench_targets"]
        for name in ("empty", "lookup", "acct", "insert"):
            targets[ctypes.c_int(SLOT[name])] = ctypes.c_int(self.fd[name])
        self.targets = targets

    def set_target(self, name: str, fd: int) -> None:
        self.targets[ctypes.c_int(SLOT[name])] = ctypes.c_int(fd)

    def wrap(self, target: str, family: int, at: int, first: int, count: int,
             start: int = 0, stride: int = 1) -> None:
        if count > 1 and math.gcd(stride, count) != 1:
            raise ValueError("the wrapper's stride must be coprime with the flow count")
        cfg = _WrapCfg(at=at, family=family, first=first, count=count, next=start,
                       target=SLOT[target], stride=stride % max(1, count))
        bpfsys.update(self.cfg_fd, ctypes.c_uint32(0), cfg)

    def counter(self, idx: int) -> int:
        return percpu_sum(self.stats_fd, idx)

    def close(self) -> None:
        self.bpf.cleanup()


class Tracker:
    """The real datapath, loaded into a private pin directory."""

    def __init__(self, entries: int, tag: str) -> None:
        self.pin_dir = BPFFS / f"ctbpf-bench-{tag}-{secrets.token_hex(4)}"
        self.dp: Datapath | None = None
        self.map_fd: dict[str, int] = {}
        self.events = 0
        self.timers = None
        try:
            # each table `entries` large, as before max became both
            # tables' total: ct_assured at its full size, not grown on the way
            # the expiry index's ring holds a slice of new flows (4,096,
            # drained between slices) whatever the table's size: a running
            # agent's sweeper reads it far more often than a slice lasts
            self.dp = Datapath(self.pin_dir, max_entries=2 * entries, new_max=entries,
                               assured=entries, timers_bytes=TIMERS_BYTES).load()
            self.dp.open_events(self._on_event)
            self.fd = self.dp.prog_fd()
            self.map_fd = {name: bpfsys.obj_get(str(self.pin_dir / name))
                           for name in ("ct_new", "ct_assured")}
            if (self.pin_dir / "ct_timers").exists():
                # The expiry index's ring, read by the agent's sweeper: read
                # (and dropped) here the same way, so that new flows always
                # find room for their registration, as in a running agent.
                from ctbpf.datapath.ringbuf import RingReader  # noqa: PLC0415

                fd = bpfsys.obj_get(str(self.pin_dir / "ct_timers"))
                try:
                    self.timers = RingReader(fd)
                finally:
                    os.close(fd)
                self.timer_size = ctypes.sizeof(abi.STRUCTS["ct_timer"])
        except BaseException:
            self.close()
            raise

    def _on_event(self, _ev) -> None:
        self.events += 1

    def drain(self) -> None:
        """Read what the datapath wrote into its rings (events, expiry index)."""
        self.dp.poll_events(0)
        if self.timers is not None:
            while self.timers.consume_fixed(self.timer_size, 1 << 16, lambda *_: None):
                pass

    def counters(self) -> dict[str, int]:
        c = stats.read_counters(self.pin_dir)
        return {name: c[i] for name, i in STAT.items()}

    def listen(self, on: bool) -> None:
        """What the daemon's event relay does while a `ctbpf events` client
        is connected: with no listener the datapath emits no event."""
        self.dp.set_event_listeners(int(on))

    def set_tunable(self, name: str, value: int) -> None:
        configmap.write_values(self.pin_dir, {name: value})

    def close(self) -> None:
        if self.timers is not None:
            self.timers.close()
            self.timers = None
        for fd in self.map_fd.values():
            os.close(fd)
        self.map_fd = {}
        try:
            if self.dp is not None:
                self.dp.close()
                self.dp = None
        finally:
            remove_private_dir(self.pin_dir)


def remove_private_dir(pin_dir: Path) -> None:
    """Unpin everything in a pin dir this benchmark created, then remove it."""
    remove_pins(pin_dir)
    if pin_dir.exists():
        for p in pin_dir.iterdir():
            try:
                p.unlink()
            except OSError:
                pass
        try:
            pin_dir.rmdir()
        except OSError:
            pass


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def check(what: str, got: int, want: int) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got}, expected {want} (the path was not the one measured)")


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise RuntimeError(f"gave up after {self.seconds:g} s (--*-max-seconds)")


def handshake(tr: Tracker, runner: Runner, fs: FlowSet, idx: np.ndarray) -> None:
    """SYN, SYN/ACK, ACK through the datapath: ESTABLISHED ASSURED flows."""
    before = tr.counters()
    for kind in ("syn", "synack", "ack"):
        frames = fs.frames(kind, idx)
        for at in range(0, len(idx), 4096):
            runner.run(tr.fd, frames, 1, at, min(len(idx), at + 4096))
            tr.drain()
    d = delta(before, tr.counters())
    check("handshake: flows promoted to ct_assured", d["promote"], len(idx))


def udp_streams(tr: Tracker, runner: Runner, sets: list[FlowSet], n: int) -> None:
    """Request, reply, and 2 s later another datagram: ASSURED UDP streams."""
    idx = np.arange(n)
    before = tr.counters()
    for fs in sets:
        runner.run(tr.fd, fs.frames("udp", idx))
        runner.run(tr.fd, fs.frames("udp_reply", idx))
    tr.drain()
    time.sleep(2.2)
    for fs in sets:
        runner.run(tr.fd, fs.frames("udp", idx))
    tr.drain()
    d = delta(before, tr.counters())
    check("UDP streams promoted to ct_assured", d["promote"], n * len(sets))


def read_entry(fd: int, key: bytes) -> bytes:
    val = ctypes.create_string_buffer(ENTRY_SIZE)
    if not bpfsys.lookup(fd, ctypes.create_string_buffer(key, KEY_SIZE), val):
        raise RuntimeError("expected entry missing from the table")
    return val.raw


def client_offset(family: int) -> int:
    """Where a client -> server frame holds the client's (source) address."""
    return 14 + 12 if family == F4 else 14 + 8


# --------------------------------------------------------------------------
# the measurement


class Bench:
    """The datapath and the baselines, loaded and attached; the measuring
    primitives shared with bench/scale.py."""

    def __init__(self, entries: int, seconds: float, tag: str = "dp",
                 lru_entries: int | None = None) -> None:
        self.deadline = Deadline(seconds)
        self.runner = Runner()
        self.tr: Tracker | None = None
        self.base: Baseline | None = None
        self.hooks = Hooks()
        self.raw: dict[str, dict[str, list[float]]] = {}
        self.packets: dict[str, int] = {}
        self.templates: dict[str, bytes] = {}
        try:
            self.tr = Tracker(entries, tag)
            self.base = Baseline(entries, lru_entries)
            self.base.set_target("ctbpf", self.tr.fd)
            for fd in (self.tr.fd, *self.base.fd.values()):
                self.hooks.attach(fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.hooks.close()
        finally:
            try:
                if self.base is not None:
                    self.base.close()
                    self.base = None
            finally:
                if self.tr is not None:
                    self.tr.close()
                    self.tr = None

    def prog(self, name: str) -> int:
        return self.tr.fd if name == "ctbpf" else self.base.fd[name]

    def record(self, figure: str, variant: str, ns: float, packets: int = 0) -> None:
        self.raw.setdefault(figure, {}).setdefault(variant, []).append(ns)
        self.packets[figure] = self.packets.get(figure, 0) + packets

    # -- replayed frames: hits, ICMP errors, malformed --------------------

    def replay(self, figure: str, frames: np.ndarray, repeat: int, expect: str | None,
               base_hits: int | None) -> dict[str, float]:
        """Each of ctbpf, empty and bare lookup over the frames (each frame
        `repeat` times), in random order. Records ctbpf and lookup net of
        the empty program, and the gross figures."""
        n = len(frames)
        got = {}
        for name in random.sample(["ctbpf", "empty", "lookup", "acct"], 4):
            self.deadline.check()
            before = self.tr.counters() if name == "ctbpf" else None
            hits = self.base.counter(HIT_COUNTER[name]) if name in HIT_COUNTER else None
            got[name] = self.runner.run(self.prog(name), frames, repeat) / n
            if name == "ctbpf" and expect is not None:
                check(f"{figure}: ct_stats {expect}", delta(before, self.tr.counters())[expect],
                      n * repeat)
            if name in HIT_COUNTER and base_hits is not None:
                check(f"{figure}: {name} hits", self.base.counter(HIT_COUNTER[name]) - hits,
                      base_hits * repeat)
        self._record_net(figure, got, n * repeat)
        return got

    def _record_net(self, figure: str, got: dict[str, float], packets: int) -> None:
        for name, ns in got.items():
            if name != "empty":
                self.record(figure, name, ns - got["empty"], packets if name == "ctbpf" else 0)
            self.record(figure, f"{name}_gross", ns)

    # -- through the wrapper: a different flow on every iteration -----------

    def wrapped(self, target: str, fs: FlowSet, kind: str, iterations: int, start: int = 0,
                slice_: int = 1 << 16, stride: int = 1) -> float:
        """ns per iteration of wrap -> target over flows start, start +
        stride, ... of fs (modulo fs.n), in test runs of at most slice_
        iterations; the events ring buffer is drained between them."""
        frame = fs.frames(kind, np.zeros(1, dtype=np.int64))
        self.base.wrap(target, fs.family, client_offset(fs.family), fs.first, fs.n, start,
                       stride)
        total, done = 0.0, 0
        while done < iterations:
            self.deadline.check()
            r = min(slice_, iterations - done)
            total += self.runner.run(self.base.fd["wrap"], frame, r) * r
            done += r
            if target == "ctbpf":
                self.tr.drain()
        return total / iterations

    def cold_hits(self, figure: str, fs: FlowSet, iterations: int) -> None:
        """Established hits, every packet another flow of fs (all in the
        table, visited in a scattered order), through the wrapper; net of
        wrap -> empty."""
        start = random.randrange(fs.n)
        stride = SCATTER if math.gcd(SCATTER, fs.n) == 1 else 1
        got = {}
        for name in random.sample(["ctbpf", "empty", "lookup", "acct"], 4):
            before = self.tr.counters() if name == "ctbpf" else None
            hits = self.base.counter(HIT_COUNTER[name]) if name in HIT_COUNTER else None
            got[name] = self.wrapped(name, fs, "ack", iterations, start, stride=stride)
            if name == "ctbpf":
                d = delta(before, self.tr.counters())
                check(f"{figure}: ct_stats established", d["pkt_established"], iterations)
                check(f"{figure}: ct_stats inserts", d["insert"], 0)
            if name in HIT_COUNTER:
                check(f"{figure}: {name} hits", self.base.counter(HIT_COUNTER[name]) - hits,
                      iterations)
        self._record_net(figure, got, iterations)

    def new_flows(self, figure: str, fs: FlowSet, slice_: int = 4096,
                  variants: tuple[str, ...] = ("ctbpf", "ctbpf_listened", "empty",
                                               "insert")) -> dict:
        """fs.n SYNs of flows never seen, through wrap -> ctbpf (events on
        and nobody listening, the daemon's state without `ctbpf events`
        clients), the same with a listener (a NEW event per flow, the ring
        buffer drained between slices of slice_ packets), wrap -> bare
        insert and wrap -> empty. The new
        entries are deleted after each variant: the fill level stays put."""
        k = fs.n
        keys = fs.keys(np.arange(k))
        got, extra = {}, {}
        for name in random.sample(list(variants), len(variants)):
            target = "ctbpf" if name.startswith("ctbpf") else name
            if target == "ctbpf":
                self.tr.listen(name == "ctbpf_listened")
                self.tr.drain()
                self.tr.events = 0
                before = self.tr.counters()
            elif target == "insert":
                before_ins = self.base.counter(BENCH_INSERT)
            got[name] = self.wrapped(target, fs, "syn", k, 0, slice_)
            if target == "ctbpf":
                d = delta(before, self.tr.counters())
                check(f"{figure}: ct_stats insert", d["insert"], k)
                check(f"{figure}: ct_stats new", d["pkt_new"], k)
                check(f"{figure}: new entries deleted again",
                      delete_keys(self.tr.map_fd["ct_new"], keys), k)
                if name == "ctbpf_listened" or not extra:
                    extra = {"events": self.tr.events, "events_lost": d["event_lost"]}
                if "timer_lost" in d:
                    check(f"{figure}: expiry registrations lost", d["timer_lost"], 0)
            elif target == "insert":
                check(f"{figure}: bare inserts", self.base.counter(BENCH_INSERT) - before_ins, k)
                check(f"{figure}: bare inserts deleted again",
                      delete_keys(self.base.lru_fd, keys), k)
        self.tr.listen(False)
        self._record_net(figure, got, k)
        self.record(figure, "events_lost", extra["events_lost"])
        return {**got, **extra}


def run(args) -> dict:
    b = Bench(args.datapath_table_size, args.datapath_max_seconds)
    try:
        return _measure(args, b)
    finally:
        b.close()


FAMILIES = ((F4, "IPv4"), (F6, "IPv6"))


def check_keys() -> None:
    """The vectorized keys are the datapath's keys (as ctbpf.datapath.flowkey builds them)."""
    import ipaddress  # noqa: PLC0415

    from ctbpf.datapath.flowkey import key_from_tuple  # noqa: PLC0415

    for fam in (F4, F6):
        for proto in (TCP, UDP):
            fs = FlowSet(fam, proto, 12345, 10)
            k, src_is_hi = key_from_tuple(str(ipaddress.ip_address(fs.client_bytes(3))),
                                          str(ipaddress.ip_address(fs.server)), proto, SPORT,
                                          fs.dport)
            if bytes(k) != fs.keys(np.array([3])).tobytes() or not src_is_hi:
                raise RuntimeError("bench key layout differs from ctbpf.datapath.flowkey")


def _measure(args, b: Bench) -> dict:
    size = args.datapath_table_size
    runs = max(1, args.datapath_runs)
    tr, base, runner = b.tr, b.base, b.runner
    setup = {}
    check_keys()

    # ---- small tables: flows made by the datapath itself ----
    t0 = time.perf_counter()
    per = max(1, args.datapath_flows // 4)
    small = {(fam, proto): FlowSet(fam, proto, i * per, per)
             for i, (fam, proto) in enumerate([(F4, TCP), (F6, TCP), (F4, UDP), (F6, UDP)])}
    idx = np.arange(per)
    for fam, _ in FAMILIES:
        handshake(tr, runner, small[(fam, TCP)], idx)
    udp_streams(tr, runner, [small[(F4, UDP)], small[(F6, UDP)]], per)
    for fs in small.values():     # the bare lookup's table: the same flows
        keys = fs.keys(idx)
        values = np.stack([np.frombuffer(read_entry(tr.map_fd["ct_assured"], k.tobytes()),
                                         dtype=np.uint8) for k in keys])
        check("bare lookup table fill", update_batch(base.hash_fd, keys, values), per)
    b.templates["tcp_established"] = read_entry(tr.map_fd["ct_assured"],
                                                small[(F4, TCP)].keys(idx[:1]).tobytes())
    setup["small_tables_s"] = round(time.perf_counter() - t0, 2)

    repeat = max(1, math.ceil(args.datapath_packets / per))
    hit_runs = max(runs, math.ceil(args.datapath_total / (per * repeat)))
    small_figs = []
    for fam, fname in FAMILIES:
        small_figs += [
            (f"tcp_hit_small_{fname}", small[(fam, TCP)].frames("ack", idx), "pkt_established",
             per),
            (f"udp_hit_{fname}", small[(fam, UDP)].frames("udp", idx), "pkt_established", per),
            (f"icmp_related_{fname}", small[(fam, TCP)].frames("icmp_error", idx),
             "pkt_related", per),
            (f"malformed_{fname}", small[(fam, TCP)].frames("malformed", idx), "pkt_invalid",
             None),
        ]
    t0 = time.perf_counter()
    for _ in range(hit_runs):
        for fig, frames, expect, hits in random.sample(small_figs, len(small_figs)):
            b.replay(fig, frames, repeat, expect, hits)
    setup["small_runs_s"] = round(time.perf_counter() - t0, 2)

    # ---- 1M flows: datapath-made entries copied with BPF_MAP_UPDATE_BATCH ----
    t0 = time.perf_counter()
    big_n = max(1, args.datapath_big_flows - 4 * per) // 2
    first_big = 4 * per
    big = {fam: FlowSet(fam, TCP, first_big + i * big_n, big_n) for i, (fam, _) in
           enumerate(FAMILIES)}
    now = time.monotonic_ns()
    for fs in big.values():
        all_idx = np.arange(big_n)
        for at in range(0, big_n, 1 << 18):
            b.deadline.check()
            part = all_idx[at:at + (1 << 18)]
            keys = fs.keys(part)
            values = entries_like(b.templates["tcp_established"], len(part), now)
            check("1M fill (ct_assured)", update_batch(tr.map_fd["ct_assured"], keys, values),
                  len(part))
            check("1M fill (bare hash)", update_batch(base.hash_fd, keys, values), len(part))
    setup["big_fill_s"] = round(time.perf_counter() - t0, 2)
    setup["big_flows"] = 2 * big_n + 4 * per
    # The copied entries must be hits of the real path.
    for fs in big.values():
        sample = np.random.default_rng(1).choice(big_n, size=min(100, big_n), replace=False)
        before = tr.counters()
        runner.run(tr.fd, fs.frames("ack", sample))
        d = delta(before, tr.counters())
        check("1M-table sample: established", d["pkt_established"], len(sample))
        check("1M-table sample: inserts", d["insert"], 0)
        check("1M-table sample: promotions", d["promote"], 0)

    t0 = time.perf_counter()
    rng = np.random.default_rng()
    cold_n = args.datapath_cold_packets
    cold_runs = max(runs, math.ceil(args.datapath_total / max(1, cold_n)))
    warm_figs = [(f"tcp_hit_1M_{fname}", big[fam]) for fam, fname in FAMILIES]
    for r in range(max(hit_runs, cold_runs)):
        for fig, fs in random.sample(warm_figs, len(warm_figs)):
            if r < hit_runs:
                sel = rng.choice(big_n, size=per, replace=False)
                b.replay(fig, fs.frames("ack", sel), repeat, "pkt_established", per)
            if r < cold_runs:
                b.cold_hits(fig.replace("1M", "1M_cold"), fs, cold_n)
    setup["big_runs_s"] = round(time.perf_counter() - t0, 2)

    # ---- new flows: ct_new 25% and 90% full, ct_assured empty ----
    t0 = time.perf_counter()
    for fs in list(small.values()) + list(big.values()):
        delete_keys(tr.map_fd["ct_assured"], fs.keys(np.arange(fs.n)))
        delete_keys(base.hash_fd, fs.keys(np.arange(fs.n)))
    # a SYN_SENT entry made by the datapath: the template of the fill
    probe = FlowSet(F4, TCP, 0, 1)
    runner.run(tr.fd, probe.frames("syn", np.arange(1)))
    tr.drain()
    b.templates["tcp_syn_sent"] = read_entry(tr.map_fd["ct_new"],
                                             probe.keys(np.arange(1)).tobytes())
    delete_keys(tr.map_fd["ct_new"], probe.keys(np.arange(1)))
    setup["clear_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    k = max(1, min(args.datapath_new_flows, size // 20))
    new_runs = max(runs, math.ceil(args.datapath_total / k))
    next_first = first_big + 2 * big_n
    fill_total, fill_first = 0, 200 << 16
    for fill in (0.25, 0.90):
        want = int(size * fill)
        add = want - fill_total
        fill_set = FlowSet(F6, TCP, fill_first + fill_total, add)
        keys = fill_set.keys(np.arange(add))
        # SYN_SENT entries expiring in 5 days: they stay for the whole run
        values = entries_like(b.templates["tcp_syn_sent"], add, time.monotonic_ns())
        check(f"ct_new fill to {fill:.0%}", update_batch(tr.map_fd["ct_new"], keys, values), add)
        check(f"bare LRU fill to {fill:.0%}", update_batch(base.lru_fd, keys, values), add)
        fill_total = want
        figs = [(f"new_flow_{int(fill * 100)}pct_{fname}", fam) for fam, fname in FAMILIES]
        for _ in range(new_runs):
            for fig, fam in random.sample(figs, len(figs)):
                if next_first + k > 200 << 16:
                    raise RuntimeError("out of fresh flow numbers: lower --datapath-total")
                b.new_flows(fig, FlowSet(fam, TCP, next_first, k))
                next_first += k
    setup["new_runs_s"] = round(time.perf_counter() - t0, 2)

    return _results(args, b, setup, per, repeat, hit_runs, cold_n, cold_runs, k, new_runs)


def figures_of(b: Bench) -> dict:
    figures = {}
    for fig, variants in b.raw.items():
        figures[fig] = {v: common.spread(vals, digits=2) for v, vals in variants.items()
                        if v != "events_lost"}
        figures[fig]["packets"] = b.packets[fig]
        if "events_lost" in variants:
            figures[fig]["events_lost_max"] = max(variants["events_lost"])
    return figures


def _results(args, b: Bench, setup: dict, per: int, repeat: int, hit_runs: int,
             cold_n: int, cold_runs: int, k: int, new_runs: int) -> dict:
    F = figures_of(b)
    targets = []
    for _, fname in FAMILIES:
        f = F[f"tcp_hit_small_{fname}"]
        ratio = round(f["ctbpf"]["median"] / f["lookup"]["median"], 3)
        targets.append(common.target_row(
            f"established TCP hit, {4 * per} flows, {fname}", "ns/packet",
            f["ctbpf"], f"<= {TARGET_HIT_WARM_RATIO:g} x bare lookup",
            ratio <= TARGET_HIT_WARM_RATIO, baseline=f["lookup"],
            baseline_name="bare lookup", ratio=ratio,
            note=f"net of the empty program ({f['empty_gross']['median']:g} ns); acct off"))
    for _, fname in FAMILIES:
        for label, fig, note in (
                ("warm", f"tcp_hit_1M_{fname}", f"{per} random flows, each replayed x{repeat}"),
                ("cold", f"tcp_hit_1M_cold_{fname}",
                 f"{cold_n:,} scattered flows per run, one packet each")):
            f = F[fig]
            ratio = round(f["ctbpf"]["median"] / f["lookup"]["median"], 3)
            goal = TARGET_HIT_WARM_RATIO if label == "warm" else TARGET_HIT_COLD_RATIO
            targets.append(common.target_row(
                f"established TCP hit, {setup['big_flows']:,} flows ({label}), {fname}",
                "ns/packet", f["ctbpf"], f"<= {goal:g} x bare lookup",
                ratio <= goal, baseline=f["lookup"], baseline_name="bare lookup",
                ratio=ratio, note=f"net of the empty program; {note}"))
    for _, fname in FAMILIES:
        f = F[f"new_flow_25pct_{fname}"]
        ratio = round(f["ctbpf"]["median"] / f["insert"]["median"], 3)
        targets.append(common.target_row(
            f"new flow, ct_new 25% full, {fname}", "ns/packet", f["ctbpf"],
            f"<= {TARGET_NEW_QUARTER_RATIO:g} x bare insert", ratio <= TARGET_NEW_QUARTER_RATIO,
            baseline=f["insert"], baseline_name="bare LRU insert", ratio=ratio,
            note=f"net of the empty program; events on, nobody listening (a listener: "
                 f"{f['ctbpf_listened']['median']:g} ns)"))
    for _, fname in FAMILIES:
        f = F[f"new_flow_90pct_{fname}"]
        ratio = round(f["ctbpf"]["median"] / f["insert"]["median"], 3)
        targets.append(common.target_row(
            f"new flow, ct_new 90% full, {fname}", "ns/packet", f["ctbpf"],
            f"<= {TARGET_NEW_FULL_RATIO:g} x bare insert", ratio <= TARGET_NEW_FULL_RATIO,
            baseline=f["insert"], baseline_name="bare LRU insert", ratio=ratio,
            note=f"net of the empty program; events on, nobody listening (a listener: "
                 f"{f['ctbpf_listened']['median']:g} ns)"))
    for _, fname in FAMILIES:
        f = F[f"malformed_{fname}"]
        targets.append(common.target_row(
            f"malformed packet, {fname}", "ns/packet", f["ctbpf"],
            f"<= {TARGET_MALFORMED_NS:g}", f["ctbpf"]["median"] <= TARGET_MALFORMED_NS,
            baseline=f["lookup"], baseline_name="bare lookup",
            note=f"net of the empty program ({f['empty_gross']['median']:g} ns)"))

    labels = {"ctbpf": "ctbpf", "lookup": "bare lookup", "acct": "bare lookup + accounting",
              "insert": "bare LRU insert",
              "ctbpf_listened": "ctbpf, an events listener"}
    groups = {}
    for fig in sorted(F, key=_fig_order):
        groups[fig.replace("_", " ")] = {labels[v]: F[fig][v] for v in labels if v in F[fig]}
    hits = {g: s for g, s in groups.items() if not g.startswith("new flow")}
    news = {g: s for g, s in groups.items() if g.startswith("new flow")}
    plots = [common.plot_bars("datapath-paths",
                              "ctbpf_xdp per packet, net of an empty XDP program",
                              "ns per packet", hits),
             common.plot_bars("datapath-newflow",
                              "new flow per packet, net of an empty XDP program",
                              "ns per packet", news)]
    return {"config": {"table_size": args.datapath_table_size, "small_flows": 4 * per,
                       "big_flows": setup["big_flows"], "frames_per_replay": per,
                       "repeat": repeat, "replay_runs": hit_runs, "cold_packets": cold_n,
                       "cold_runs": cold_runs, "new_flows_per_run": k, "new_runs": new_runs,
                       "repeat_bias_ns": REPEAT_BIAS_NS},
            "setup": setup, "figures": F, "targets": targets, "plots": plots,
            "notes": NOTES}


def _fig_order(fig: str) -> tuple:
    order = ("tcp_hit_small", "tcp_hit_1M_cold", "tcp_hit_1M", "udp_hit", "icmp_related",
             "malformed", "new_flow_25", "new_flow_90")
    for i, p in enumerate(order):
        if fig.startswith(p):
            return (i, fig)
    return (len(order), fig)


def summary(result: dict) -> str:
    c = result["config"]
    lines = [f"tables of {c['table_size']:,} entries; replayed: {c['frames_per_replay']} flows "
             f"x{c['repeat']} x{c['replay_runs']} runs; cold: {c['cold_packets']:,} packets "
             f"x{c['cold_runs']} runs; new flows: {c['new_flows_per_run']:,} x{c['new_runs']} "
             f"runs", "",
             "| path | ctbpf | bare lookup | lookup + accounting | bare insert | ctbpf, a listener "
             "| empty (gross) | ctbpf (gross) | packets |",
             "|---|---|---|---|---|---|---|---|---|"]
    fv = common.format_value
    for fig in sorted(result["figures"], key=_fig_order):
        f = result["figures"][fig]
        lines.append(f"| {fig} | {fv(f.get('ctbpf'))} | {fv(f.get('lookup'))} | "
                     f"{fv(f.get('acct'))} | {fv(f.get('insert'))} | {fv(f.get('ctbpf_listened'))} | "
                     f"{fv(f.get('empty_gross'))} | {fv(f.get('ctbpf_gross'))} | "
                     f"{f['packets']:,} |")
    lines += ["", "(ns per packet, median [min, max], net of the empty program run the same way "
              "unless marked gross)", "", common.table(result["targets"])]
    return "\n".join(lines)
