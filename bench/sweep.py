"""The sweeper over a big table: 1,000,000 entries, 10% of them expired.

The 900,000 live entries are written into the tables (half ASSURED) and
filed in the sweeper's expiry index by a seeding walk, as when `ctbpf run`
adopts a full table. Before every timed run, the 100,000 entries that will
expire are created *by the datapath* (UDP frames through BPF_PROG_TEST_RUN
with udp_timeout=1), so their expiry registrations come from the real
ct_timers ring; the run starts once they are all due. Three ways to reclaim
them, interleaved run by run so drift hits all alike:

  index     ctbpf's pass: the due keys from the expiry index go to the
            in-kernel sweep program (CT_SWEEP_DUE: re-check, delete,
            DESTROY event, CT_STAT_SWEPT), 64 keys per BPF_PROG_TEST_RUN.
            Reading the ring into the index (intake) is timed apart.
  walk      ctbpf's whole-table walk (the seeding and safety pass): batch
            reads of both tables into raw buffers, expired keys found in
            the buffers, handed to the same program (CT_SWEEP_EXPIRED).
  baseline  the plain way with the same primitives: bpfsys.lookup_batch of
            each whole table, the same scan, BPF_MAP_DELETE_BATCH. No
            re-check at delete time (it can delete a flow that just saw
            traffic) and no DESTROY events.

DESTROY events are drained between slices, as the daemon's event relay does,
outside the timed part. CPU is process CPU (getrusage: user + system, so the
kernel's share of bpf(2) is counted). No interface is attached.
"""

from __future__ import annotations

import ctypes
import os
import resource
import secrets
import socket
import struct
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

from ctbpf import abi, tunables
from ctbpf.agent.sweepcore import ENTRY_SIZE, EXPIRES_OFFSET, KEY_SIZE, expired_keys
from ctbpf.agent.sweeper import (DEFAULT_SLICE_ENTRIES, DEFAULT_SLICE_KEYS, DEFAULT_WALK_INTERVAL,
                                 Sweeper, TABLES)
from ctbpf.datapath import bpfsys, configmap, stats
from ctbpf.datapath.loader import Datapath, remove_pins

from .common import plot_bars, spread, target_row

HELP = "sweeper over 1M entries, 10% expired: expiry-index pass vs table walk vs batch read+delete"

BPFFS = Path("/sys/fs/bpf")
NS = 1_000_000_000
LIVE_FOR_NS = 3600 * NS       # live entries stay live for the whole benchmark
SWEPT = abi.const("CT_STAT_SWEPT")
EVENT_LOST = abi.const("CT_STAT_EVENT_LOST")
TIMER_LOST = abi.const("CT_STAT_TIMER_LOST")
DESTROY = abi.const("CT_EVENT_DESTROY")
F_ASSURED = abi.const("CT_F_ASSURED")
F_SEEN_REPLY = abi.const("CT_F_SEEN_REPLY")

# Targets of issue 4 ("Sweeping").
TARGET_KERNEL_MS = 100.0       # a sweep in the kernel, per million entries
TARGET_SLICE_MS = 10.0         # ... cut in slices of at most this
TARGET_BATCH_S = 0.5           # batch map operations, per million entries
TARGET_CPU_PCT = 2.0           # control-plane CPU at 1M entries, 10 s interval

