"""Kernel memory per tracked flow: ctbpf's BPF maps beside nf_conntrack filled
with the same flows in the same run (issue 15).

Each configuration is a `max` and a number of flows, half of them ASSURED
and half not, IPv4 and IPv6 apart:

  full       max = flows (default 100,000 and 1,048,576)
  occupancy  max 1,048,576 holding 100,000 flows
  idle       max 1,048,576, no flow (ctbpf only; nf_conntrack's is its buckets)

ctbpf: the real datapath (ctbpf.datapath.loader.Datapath, private pin dir),
its ct_assured filled with the ASSURED half and ct_new with the rest by
BPF_MAP_UPDATE_BATCH; every map it has (pinned, and the ones only its
programs hold) read for the kernel's own map_mem_usage: the `memlock` line
of /proc/self/fdinfo, checked against bpftool's bytes_memlock.

nf_conntrack: the same tuples made by real packets in a private namespace
(bench/kerneltable.py), its buckets set to the configuration's max and
nf_conntrack_max raised to it if below, both put back afterwards: a slab
object per entry, any extension kmalloc, and 8 bytes per bucket.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctbpf import abi
from ctbpf.datapath import bpfsys, sizing
from ctbpf.datapath.flowkey import key_from_tuple
from ctbpf.datapath.loader import Datapath

from . import common, kerneltable as kt
from .datapath import BPFFS, remove_private_dir, update_batch

HELP = "bytes per tracked flow: ctbpf's BPF maps vs nf_conntrack filled with the same flows"

TARGET_BYTES = {"IPv4": 120, "IPv6": 144}
TARGET_FULL_SHARE = 0.5        # of nf_conntrack with the same flows and max
TARGET_OCCUPANCY_SHARE = 0.6
MIB = 1 << 20
TARGET_IDLE_BYTES = 32 * MIB
FAMILIES = ((4, "IPv4"), (6, "IPv6"))
DEFAULT_FULL = (100_000, 1 << 20)
DEFAULT_OCCUPANCY = ((1 << 20, 100_000),)
DEFAULT_IDLE_MAX = 1 << 20
KERNEL_RUNS = 3
# nf_conntrack's buckets per max: the kernel's default when no hashsize is
# given (nf_conntrack_max = buckets); this host's own ratio is not used, as
# another run may have raised max for a while
BUCKETS_PER_MAX = 1.0

# The kernel's BPF hash table (kernel/bpf/hashtab.c): struct htab_elem
# before each key, a struct bucket per power-of-two bucket, an llist node
# per element of a BPF_F_NO_PREALLOC map.
HTAB_ELEM = 48
HTAB_BUCKET = 16
LLIST_NODE = 8
BPF_F_NO_PREALLOC = 1
# The common LRU keeps up to this many free nodes per CPU, and evicts when
# the shared free list runs dry even if another CPU holds free nodes
# (kernel/bpf/bpf_lru_list.c): a full LRU can lose this many per CPU.
LRU_LOCAL_FREE = 128
MAP_TYPES = {1: "hash", 2: "array", 3: "prog_array", 5: "percpu_hash", 6: "percpu_array",
             9: "lru_hash", 10: "lru_percpu_hash", 27: "ringbuf"}
HASH_TYPES = {1, 5, 9, 10}
PERCPU_TYPES = {5, 6, 10}
LRU_TYPES = {9, 10}

NOTES = """\
**Method.** Each configuration is a `max` and a number of flows, half of
them ASSURED and half not, measured for IPv4 and IPv6 apart, ctbpf and
nf_conntrack in the same run with the same tuples. The unassured half are
TCP SYNs (`SYN_SENT [UNREPLIED]`), the ASSURED half UDP streams (a packet,
its reply and, more than two seconds later, the next packet: the kernel's
UDP tracker sets ASSURED only on a flow still active two seconds after it
was made).

