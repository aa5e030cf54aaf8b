"""The datapath as its tables grow: 1k, 100k, 1M, 4M flows (issue 6).

For each size the datapath is loaded afresh with max entries a quarter
above the size (so new flows find room), both tables are filled to the size
(ct_assured with ESTABLISHED ASSURED TCP flows, ct_new with SYN_SENT ones,
copies of entries the datapath made itself, written with
BPF_MAP_UPDATE_BATCH), and three things are timed through
BPF_PROG_TEST_RUN, with bench/datapath.py's machinery:

  hit (warm)   an established flow's ACK, 250 random flows replayed
  hit (cold)   an established flow's ACK, every packet another flow
  insert       a SYN of a flow never seen: entries/s one core inserts
"""

from __future__ import annotations

import math
import random
import time

import numpy as np

from . import common
from .datapath import (F4, FAMILIES, TCP, Bench, FlowSet, check, check_keys, delete_keys,
                       delta, entries_like, handshake, read_entry, update_batch)

HELP = "insert rate and established-hit cost with tables of 1k, 100k, 1M and 4M flows"

NOTES = """\
**What is measured.** `bench/scale.py` loads the real datapath once per table
size (1k, 100k, 1M, 4M flows; `max` set through `ctbpf.datapath.loader.Datapath` to a
quarter above the size, at least 8,192 above, so inserts find room) and
fills both tables to that size: `ct_assured` with ESTABLISHED ASSURED TCP
flows and `ct_new` with SYN_SENT ones, copies of entries made by the
datapath's own handshake, written with `BPF_MAP_UPDATE_BATCH` (a sample is
sent through the datapath first and must count as ESTABLISHED). The bare
lookup of `bench/bpf/baseline.c` gets a hash of the same size with the same
flows. Then, with `bench/datapath.py`'s method (kernel-reported durations of
`BPF_PROG_TEST_RUN`, programs attached in a private namespace, figures net of
an empty XDP program measured the same way, 0.5 ns truncation bias added
back, at least 5 interleaved runs, median with min and max):

- *hit, warm*: ACKs of 250 random established flows, each replayed;
- *hit, cold*: ACKs of 200,000 flows per run, one packet each (the wrapper
  program rewrites the address on every iteration), taken with a large prime
  stride through all the table's flows, so at 1M and 4M flows nearly every
  lookup misses the CPU caches;
- *insert*: SYNs of flows never seen (events on, ring buffer drained between
  slices), deleted again after each run so the size stays put. The rate is
  1e9 / (net ns per insert): what one core could insert if it did nothing
  else. The wall-clock rate of the whole test-run loop (system calls, event
  draining in Python) is kept in the results as `insert_wall_rate`.

Only IPv4 is measured here: the key is the same 40 bytes for IPv6 and the
table cost does not depend on the family (bench/datapath.py shows both).

**What it shows.** The warm hit stays flat as the tables grow (about
95-160 ns net, code-bound: the same flows stay in cache whatever the table
size). The cold hit follows the bare lookup up as the tables outgrow the
caches (from tens of ns at 1k flows to roughly 400-750 ns at 1M-4M on this
VM), and the ratio between them falls from about 2.5-3x at 1k to 1.1-1.35x
at 100k and beyond: cache and TLB misses swamp the ~70-110 ns of fixed work
(see bench/datapath.py's notes for where it goes). The one-core insert rate
falls from about 1.4-1.7 million/s at 1k flows to about 0.6-0.9 million/s
at 4M (figures from the full runs made while writing this, on a busy
shared 2-CPU VM):
each new flow misses in both tables (cold buckets) before its LRU insert
touches a cold element. The ratio targets below are issue 15's (1.5x the
bare lookup warm, 1.1x cold), set there at 1k and 1M flows and applied at
every size here for comparison; where they are missed, the reasons are
those given in bench/datapath.py's notes.
"""

SIZES = (1_000, 100_000, 1_000_000, 4_000_000)
# issue 15's targets (warm: 1k and 1M flows; cold: 1M), applied at every size here
TARGET_HIT_RATIO = {"warm": 1.5, "cold": 1.1}


def add_arguments(g) -> None:
    g.add_argument("--scale-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   default=list(SIZES), metavar="N,N,...",
                   help="flows in each table (default 1000,100000,1000000,4000000)")
    g.add_argument("--scale-runs", type=int, default=common.MIN_RUNS, metavar="N",
                   help=f"runs per figure (default {common.MIN_RUNS})")
    g.add_argument("--scale-packets", type=int, default=200_000, metavar="N",
                   help="packets per run of the hit figures (default 200000)")
    g.add_argument("--scale-new-flows", type=int, default=50_000, metavar="N",
                   help="new flows per run of the insert figure (default 50000)")
    g.add_argument("--scale-max-seconds", type=float, default=600, metavar="S",
                   help="give up after this long (default 600)")