NOTES = """\
### How the sweeper works

The datapath writes one record (key, expiry) into the `ct_timers` ring
buffer when it creates an entry and whenever an entry's expiry moves
*earlier* (a TCP state with a shorter timeout). Traffic that only pushes an
expiry later writes nothing. The sweeper reads the ring through `mmap`
about once a second (no syscall per record) and files each key under the
second it comes due (`ctbpf/agent/expiry.py`: one `bytearray` of raw keys per
second). A pass takes the keys now due and hands them, 64 per
`BPF_PROG_TEST_RUN`, to the sweep program (`bpf/sweep.h`, `CT_SWEEP_DUE`):
it deletes an entry only if it is still expired (DESTROY event,
`CT_STAT_SWEPT`), and otherwise returns the entry's current expiry, under
which the sweeper files it again. So every live entry always has a record
due no later than itself, and a pass costs what is due, not what is in the
tables. A slice handles at most 2048 keys (1-3 ms here).

Whole tables are walked (batch reads into reused raw buffers, expired keys
found by viewing the values buffer as u64 words, then the same in-kernel
re-check and delete) only to build the index: when the sweeper starts or the
datapath is replaced (resize, restart), when the datapath counted a record
the ring had no room for (`ctbpf_expiry_index_lost_total`), and every
`--sweep-walk-interval` (600 s) as a safety net, which reports in
`ctbpf_sweeper_index_missed_total` any overdue entry the index missed.

### Why not a whole-table walk in the kernel

Any pass that visits every entry is bound by memory latency on this VM: a
bare `bpf_for_each_map_elem` walk over a 1M-entry hash map (loaded with
libbpf from a clang-built object, outside this repository, since BCC 0.26
does not relocate callback references) took 100–140 ms per million entries
with an empty callback, and 170–190 ms with the expiry check and deletes; a
`bpf_iter` walk took 250 ns per entry. The batch-read walk measured here
costs 0.4–0.7 s per million. The expiry index avoids visiting live entries
at all.

### On a busy machine

The index pass is CPU-bound and small (about 0.5-0.7 us per due entry, 90%
of it in the kernel: two hash lookups, the DESTROY event, the delete). On a
quiet machine it takes 50-80 ms for the 100,000 due entries of a million;
when other work shares the two CPUs its wall time stretches (the CPU time
does not), and the longest 2048-key slice can pass 10 ms. Both targets are
about wall time: the CPU columns in the result file say whether a miss came
from the machine. The pass is measured with a `ctbpf events` client
listening, so that each swept entry writes its DESTROY event (checked);
with nobody listening, the daemon's usual state, no event is written
(`events=0` measured about 20% less). What would make the pass cheaper
still: sweeping the expiring keys of one table at a time (no lookup in the
wrong table).

### What the figures do not cover

- The index costs memory in the agent: 40 bytes per filed key (a flow
  with several records, for example one that shortened its timeout twice,
  is filed more than once until those records come due), plus the 16 MiB
  ring in the kernel.
- A flood of new flows fills the ring faster than the agent reads it
  (about 300,000 records): the lost records are counted and the next pass
  is a seeding walk, whose cost is the `walk` figure.
"""


def add_arguments(g) -> None:
    g.add_argument("--sweep-entries", type=int, default=1_000_000, metavar="N",
                   help="entries in the tables (default 1000000)")
    g.add_argument("--sweep-expired", type=float, default=0.10, metavar="FRACTION",
                   help="fraction of them expired at each run (default 0.10)")
    g.add_argument("--sweep-assured", type=float, default=0.5, metavar="FRACTION",
                   help="fraction of the live ones in ct_assured, the rest in ct_new "
                        "(default 0.5); the expiring ones are unreplied UDP, in ct_new")
    g.add_argument("--sweep-runs", type=int, default=5, metavar="N",
                   help="timed runs of each variant; the median is reported (default 5)")
    g.add_argument("--sweep-table-size", type=int, default=1 << 21, metavar="N",
                   help="max_entries of each table (default 2097152)")
    g.add_argument("--sweep-interval", type=float, default=10.0, metavar="SECONDS",
                   help="sweep interval for the CPU share figure (default 10)")


# --------------------------------------------------------------------------
# filling the tables


def update_batch(fd: int, keys: bytearray, values: bytearray, count: int) -> int:
    """BPF_MAP_UPDATE_BATCH of count raw records; returns how many were written."""
    kbuf = (ctypes.c_char * len(keys)).from_buffer(keys)
    vbuf = (ctypes.c_char * len(values)).from_buffer(values)
    return bpfsys.update_batch(fd, ctypes.addressof(kbuf), ctypes.addressof(vbuf), count)