*ctbpf*: the real datapath is loaded into a private pin dir; the ASSURED
half is written into `ct_assured` and the rest into `ct_new` with
`BPF_MAP_UPDATE_BATCH` (keys from `ctbpf.datapath.flowkey`, the ct_new
share written from each CPU in turn, since LRU free lists are per CPU). The
figure is the kernel's own `map_mem_usage` of *every* map the datapath has,
pinned or held only by its programs (the `memlock` line of
`/proc/self/fdinfo`, which must equal `bpftool map show --json`
`bytes_memlock`), divided by the flows present. ct_new keeps the loader's
default size (new_max) if that holds the unassured half, and is otherwise
sized to hold exactly that half (the table says which); ct_assured has the
size the daemon grows it to for the ASSURED half (ctbpf/agent/growth.py). An LRU filled to its size may lose up to 128 entries per CPU
to its per-CPU free lists: the flows present are counted, not assumed.

*nf_conntrack*: the same tuples made by real packets (trafgen over a veth
pair into a private namespace with conntrack on, `bench/kerneltable.py`),
with as many buckets as the configuration's `max` (the kernel's default:
one bucket per entry when no hashsize is given) and
`nf_conntrack_max` raised to that `max` when below it, both put back
afterwards (`max` is not lowered: it is global, a lower one would only cap
other namespaces' tables, and it changes no byte). Its figure is one
`nf_conntrack` slab object per entry (the namespace's `nf_conntrack_count`
x `slab_size` of `/sys/kernel/slab/nf_conntrack`), plus any extension
kmalloc (a `kmalloc-*` cache that grew by at least 90% of the entries; the
summary's `ext` column; accounting, timestamps and event listeners, which
add one, are off by default), plus 8
bytes x `nf_conntrack_buckets`, divided by the entries. The in-use objects
the slab cache gained meanwhile (sysfs `objects`, `/proc/slabinfo` active
objects) are the cross-check, in objects gained per entry: near 1 on a quiet
machine; other namespaces' conntrack and the slab's per-CPU caches move
them, so they are not the figure.

**Where the bytes go.** The per-map breakdown below models each BPF hash
map as the kernel sizes it: an element is 48 bytes of `struct htab_elem`,
the key and the value each rounded up to 8 bytes, and 8 more bytes of
llist node in a `BPF_F_NO_PREALLOC` map; a preallocated map pays for
`max_entries` elements (a plain hash one more per CPU) whether used or not,
a non-preallocated one only for the elements present; every hash map pays
16 bytes per bucket for `max_entries` rounded up to a power of two. The
rest of `memlock` (`other`) is the table's own structure and per-CPU
locks; arrays and ring buffers are their `memlock` alone. nf_conntrack
spends one slab object per flow and one 8-byte bucket per bucket.

Both sides' figures are computed from sizes and counts the kernel reports
(the maps' element counts, the namespace's entry count), so they repeat
from run to run unless a fill comes out short; the medians with min and
max show it. Fewer kernel runs (`--memory-kernel-runs`) than ctbpf runs
(`--memory-runs`) keep the one-million-flow fills within
a few minutes."""


@dataclass(frozen=True)
class Config:
    kind: str        # "full", "occupancy", "idle"
    max: int
    flows: int

    @property
    def name(self) -> str:
        if self.kind == "idle":
            return f"idle, max {self.max:,}"
        if self.kind == "full":
            return f"full, max {self.max:,}"
        return f"{self.flows / self.max:.0%} occupancy, max {self.max:,} ({self.flows:,} flows)"

    @property
    def assured(self) -> int:
        return self.flows // 2

    @property
    def unassured(self) -> int:
        return self.flows - self.flows // 2

    def plans(self, family: int) -> tuple[kt.Plan, kt.Plan]:
        """(unassured TCP SYNs, ASSURED UDP streams): disjoint clients."""
        return (kt.Plan(family, kt.TCP, self.unassured, net=1),
                kt.Plan(family, kt.UDP, self.assured, net=101))


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _pairs(s: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, s.split(",")):
        m, _, f = part.partition(":")
        out.append((int(m), int(f)))
    return out


def add_arguments(g) -> None:
    g.add_argument("--memory-full", type=_ints, default=list(DEFAULT_FULL), metavar="N,N,...",
                   help="full tables: max = flows (default 100000,1048576)")
    g.add_argument("--memory-occupancy", type=_pairs, default=list(DEFAULT_OCCUPANCY),
                   metavar="MAX:FLOWS,...", help="partly filled tables (default 1048576:100000)")
    g.add_argument("--memory-idle-max", type=int, default=DEFAULT_IDLE_MAX, metavar="N",
                   help="max of the idle tracker (default 1048576; 0: none)")
    g.add_argument("--memory-new-max", type=int, default=None, metavar="N",
                   help="ct_new's size (default: the loader's, or the unassured half when "
                        "that is bigger)")
    g.add_argument("--memory-runs", type=int, default=common.MIN_RUNS, metavar="N",
                   help=f"ctbpf fills per configuration and family (default {common.MIN_RUNS})")
    g.add_argument("--memory-kernel-runs", type=int, default=KERNEL_RUNS, metavar="N",
                   help=f"nf_conntrack fills per configuration and family (default {KERNEL_RUNS})")
    g.add_argument("--memory-no-kernel", action="store_true",
                   help="skip nf_conntrack (no namespaces, no sysctl change)")
    g.add_argument("--memory-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="longest any one command may take (default 120)")


# --------------------------------------------------------------------------
# reading BPF map memory


def fdinfo(fd: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def bpftool_memlock(map_id: int) -> int | None:
    try:
        r = subprocess.run(["bpftool", "map", "show", "id", str(map_id), "--json"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode:
        return None
    return int(json.loads(r.stdout).get("bytes_memlock", 0))


def held_map_fds() -> dict[int, int]:
    """map id -> an fd of this process on it (BCC holds every map it made)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:bpf-map":
                continue
            info = fdinfo(int(name))
        except (OSError, ValueError):
            continue
        if "map_id" in info:
            out.setdefault(int(info["map_id"]), int(name))
    return out


def present(fd: int, m: dict, ncpus: int) -> int:
    """Elements in a hash map, by one batch read."""
    vsize = m["value_size"]
    if m["type"] in PERCPU_TYPES:
        vsize = (vsize + 7) // 8 * 8 * ncpus
    return bpfsys.lookup_batch(fd, m["key_size"], vsize, m["max_entries"])[2]


def _describe(fd: int, name: str, pinned: bool, ncpus: int) -> dict:
    info = fdinfo(fd)
    memlock = int(info["memlock"])
    map_id = int(info.get("map_id", 0))
    tool = bpftool_memlock(map_id) if map_id else None
    if tool is not None and tool != memlock:
        raise RuntimeError(f"{name}: fdinfo memlock {memlock} != bpftool {tool}")
    m = {"name": name, "pinned": pinned, "id": map_id, "type": int(info["map_type"]),
         "flags": int(info.get("map_flags", "0"), 16), "key_size": int(info["key_size"]),
         "value_size": int(info["value_size"]), "max_entries": int(info["max_entries"]),
         "memlock": memlock, "bpftool_bytes_memlock": tool}
    if m["type"] in HASH_TYPES:
        m["present"] = present(fd, m, ncpus)
    m["model"] = htab_model(m, ncpus)
    return m


def map_memory(pin_dir: Path, extra_ids: set[int], ncpus: int) -> list[dict]:
    """Every map pinned in pin_dir, then every map in extra_ids not pinned
    there (the datapath's unpinned maps, held by its programs)."""
    maps, seen = [], set()
    for path in sorted(pin_dir.iterdir()):
        try:
            fd = bpfsys.obj_get(str(path))
        except OSError:
            continue
        try:
            if "map_type" not in fdinfo(fd):        # a pinned program
                continue
            m = _describe(fd, path.name, True, ncpus)
        finally:
            os.close(fd)
        seen.add(m["id"])
        maps.append(m)
    for map_id, fd in sorted(held_map_fds().items()):
        if map_id in extra_ids and map_id not in seen:
            r = subprocess.run(["bpftool", "map", "show", "id", str(map_id), "--json"],
                               capture_output=True, text=True, timeout=20)
            name = json.loads(r.stdout).get("name", f"id {map_id}") if not r.returncode \
                else f"id {map_id}"
            maps.append(_describe(fd, name, False, ncpus))
    return maps


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def htab_model(m: dict, ncpus: int) -> dict | None:
    """Where a BPF hash map's memlock goes, as kernel/bpf/hashtab.c sizes it
    (htab_map_mem_usage): None for other map types."""
    if m["type"] not in HASH_TYPES:
        return None
    percpu, lru = m["type"] in PERCPU_TYPES, m["type"] in LRU_TYPES
    prealloc = lru or not m["flags"] & BPF_F_NO_PREALLOC
    if prealloc:
        elements = m["max_entries"] + (ncpus if not lru and not percpu else 0)
    else:
        elements = m["present"]
    value = 8 if percpu else _round8(m["value_size"])   # per-CPU: a pointer in the element
    out = {"elements": elements, "prealloc": prealloc, "header": HTAB_ELEM * elements,
           "key": _round8(m["key_size"]) * elements, "value": value * elements,
           "llist": 0 if prealloc else LLIST_NODE * elements,
           "buckets": HTAB_BUCKET * _pow2(m["max_entries"])}
    if percpu:
        out["value"] += _round8(m["value_size"]) * ncpus * elements
    out["other"] = m["memlock"] - sum(out[k] for k in ("header", "key", "value", "llist",
                                                        "buckets"))
    return out


def total(maps: list[dict]) -> int:
    return sum(m["memlock"] for m in maps)


# --------------------------------------------------------------------------
# the ctbpf side


def _key_of(src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    return bytes(key_from_tuple(src, dst, proto, sport, dport)[0])


def values_for(value_size: int, n: int) -> np.ndarray:
    """n entries, zero but for an expiry that never comes (nothing runs to
    read them, but a sweeper must not find them expired)."""
    out = np.zeros((n, value_size), dtype=np.uint8)
    if value_size == ctypes.sizeof(abi.CtEntry):
        for name, _ in abi.CtEntry._fields_:
            if name.startswith("expires"):
                f = getattr(abi.CtEntry, name)
                out[:, f.offset:f.offset + f.size] = 0xFF
    return out


def _fill_from_each_cpu(fd: int, keys: np.ndarray, values: np.ndarray) -> int:
    """Write keys spread over the CPUs this process may run on, a share
    from each: an LRU's free nodes are handed out per CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    done = 0
    try:
        for i, cpu in enumerate(cpus):
            os.sched_setaffinity(0, {cpu})
            lo, hi = len(keys) * i // len(cpus), len(keys) * (i + 1) // len(cpus)
            done += update_batch(fd, keys[lo:hi], values[lo:hi])
    finally:
        os.sched_setaffinity(0, cpus)
    return done


def _delete(fd: int, keys: np.ndarray, key_size: int, chunk: int = 1 << 16) -> None:
    for at in range(0, len(keys), chunk):
        bpfsys.delete_batch(fd, keys[at:at + chunk].tobytes(), key_size)


class Ctbpf:
    """One load of the datapath for one max."""

    def __init__(self, max_entries: int, new_max: int | None, assured_flows: int = 0) -> None:
        self.max_entries = max_entries
        self.new_max = new_max
        self.assured_flows = assured_flows
        self.pin_dir = BPFFS / f"ctbpf-bench-mem-{secrets.token_hex(4)}"
        self.dp = None
        self.ncpus = bpfsys.possible_cpus()
        self.ids: set[int] = set()

    def load(self) -> "Ctbpf":
        before = set(held_map_fds())
        # ct_assured as large as the daemon grows it for these flows
        # (ctbpf/agent/growth.py), not conntrack_max from the start
        assured = sizing.sizes(self.max_entries, self.new_max, live=self.assured_flows).assured
        self.dp = Datapath(self.pin_dir, self.max_entries, new_max=self.new_max,
                           assured=assured).load()
        self.ids = set(held_map_fds()) - before
        return self

    def maps(self) -> list[dict]:
        return map_memory(self.pin_dir, self.ids, self.ncpus)

    def table(self, name: str) -> dict:
        fd = bpfsys.obj_get(str(self.pin_dir / name))
        try:
            return _describe(fd, name, True, self.ncpus)
        finally:
            os.close(fd)

    def measure(self, cfg: Config, family: int) -> dict:
        """Fill both tables with cfg's flows of one family, read every map,
        empty the tables again."""
        fds = {t: bpfsys.obj_get(str(self.pin_dir / t)) for t in ("ct_new", "ct_assured")}
        syn, streams = cfg.plans(family)
        filled = {}
        try:
            for table, plan in (("ct_assured", streams), ("ct_new", syn)):
                m = self.table(table)
                keys = plan.keys(_key_of)
                if keys.shape[1] != m["key_size"]:
                    raise RuntimeError(f"{table}: keys of {m['key_size']} bytes, flowkey builds "
                                       f"{keys.shape[1]}")
                done = _fill_from_each_cpu(fds[table], keys,
                                           values_for(m["value_size"], len(keys)))
                if done != len(keys):
                    raise RuntimeError(f"{table}: the batch update stopped at {done} of "
                                       f"{len(keys)}")
                filled[table] = keys
            maps = self.maps()
            got = {m["name"]: m.get("present") for m in maps}
            lost = {t: len(filled[t]) - got[t] for t in filled}
            if lost["ct_assured"] or not 0 <= lost["ct_new"] <= LRU_LOCAL_FREE * self.ncpus:
                raise RuntimeError(f"flows present {got['ct_assured']} + {got['ct_new']}, not "
                                   f"{len(filled['ct_assured'])} + {len(filled['ct_new'])}")
            return {"flows": got["ct_assured"] + got["ct_new"], "assured": got["ct_assured"],
                    "unassured": got["ct_new"], "lru_lost": lost["ct_new"],
                    "total_bytes": total(maps), "maps": maps}
        finally:
            for table, keys in filled.items():
                _delete(fds[table], keys, keys.shape[1])
            for fd in fds.values():
                os.close(fd)

    def close(self) -> None:
        try:
            if self.dp is not None:
                self.dp.close()
                self.dp = None
        finally:
            remove_private_dir(self.pin_dir)


def load_for(cfg: Config, new_max: int | None) -> tuple[Ctbpf, str]:
    """The datapath at cfg.max, ct_new big enough for cfg's unassured half:
    (loaded tables, how ct_new got its size)."""
    if new_max is not None:
        return Ctbpf(cfg.max, new_max, cfg.assured).load(), "--memory-new-max"
    c = Ctbpf(cfg.max, None, cfg.assured).load()
    try:
        size = c.table("ct_new")["max_entries"]
    except BaseException:
        c.close()
        raise
    if size >= cfg.unassured:
        return c, "the loader's default"
    c.close()
    return (Ctbpf(cfg.max, cfg.unassured, cfg.assured).load(),
            f"the unassured half (the loader's default, {size:,}, holds fewer)")


def measure_ctbpf(cfg: Config, runs: int, new_max: int | None) -> dict:
    c, why = load_for(cfg, new_max)
    try:
        empty = c.maps()
        out = {"new_max": c.table("ct_new")["max_entries"], "new_max_from": why,
               "idle_bytes": total(empty), "idle_maps": empty, "families": {}}
        if cfg.flows:
            for family, fname in FAMILIES:
                rows = [c.measure(cfg, family) for _ in range(max(1, runs))]
                first = rows[0]
                out["families"][fname] = {
                    "flows": first["flows"], "assured": first["assured"],
                    "unassured": first["unassured"], "lru_lost": first["lru_lost"],
                    "total_bytes": common.spread([r["total_bytes"] for r in rows], digits=0),
                    "per_flow": common.spread([r["total_bytes"] / r["flows"] for r in rows],
                                              digits=1),
                    "maps": first["maps"]}
        return out
    finally:
        c.close()


# --------------------------------------------------------------------------
# the kernel side


def measure_kernel(table: kt.KernelTable, limits: kt.Limits, cfg: Config, runs: int,
                   buckets_per_max: float) -> dict:
    # max is raised, never lowered: a lower one would only cap other
    # namespaces' tables (it is global) and changes no byte of this one
    limits.set(buckets=max(1, round(cfg.max * buckets_per_max)))
    got = limits.at_least(cfg.max)
    out = {"nf_conntrack_max": got["max"], "nf_conntrack_buckets": got["buckets"],
           "idle_bytes": kt.BUCKET_BYTES * got["buckets"], "families": {}}
    if not cfg.flows:
        return out
    for family, fname in FAMILIES:
        syn, streams = cfg.plans(family)
        rows = []
        for i in range(max(1, runs)):
            before = kt.slab_snapshot()
            fill = table.fill(syn=(syn,), streams=(streams,), check_assured=i == 0)
            after = kt.slab_snapshot()
            cost = kt.kernel_cost(before, after, table.count(), got["buckets"])
            cost["fill"] = fill
            rows.append(cost)
            table.flush()
            kt.wait_slab_back(before["sysfs"]["objects"], max(1024, cfg.flows // 100))
        first = rows[0]
        out["families"][fname] = {
            "flows": first["flows"], "assured": first["fill"].get("assured"),
            "unassured": first["fill"].get("unassured"),
            "per_flow": common.spread([r["per_flow"] for r in rows], digits=1),
            "slab_objects_gained_per_entry": common.spread(
                [r["objects_delta_per_entry"] for r in rows], digits=3),
            "runs": rows}
    return out


# --------------------------------------------------------------------------
# the benchmark


def configs(args) -> list[Config]:
    out = [Config("full", n, n) for n in args.memory_full]
    out += [Config("occupancy", m, f) for m, f in args.memory_occupancy]
    if args.memory_idle_max:
        out.append(Config("idle", args.memory_idle_max, 0))
    for c in out:
        if c.flows > c.max:
            raise ValueError(f"{c.name}: more flows than max")
    return out


def run(args) -> dict:
    cfgs = configs(args)
    host = kt.Limits.read()
    buckets_per_max = BUCKETS_PER_MAX
    limits = kt.Limits()
    table = None
    per = []
    try:
        if not args.memory_no_kernel:
            table = kt.KernelTable(secrets.token_hex(3), args.memory_timeout, prefix="ctbm")
            table.setup()
        for cfg in cfgs:
            print(f"  {cfg.name}: ctbpf", flush=True)
            row = {"config": cfg.__dict__ | {"name": cfg.name},
                   "ctbpf": measure_ctbpf(cfg, args.memory_runs, args.memory_new_max)}
            if table is not None:
                print(f"  {cfg.name}: nf_conntrack", flush=True)
                row["kernel"] = measure_kernel(table, limits, cfg, args.memory_kernel_runs,
                                               buckets_per_max)
                limits.restore()
            per.append(row)
    finally:
        if table is not None:
            table.close()
        limits.restore()
    return _results(per, host, buckets_per_max)


def _results(per: list[dict], host: dict, buckets_per_max: float) -> dict:
    targets, groups = [], {}
    for row in per:
        cfg, mine, kern = row["config"], row["ctbpf"], row.get("kernel")
        if cfg["kind"] == "idle":
            base = round(kern["idle_bytes"] / MIB, 2) if kern else None
            targets.append(common.target_row(
                f"all BPF maps, idle tracker (max {cfg['max']:,})", "MiB",
                round(mine["idle_bytes"] / MIB, 2), f"<= {TARGET_IDLE_BYTES / MIB:g}",
                mine["idle_bytes"] <= TARGET_IDLE_BYTES, baseline=base,
                baseline_name="nf_conntrack's buckets" if kern else "",
                note=f"ct_new {mine['new_max']:,} ({mine['new_max_from']})"))
            continue
        group = {}
        for _, fname in FAMILIES:
            f = mine["families"][fname]
            kf = kern["families"][fname] if kern else None
            share = TARGET_FULL_SHARE if cfg["kind"] == "full" else TARGET_OCCUPANCY_SHARE
            ok = f["per_flow"]["median"] <= share * kf["per_flow"]["median"] if kf else None
            want = f"<= {share:g} x nf_conntrack"
            if cfg["kind"] == "full":
                want = f"<= {TARGET_BYTES[fname]} and {want}"
                if ok is not None:
                    ok = ok and f["per_flow"]["median"] <= TARGET_BYTES[fname]
            targets.append(common.target_row(
                f"bytes per {fname} flow, {cfg['name']}", "bytes", f["per_flow"], want, ok,
                baseline=kf["per_flow"] if kf else None,
                baseline_name="nf_conntrack" if kf else "",
                note=f"{f['flows']:,} flows present ({f['assured']:,} ASSURED); ct_new "
                     f"{mine['new_max']:,} ({mine['new_max_from']})"))
            group[f"ctbpf {fname}"] = f["per_flow"]
            if kf:
                group[f"nf_conntrack {fname}"] = kf["per_flow"]
        groups[cfg["name"]] = group
    plots = [common.plot_bars("memory-per-flow", "Kernel memory per tracked flow",
                              "bytes per flow", groups)] if groups else []
    return {"host_limits": host, "buckets_per_max": buckets_per_max,
            "sizes": {"ct_key": ctypes.sizeof(abi.CtKey),
                      "ct_entry": ctypes.sizeof(abi.CtEntry)},
            "configs": per, "targets": targets, "plots": plots, "notes": NOTES}


# --------------------------------------------------------------------------
# the terminal


SMALL = 64 << 10      # maps below this are summed into one line


def breakdown(maps: list[dict], flows: int) -> list[str]:
    """A per-map table: where the bytes of a configuration go."""
    lines = ["| map | type | max | elements | header | key | value | llist | buckets | other "
             "| memlock | per flow |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    small = [m for m in maps if m["memlock"] < SMALL]
    for m in sorted((m for m in maps if m["memlock"] >= SMALL), key=lambda m: -m["memlock"]):
        md = m["model"]
        kind = MAP_TYPES.get(m["type"], str(m["type"]))
        if md and not md["prealloc"]:
            kind += ", no prealloc"
        cells = ([f"{md['elements']:,}", *(f"{md[k]:,}" for k in
                  ("header", "key", "value", "llist", "buckets", "other"))]
                 if md else ["—"] * 7)
        name = m["name"] if m["pinned"] else f"{m['name']} (not pinned)"
        lines.append(f"| {name} | {kind} | {m['max_entries']:,} | {' | '.join(cells)} | "
                     f"{m['memlock']:,} | {m['memlock'] / flows if flows else 0:.1f} |")
    if small:
        mem = sum(m["memlock"] for m in small)
        lines.append(f"| {len(small)} small maps ({', '.join(m['name'] for m in small)}) | | | "
                     f"| | | | | | | {mem:,} | {mem / flows if flows else 0:.1f} |")
    return lines


def summary(result: dict) -> str:
    fv = common.format_value
    out = [f"ct_key {result['sizes']['ct_key']} B, ct_entry {result['sizes']['ct_entry']} B; "
           f"this host: nf_conntrack_max {result['host_limits']['max']:,}, buckets "
           f"{result['host_limits']['buckets']:,}", "",
           "| configuration | family | flows | ctbpf per flow | nf_conntrack per flow | "
           "nf slab / ext / buckets per flow | slab objects gained per entry |",
           "|---|---|---|---|---|---|---|"]
    for row in result["configs"]:
        cfg, mine, kern = row["config"], row["ctbpf"], row.get("kernel")
        if cfg["kind"] == "idle":
            out.append(f"| {cfg['name']} | — | 0 | {mine['idle_bytes']:,} B in all | "
                       f"{kern['idle_bytes']:,} B (buckets) | | |" if kern else
                       f"| {cfg['name']} | — | 0 | {mine['idle_bytes']:,} B in all | — | | |")
            continue
        for fname, f in mine["families"].items():
            kf = kern["families"][fname] if kern else None
            parts, gained = "—", "—"
            if kf:
                gained = fv(kf["slab_objects_gained_per_entry"])
                r = kf["runs"][0]
                parts = (f"{r['slab_bytes'] / r['flows']:.1f} / "
                         f"{r['extension_bytes'] / r['flows']:.1f} / "
                         f"{r['bucket_bytes'] / r['flows']:.1f}")
            out.append(f"| {cfg['name']} | {fname} | {f['flows']:,} | {fv(f['per_flow'])} | "
                       f"{fv(kf['per_flow']) if kf else '—'} | {parts} | {gained} |")
    for row in result["configs"]:
        cfg, mine = row["config"], row["ctbpf"]
        if cfg["kind"] == "idle":
            out += ["", f"**{cfg['name']}** (ct_new {mine['new_max']:,}: "
                        f"{mine['new_max_from']})", *breakdown(mine["idle_maps"], 0)]
            continue
        shown = None
        for fname, f in mine["families"].items():
            head = (f"**{cfg['name']}, {fname}** ({f['flows']:,} flows; ct_new "
                    f"{mine['new_max']:,}: {mine['new_max_from']})")
            lines = breakdown(f["maps"], f["flows"])
            if lines == shown:
                out += ["", head + ": the same maps and bytes as above"]
                continue
            out += ["", head, *lines]
            shown = lines
    out += ["", common.table(result["targets"])]
    return "\n".join(out)