def _max_entries(size: int) -> int:
    return size + max(size // 4, 8192)


def run(args) -> dict:
    started = time.monotonic()
    points = []
    for size in args.scale_sizes:
        left = args.scale_max_seconds - (time.monotonic() - started)
        if left <= 0:
            raise RuntimeError(f"gave up after {args.scale_max_seconds:g} s")
        b = Bench(_max_entries(size), left, tag="scale", lru_entries=16)
        try:
            points.append(_one_size(args, b, size))
        finally:
            b.close()
        print(f"  {size:>9,} flows: hit warm {points[-1]['figures']['hit_warm']['ctbpf']['median']:g}"
              f" ns, cold {points[-1]['figures']['hit_cold']['ctbpf']['median']:g} ns, insert "
              f"{points[-1]['figures']['insert']['ctbpf']['median']:g} ns", flush=True)
    return _results(args, points)


def _one_size(args, b: Bench, size: int) -> dict:
    check_keys()
    tr, base, runner = b.tr, b.base, b.runner
    runs = max(1, args.scale_runs)
    timing = {}
    t0 = time.perf_counter()
    # Templates: an established flow and a SYN_SENT one, made by the datapath.
    proto_fs = FlowSet(F4, TCP, 0, 2)
    handshake(tr, runner, proto_fs, np.arange(1))
    established = read_entry(tr.map_fd["ct_assured"], proto_fs.keys(np.arange(1)).tobytes())
    runner.run(tr.fd, proto_fs.frames("syn", np.arange(1, 2)))
    tr.drain()
    syn_sent = read_entry(tr.map_fd["ct_new"], proto_fs.keys(np.arange(1, 2)).tobytes())
    delete_keys(tr.map_fd["ct_assured"], proto_fs.keys(np.arange(1)))
    delete_keys(tr.map_fd["ct_new"], proto_fs.keys(np.arange(1, 2)))

    est = FlowSet(F4, TCP, 16, size)                  # ct_assured and the bare hash
    syn = FlowSet(F4, TCP, 16 + size, size)           # ct_new
    fresh_first = 16 + 2 * size                       # new flows from here on
    now = time.monotonic_ns()
    step = 1 << 18
    for at in range(0, size, step):
        b.deadline.check()
        part = np.arange(at, min(size, at + step))
        keys = est.keys(part)
        values = entries_like(established, len(part), now)
        check("ct_assured fill", update_batch(tr.map_fd["ct_assured"], keys, values), len(part))
        check("bare hash fill", update_batch(base.hash_fd, keys, values), len(part))
        check("ct_new fill", update_batch(tr.map_fd["ct_new"], syn.keys(part),
                                          entries_like(syn_sent, len(part), now)), len(part))
    timing["fill_s"] = round(time.perf_counter() - t0, 2)
    sample = np.random.default_rng(1).choice(size, size=min(100, size), replace=False)
    before = tr.counters()
    runner.run(tr.fd, est.frames("ack", sample))
    d = delta(before, tr.counters())
    check("sample of the fill: established", d["pkt_established"], len(sample))
    check("sample of the fill: inserts", d["insert"], 0)

    t0 = time.perf_counter()
    per = min(250, size)
    repeat = max(1, math.ceil(args.scale_packets / per))
    k = max(1, min(args.scale_new_flows, (_max_entries(size) - size) // 2))
    rng = np.random.default_rng()
    wall_rates = []
    for _ in range(runs):
        jobs = ["warm", "cold", "insert"]
        for job in random.sample(jobs, len(jobs)):
            if job == "warm":
                sel = rng.choice(size, size=per, replace=False)
                b.replay("hit_warm", est.frames("ack", sel), repeat, "pkt_established", per)
            elif job == "cold":
                b.cold_hits("hit_cold", est, args.scale_packets)
            else:
                fs = FlowSet(F4, TCP, fresh_first, k)
                fresh_first += k
                t1 = time.perf_counter()
                b.new_flows("insert", fs, variants=("ctbpf", "ctbpf_listened", "empty"))
                wall_rates.append(k / (time.perf_counter() - t1))
    timing["runs_s"] = round(time.perf_counter() - t0, 2)
    figures = {}
    for fig, variants in b.raw.items():
        figures[fig] = {v: common.spread(vals, digits=2) for v, vals in variants.items()
                        if v != "events_lost"}
        figures[fig]["packets"] = b.packets[fig]
    ins = b.raw["insert"]["ctbpf"]
    # million entries per second: 1e9 / ns / 1e6
    figures["insert"]["rate_per_core"] = common.spread([1e3 / ns for ns in ins], digits=3)
    figures["insert"]["rate_per_core_listened"] = common.spread(
        [1e3 / ns for ns in b.raw["insert"]["ctbpf_listened"]], digits=3)
    # the whole loop around the test runs of one job (ctbpf with and without
    # events, the empty program, deletes, event draining in Python): a floor
    figures["insert"]["insert_wall_rate"] = common.spread([r / 1e6 for r in wall_rates],
                                                          digits=3)
    return {"size": size, "max_entries": _max_entries(size), "new_flows_per_run": k,
            "repeat": repeat, "runs": runs, "timing": timing, "figures": figures}


def _results(args, points: list[dict]) -> dict:
    targets = []
    for p in points:
        f = p["figures"]
        for label in ("warm", "cold"):
            h = f[f"hit_{label}"]
            ratio = round(h["ctbpf"]["median"] / h["lookup"]["median"], 3)
            targets.append(common.target_row(
                f"established TCP hit ({label}), {p['size']:,} flows", "ns/packet", h["ctbpf"],
                f"<= {TARGET_HIT_RATIO[label]:g} x bare lookup",
                ratio <= TARGET_HIT_RATIO[label],
                baseline=h["lookup"], baseline_name="bare lookup", ratio=ratio,
                note="net of the empty program; issue 15 sets this target at 1k and 1M "
                     "flows (cold: 1M)"))
    for p in points:
        f = p["figures"]["insert"]
        targets.append(common.target_row(
            f"insert rate, one core, {p['size']:,} flows in each table", "million entries/s",
            f["rate_per_core"], "none set (issue 15 bounds the cost per new flow: "
            "bench/datapath.py)", None,
            note=f"{f['ctbpf']['median']:g} ns per new flow net of the empty program, "
                 f"nobody listening to events; {f['rate_per_core_listened']['median']:g} M/s with a listener"))
    series = {
        "hit, warm (ctbpf)": [(p["size"], p["figures"]["hit_warm"]["ctbpf"]) for p in points],
        "hit, warm (bare lookup)": [(p["size"], p["figures"]["hit_warm"]["lookup"])
                                    for p in points],
        "hit, cold (ctbpf)": [(p["size"], p["figures"]["hit_cold"]["ctbpf"]) for p in points],
        "hit, cold (bare lookup)": [(p["size"], p["figures"]["hit_cold"]["lookup"])
                                    for p in points],
        "new flow (ctbpf)": [(p["size"], p["figures"]["insert"]["ctbpf"]) for p in points],
    }
    plots = [common.plot_lines("scale-cost", "Per-packet cost as the tables grow",
                               "flows in the table", "ns per packet (net of empty XDP)",
                               series),
             common.plot_lines("scale-insert-rate", "New flows per second, one core",
                               "flows in each table", "million entries/s",
                               {"ctbpf (events on)": [(p["size"],
                                                       p["figures"]["insert"]["rate_per_core"])
                                                      for p in points]})]
    return {"config": {"sizes": args.scale_sizes, "runs": args.scale_runs,
                       "packets": args.scale_packets, "new_flows": args.scale_new_flows,
                       "families": [FAMILIES[0][1]]},
            "points": points, "targets": targets, "plots": plots, "notes": NOTES}


def summary(result: dict) -> str:
    fv = common.format_value
    lines = ["| flows | max | hit warm | bare lookup warm | hit cold | bare lookup cold | "
             "new flow | M inserts/s (one core) | fill s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        f = p["figures"]
        lines.append(f"| {p['size']:,} | {p['max_entries']:,} | {fv(f['hit_warm']['ctbpf'])} | "
                     f"{fv(f['hit_warm']['lookup'])} | {fv(f['hit_cold']['ctbpf'])} | "
                     f"{fv(f['hit_cold']['lookup'])} | {fv(f['insert']['ctbpf'])} | "
                     f"{fv(f['insert']['rate_per_core'])} | {p['timing']['fill_s']} |")
    lines += ["", "(ns per packet net of an empty XDP program, median [min, max])", "",
              common.table(result["targets"])]
    return "\n".join(lines)