def make_records(n: int, first: int, expired: list[int], now_ns: int,
                 flags: int) -> tuple[bytearray, bytearray]:
    """n distinct UDP/IPv4 keys (addr_lo word = first + i) and their entries;
    the entries at `expired` positions have expired, the others live on."""
    if KEY_SIZE % 4 or ENTRY_SIZE % 4 or EXPIRES_OFFSET % 4:
        raise RuntimeError("unexpected ct_key/ct_entry layout for the benchmark's fill")
    keys = bytearray(KEY_SIZE * n)
    words = memoryview(keys).cast("I")
    words[abi.CtKey.addr_lo.offset // 4::KEY_SIZE // 4] = array("I", range(first, first + n))
    words[abi.CtKey.addr_hi.offset // 4::KEY_SIZE // 4] = array("I", [0x0100000A]) * n
    raw = memoryview(keys)
    raw[abi.CtKey.proto.offset::KEY_SIZE] = bytes([17]) * n
    raw[abi.CtKey.family.offset::KEY_SIZE] = bytes([abi.const("CT_FAMILY_IPV4")]) * n

    values = bytearray(ENTRY_SIZE * n)
    q = memoryview(values).cast("I")
    expiries = array("I", [abi.ticks(now_ns + LIVE_FOR_NS)]) * n
    for i in expired:
        expiries[i] = abi.ticks(now_ns - NS)
    q[EXPIRES_OFFSET // 4::ENTRY_SIZE // 4] = expiries
    q[abi.CtEntry.created.offset // 4::ENTRY_SIZE // 4] = array("I", [abi.ticks(now_ns - NS)]) * n
    memoryview(values)[abi.CtEntry.flags.offset::ENTRY_SIZE] = bytes([flags]) * n
    return keys, values


_ETH = bytes.fromhex("02000000000b02000000000a0800")
_DST = socket.inet_aton("10.2.2.2")


def udp_frames(n: int, salt: int) -> list[bytes]:
    """n 64-byte UDP/IPv4 frames of n distinct flows (11.x.y.z:port -> 10.2.2.2:53)."""
    out = []
    for i in range(n):
        src = (11 << 24) | ((salt & 0xFF) << 16) | (i >> 14)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 50, 0, 0, 64, 17, 0,
                         src.to_bytes(4, "big"), _DST)
        out.append(_ETH + ip + struct.pack("!HHHH", 1024 + (i & 0x3FFF), 53, 30, 0) + bytes(22))
    return out


# --------------------------------------------------------------------------
# measuring


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.pin_dir = BPFFS / f"ctbpf-bench-{secrets.token_hex(4)}"
        self.dp: Datapath | None = None
        self.sw: Sweeper | None = None
        self.events = 0
        self.live = 0
        self.expired = 0
        self.salt = 0

    def _on_event(self, ev) -> None:
        if ev.type == DESTROY:
            self.events += 1

    def setup(self) -> dict:
        a = self.args
        t0 = time.perf_counter()
        # each table sweep_table_size entries, as before max became both
        # tables' total: ct_assured at its full size, not grown on the way
        size = a.sweep_table_size
        self.dp = Datapath(self.pin_dir, max_entries=2 * size, new_max=size, assured=size).load()
        self.dp.open_events(self._on_event)
        # a `ctbpf events` client listens: DESTROY events are written (and
        # counted, a check of the path), the costlier case
        self.dp.set_event_listeners(1)
        load_s = time.perf_counter() - t0
        self.expired = round(a.sweep_entries * a.sweep_expired)
        self.live = a.sweep_entries - self.expired
        n_assured = round(self.live * a.sweep_assured)
        now = time.monotonic_ns()
        t0 = time.perf_counter()
        first = 1
        for name, n, flags in (("ct_new", self.live - n_assured, 0),
                               ("ct_assured", n_assured, F_ASSURED | F_SEEN_REPLY)):
            if not n:
                continue
            keys, values = make_records(n, first, [], now, flags)
            first += n
            fd = bpfsys.obj_get(str(self.pin_dir / name))
            try:
                if update_batch(fd, keys, values, n) != n:
                    raise RuntimeError(f"{name}: the batch update stopped short of {n} entries")
            finally:
                os.close(fd)
        fill_s = time.perf_counter() - t0
        self.sw = Sweeper(a.sweep_interval, a.sweep_interval)
        self.sw.start(SimpleNamespace(pin_dir=self.pin_dir, datapath=self.dp))
        c0, t0 = _cpu(), time.perf_counter()
        seed = self.sw.sweep_now()
        seed_s, seed_cpu = time.perf_counter() - t0, _cpu() - c0
        if seed["last_kind"] != "seed" or seed["index_keys"] != self.live:
            raise RuntimeError(f"seeding walk: {seed['last_kind']}, {seed['index_keys']} keys "
                               f"filed, not {self.live}")
        return {"load_s": round(load_s, 3), "fill_s": round(fill_s, 3),
                "seed_wall_s": round(seed_s, 3), "seed_cpu_s": round(seed_cpu, 3)}

    def set_udp_timeout(self, seconds: int) -> None:
        configmap.write_values(self.pin_dir, {"udp_timeout": seconds})

    def make_expiring(self) -> dict:
        """Create self.expired flows through the datapath with udp_timeout=1,
        read their registrations into the index (timed), wait until due."""
        self.salt += 1
        frames = udp_frames(self.expired, self.salt)
        prog = self.dp.prog_fd()
        self.set_udp_timeout(1)
        try:
            for f in frames:
                bpfsys.prog_test_run(prog, f)
        finally:
            self.set_udp_timeout(tunables.BY_NAME["udp_timeout"].default)
        created = time.monotonic()
        c0 = _cpu()
        filed = self.sw.intake()
        intake_cpu = _cpu() - c0
        if filed != self.expired:
            raise RuntimeError(f"intake filed {filed} registrations, not {self.expired} "
                               f"(lost: {stats.read_counters(self.pin_dir)[TIMER_LOST]})")
        # udp_timeout=1: every expiry is within 1 s of its creation, and its
        # slot within the next whole second.
        time.sleep(max(0.0, created + 2.05 - time.monotonic()))
        self.dp.poll_events(0)
        self.events = 0
        return {"intake_cpu": intake_cpu}

    def sweeper_pass(self, kind: str) -> dict:
        """One whole pass of the real Sweeper; timing covers its slices only."""
        sw = self.sw
        before = stats.read_counters(self.pin_dir)
        k0 = self.dp._due_runner.duration_ns if self.dp._due_runner else 0
        wall = cpu = 0.0
        slices = []
        first = True
        while True:
            c0, t0 = _cpu(), time.perf_counter()
            finished = sw.step(kind if first else None)
            elapsed = time.perf_counter() - t0
            first = False
            cpu += _cpu() - c0
            wall += elapsed
            slices.append(elapsed)
            self.dp.poll_events(0)    # the event relay's turn, as in the daemon's loop
            if finished:
                break
        after = stats.read_counters(self.pin_dir)
        s = sw.stats
        if s.last_kind != kind:
            raise RuntimeError(f"asked for a {kind} pass, the sweeper made a {s.last_kind} one")
        kernel = (self.dp._due_runner.duration_ns - k0) / 1e9 if self.dp._due_runner else 0.0
        return {"wall": wall, "cpu": cpu, "max_slice": max(slices), "slices": len(slices),
                "scanned": s.last_scanned, "deleted": s.last_deleted,
                "kernel": kernel if kind == "index" else None,
                "swept_counter": after[SWEPT] - before[SWEPT],
                "events_lost": after[EVENT_LOST] - before[EVENT_LOST],
                "destroy_events": self.events}

    def forget_due(self) -> None:
        """After a walk or the baseline deleted them, the swept flows' records
        are still in the index: drop them, untimed, as an index pass would."""
        self.sw.index.pop_due(time.monotonic_ns())

    def baseline_pass(self) -> dict:
        """Whole-table batch reads, the same scan, BPF_MAP_DELETE_BATCH."""
        scanned = deleted = 0
        c0, t0 = _cpu(), time.perf_counter()
        for name, _ in TABLES:
            fd = bpfsys.obj_get(str(self.pin_dir / name))
            try:
                keys, values, count = bpfsys.lookup_batch(fd, KEY_SIZE, ENTRY_SIZE,
                                                          self.args.sweep_table_size)
                expired = expired_keys(keys, values, count, time.monotonic_ns())
                deleted += bpfsys.delete_batch(fd, expired, KEY_SIZE)
            finally:
                os.close(fd)
            scanned += count
        wall = time.perf_counter() - t0
        return {"wall": wall, "cpu": _cpu() - c0, "max_slice": wall, "slices": 1,
                "scanned": scanned, "deleted": deleted}

    def close(self) -> None:
        if self.sw is not None:
            self.sw.stop()
        if self.dp is not None:
            self.dp.close()
        remove_pins(self.pin_dir)


def _check(variant: str, r: dict, scanned: int, expired: int) -> None:
    if r["scanned"] != scanned or r["deleted"] != expired:
        raise RuntimeError(f"{variant}: looked at {r['scanned']} (want {scanned}), deleted "
                           f"{r['deleted']} (want {expired})")
    if variant != "baseline":
        if r["swept_counter"] != expired:
            raise RuntimeError(f"{variant}: CT_STAT_SWEPT moved by {r['swept_counter']}, "
                               f"not {expired}")
        if r["destroy_events"] != expired:
            raise RuntimeError(f"{variant}: {r['destroy_events']} DESTROY events for "
                               f"{expired} swept entries ({r['events_lost']} lost)")


def run(args) -> dict:
    b = _Bench(args)
    try:
        return _measure(args, b, b.setup())
    finally:
        b.close()


def _measure(args, b: _Bench, setup: dict) -> dict:
    n, expired = args.sweep_entries, b.expired
    runs: dict[str, list[dict]] = {"index": [], "walk": [], "baseline": []}
    intakes = []
    for _ in range(args.sweep_runs):
        for variant in runs:
            made = b.make_expiring()
            if variant == "index":
                intakes.append(made["intake_cpu"])
                r = b.sweeper_pass("index")
                _check(variant, r, expired, expired)
            else:
                r = b.sweeper_pass("walk") if variant == "walk" else b.baseline_pass()
                _check(variant, r, n, expired)
                b.forget_due()
            runs[variant].append(r)

    per_million = 1e6 / n
    figures = {}
    for variant, rs in runs.items():
        figures[variant] = {
            "wall_ms_per_million": spread([r["wall"] * per_million for r in rs], 1e3, 1),
            "cpu_ms": spread([r["cpu"] for r in rs], 1e3, 1),
            "max_slice_ms": spread([r["max_slice"] for r in rs], 1e3, 2),
            "slices": rs[0]["slices"],
        }
    idx = runs["index"]
    figures["index"]["kernel_ms"] = spread([r["kernel"] for r in idx], 1e3, 1)
    figures["index"]["intake_cpu_ms"] = spread(intakes, 1e3, 1)
    walk_cpu = sorted(r["cpu"] for r in runs["walk"])[len(runs["walk"]) // 2]
    # What the daemon spends per interval at this size: the intake of the
    # interval's registrations, one index pass, and its share of the safety
    # walk (one per DEFAULT_WALK_INTERVAL).
    shares = [100 * ((r["cpu"] + i) / args.sweep_interval + walk_cpu / DEFAULT_WALK_INTERVAL)
              for r, i in zip(idx, intakes)]
    figures["cpu_pct_at_interval"] = spread(shares, 1, 2)
    figures["baseline_cpu_pct_at_interval"] = spread(
        [100 * r["cpu"] / args.sweep_interval for r in runs["baseline"]], 1, 2)
    figures["seed"] = {"wall_s": setup["seed_wall_s"], "cpu_s": setup["seed_cpu_s"],
                       "entries": b.live}

    f = figures
    base_ms = f["baseline"]["wall_ms_per_million"]
    targets = [
        target_row("sweep in the kernel of 1M entries, 10% expired (index pass)",
                   "ms per million entries", f["index"]["wall_ms_per_million"],
                   f"≤ {TARGET_KERNEL_MS:g}",
                   f["index"]["wall_ms_per_million"]["median"] <= TARGET_KERNEL_MS,
                   baseline=base_ms, baseline_name="batch read + batch delete"),
        target_row("longest slice of that sweep", "ms", f["index"]["max_slice_ms"],
                   f"≤ {TARGET_SLICE_MS:g}",
                   f["index"]["max_slice_ms"]["median"] <= TARGET_SLICE_MS,
                   baseline=f["baseline"]["max_slice_ms"], baseline_name="one piece"),
        target_row("whole-table walk (seeding and safety pass), batch map operations",
                   "ms per million entries", f["walk"]["wall_ms_per_million"],
                   f"≤ {TARGET_BATCH_S * 1e3:g} (the fallback)",
                   f["walk"]["wall_ms_per_million"]["median"] <= TARGET_BATCH_S * 1e3,
                   baseline=base_ms, baseline_name="batch read + batch delete",
                   note="the target for a sweep where no in-kernel sweep is possible; "
                        "here the index pass is the sweep, and a walk runs only at start, "
                        "after a resize or a lost registration, and every 600 s"),
        target_row(f"control-plane CPU at 1M entries, {args.sweep_interval:g} s interval "
                   f"(intake + index pass + safety walk every {DEFAULT_WALK_INTERVAL:g} s)",
                   "% of one core", f["cpu_pct_at_interval"], f"≤ {TARGET_CPU_PCT:g}",
                   f["cpu_pct_at_interval"]["median"] <= TARGET_CPU_PCT,
                   baseline=f["baseline_cpu_pct_at_interval"],
                   baseline_name="batch read + delete every interval"),
    ]
    plots = [plot_bars("sweep-pass", f"Reclaiming {expired:,} expired of {n:,} entries",
                       "ms per pass (median, min-max)",
                       {"index pass": {"ctbpf": f["index"]["wall_ms_per_million"]},
                        "table walk": {"ctbpf": f["walk"]["wall_ms_per_million"]},
                        "batch read + delete": {"baseline": base_ms}})]
    return {"config": {"entries": n, "expired": expired, "live": b.live,
                       "assured_fraction_of_live": args.sweep_assured,
                       "table_size": args.sweep_table_size, "slice_keys": DEFAULT_SLICE_KEYS,
                       "slice_entries": DEFAULT_SLICE_ENTRIES, "runs": args.sweep_runs,
                       "interval_s": args.sweep_interval,
                       "walk_interval_s": DEFAULT_WALK_INTERVAL},
            "setup": setup, "figures": figures, "targets": targets, "plots": plots}


def summary(result: dict) -> str:
    from .common import table  # noqa: PLC0415

    c, f = result["config"], result["figures"]
    lines = [f"{c['entries']} entries, {c['expired']} expired per run, {c['runs']} runs "
             f"(median [min, max])"]
    for variant in ("index", "walk", "baseline"):
        v = f[variant]
        w, cpu, sl = v["wall_ms_per_million"], v["cpu_ms"], v["max_slice_ms"]
        lines.append(f"  {variant:<9} {w['median']:8.1f} ms [{w['min']:.1f}, {w['max']:.1f}]"
                     f"  cpu {cpu['median']:.1f} ms  longest slice {sl['median']:.2f} ms"
                     f"  ({v['slices']} slices)")
    lines.append(f"  index pass: kernel {f['index']['kernel_ms']['median']:.1f} ms, intake "
                 f"{f['index']['intake_cpu_ms']['median']:.1f} ms cpu; seeding walk of "
                 f"{f['seed']['entries']} entries {f['seed']['wall_s']:.3f} s")
    lines.append("")
    lines.append(table(result["targets"]))
    return "\n".join(lines)
