"""Control plane at scale: `ctbpf list` in each format against `conntrack
-L` on a kernel table holding the same flows (bench/listbench.py: time,
first line, peak RSS, and a `ctbpf top` refresh), and a Prometheus scrape
of the real exporter at a million entries.

Setup, all of it private to the run and removed at the end (try/finally):

  ctbpf    the real datapath loaded once into its own pin dir
           (/sys/fs/bpf/ctbpf-bench-cp-*); its ct_new table gets, by
           BPF_MAP_UPDATE_BATCH, the first L of N live unreplied UDP flows
           10.200.1.T:P -> 10.200.0.1:9 (T = 1..16, P = 1..62500 for 1M),
           then the rest before the scrape.
  kernel   two network namespaces joined by a veth pair; the receiving one
           has conntrack on (an nftables `ct state` rule), its UDP timeout
           raised to an hour and checksum checks off; trafgen sends the same
           L flows into it, one packet each. nf_conntrack_max is a global
           sysctl (read-only inside a namespace): when it is below L it is
           raised for the run and put back afterwards.

Figures, each the median of --controlplane-runs runs [min, max]:

  list     (L flows, default 1M) wall time of `ctbpf list --pin-dir DIR
           -o proc|conntrack|json` as subprocesses, stdout drained through a
           pipe, against `ip netns exec NS conntrack -L` read the same way;
           runs interleaved; the time to the first line, the child's CPU and
           peak RSS (wait4) too, and the RSS again at L/10 flows. One
           untimed run of each first checks that all L are printed.
  top      (L flows) one `ctbpf top` refresh in this process: both tables
           read, rates against the previous sample, the frame rendered.
  scrape   (N flows, default 1M) the real daemon, `ctbpf run --pin-dir DIR
           --metrics-addr 127.0.0.1:PORT` on a veth in a namespace of its
           own, adopting the filled maps; a client in that namespace times
           GET /metrics and checks that each scrape reports N entries.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys, occupancy, table
from ctbpf.datapath.loader import Datapath, remove_pins

from . import common, kerneltable, listbench

HELP = ("ctbpf list (proc, conntrack, json) vs conntrack -L and a top refresh (1M flows "
        "each); a /metrics scrape at 1M entries")

NOTES = """\
**Listing.** `ctbpf list -o proc`, `-o conntrack` and `-o json` are timed
as the real command, a subprocess pointed at a private pin dir with
`--pin-dir`, its output drained through a pipe. The baseline is `conntrack
-L` on a kernel conntrack table of the same size in a private network
namespace, read the same way, in the same rounds. Both tables hold the
same 1,000,000 flows: unreplied UDP `10.200.1.T:P -> 10.200.0.1:9`. The
kernel's are made by `trafgen`, one UDP packet per flow, over a veth pair
into a namespace with conntrack on; ctbpf's are written into `ct_new` with
`BPF_MAP_UPDATE_BATCH`. Both commands are timed whole, as a user meets
them, so the figure includes starting Python and importing ctbpf and numpy
(and, for `conntrack`, `ip netns exec`). `ctbpf list` streams: batch reads
of 64k entries into fixed numpy buffers, decoded column-wise, each chunk's
lines assembled in one byte matrix and written at once
(`ctbpf/datapath/tablestream.py`, `listtext.py`), in table order like
`conntrack -L`. The first line is timed from fork; peak RSS is the child's
VmHWM, taken at 100,000 and at 1,000,000 flows. `ctbpf top` is one refresh
in the benchmark's process: both tables read, rates against the previous
sample, the frame rendered.

**Scrape.** The exporter is the real one: `ctbpf run --metrics-addr
127.0.0.1:PORT` on a veth in a namespace of its own, adopting the filled
maps (1,000,000 live entries), with its sweeper running at the default
intervals as in production. A client in the same namespace times
`GET /metrics`, after one untimed first scrape, and checks that every
scrape counts all the entries. One in-process run of the collector's table
reads and counts shows where the time goes.


**Targets missed, and what would close them.**

- *Scrape at most 0.5 s at a million entries.* Reading both tables with
  `BPF_MAP_LOOKUP_BATCH` to count entries per protocol and TCP state costs
  0.55-0.6 s per million here (about 350 ns per entry, most of it copying
  96 bytes per entry out). The daemon's exporter now counts in the kernel
  instead: a BPF map-element iterator (`ctbpf/datapath/occupancy_iter.py`) walks each
  table and fills a 4,097-counter array, about 0.35 s per million, with the
  batch read kept as the fallback when the iterator cannot load. What would
  make it cheaper still: counts kept by the datapath itself (per-CPU
  counters per table, protocol and state, moved on create, state change and
  delete, re-based by the sweeper's walks because LRU evictions are silent)."""

ROOT = common.ROOT
BPFFS = Path("/sys/fs/bpf")
NS = 1_000_000_000
LIVE_FOR_NS = 3600 * NS

# Targets of issue 6 ("Control plane").
TARGET_SCRAPE_S = 0.5          # one scrape of /metrics at 1M entries

# the flows both tables hold: kerneltable's plan of N unreplied IPv4 UDP flows
SERVER = kerneltable.SERVER4
SERVER_PORT = kerneltable.SERVER_PORT
PORTS_PER_CLIENT = kerneltable.PORTS_PER_CLIENT
METRICS_PORT = 9476


def add_arguments(g) -> None:
    g.add_argument("--controlplane-entries", type=int, default=1_000_000, metavar="N",
                   help="flows in each table (default 1000000)")
    g.add_argument("--controlplane-list-entries", type=int, default=1_000_000, metavar="N",
                   help="flows in both tables for the list and top figures (default 1000000; "
                        "0: all N)")
    g.add_argument("--controlplane-runs", type=int, default=common.MIN_RUNS, metavar="N",
                   help=f"timed runs of each list command (default {common.MIN_RUNS})")
    g.add_argument("--controlplane-scrapes", type=int, default=10, metavar="N",
                   help="timed GETs of /metrics (default 10)")
    g.add_argument("--controlplane-table-size", type=int, default=1 << 21, metavar="N",
                   help="max_entries of each ctbpf table (default 2097152)")
    g.add_argument("--controlplane-timeout", type=float, default=90.0, metavar="SECONDS",
                   help="longest any one command may take before it is killed (default 90)")
    g.add_argument("--controlplane-no-kernel", action="store_true",
                   help="skip the conntrack -L baseline (no namespaces, no sysctl change)")
    g.add_argument("--controlplane-no-metrics", action="store_true",
                   help="skip the /metrics scrape")


# --------------------------------------------------------------------------
# the flows both tables hold


def _plan(n: int, count: int | None = None) -> kerneltable.Plan:
    return kerneltable.Plan(4, kerneltable.UDP, n, count=count)


def _clients(n: int) -> int:
    return _plan(n).clients


def _client_addr(t: int) -> tuple[int, int, int, int]:
    """Client t (0-based): 10.200.1.1, 10.200.1.2, ... 10.200.1.250, 10.200.2.1, ..."""
    return tuple(int(x) for x in _plan(1).client(t).split("."))


def _tuples(n: int):
    """The n flows, in trafgen's round-robin order: packet i comes from
    client i % T, source port 1 + i // T."""
    for addr, sport in _plan(n).tuples():
        yield tuple(int(x) for x in addr.split(".")), sport


# --------------------------------------------------------------------------
# processes


def _cpu_s(ru) -> float:
    return ru.ru_utime + ru.ru_stime


def timed_command(cmd: list[str], timeout: float, stderr=subprocess.DEVNULL) -> dict:
    """Run cmd with stdout to /dev/null; wall time from fork to exit and the
    child's CPU (wait4). Killed, and RuntimeError, past timeout."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    finally:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit status {p.returncode}"
                           f"{' (killed after %gs)' % timeout if p.returncode < 0 else ''}")
    return {"wall": wall, "cpu": _cpu_s(ru)}


def _ctbpf_cmd() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "ctbpf"
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-c", "import sys; from ctbpf.main import main; sys.exit(main())"]


# --------------------------------------------------------------------------
# ctbpf side: the real datapath's maps in a private pin dir


class CtbpfTable:
    """The real datapath's maps in a private pin dir, holding the first
    entries of the n flows of _tuples(n); fill() adds more of them."""

    def __init__(self, n: int, table_size: int, tag: str) -> None:
        self.n = n
        self.table_size = table_size
        self.pin_dir = BPFFS / f"ctbpf-bench-cp-{tag}"
        self.filled = 0
        self.records: tuple[bytearray, bytearray] | None = None

    def setup(self) -> dict:
        t0 = time.perf_counter()
        # each table table_size entries, as before max became both
        # tables' total: ct_assured at its full size, not grown on the way
        dp = Datapath(self.pin_dir, max_entries=2 * self.table_size, new_max=self.table_size,
                       assured=self.table_size).load()
        dp.close()   # detaches nothing (nothing attached); the maps stay pinned
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.records = self._records()
        return {"load_s": round(load_s, 3), "build_s": round(time.perf_counter() - t0, 3)}

    def fill(self, upto: int) -> float:
        """Add flows up to the first `upto`; returns the seconds it took."""
        t0 = time.perf_counter()
        if upto > self.filled:
            self._update("ct_new", *self.records, self.filled, upto - self.filled)
            self.filled = upto
        took = time.perf_counter() - t0
        present = self.present()
        if present != upto:
            raise RuntimeError(f"ctbpf tables hold {present} entries after the fill, not {upto}")
        return round(took, 3)

    def _records(self) -> tuple[bytearray, bytearray]:
        n = self.n
        ksize, esize = ctypes.sizeof(abi.CtKey), ctypes.sizeof(abi.CtEntry)
        if ksize % 4 or esize % 8:
            raise RuntimeError("unexpected ct_key/ct_entry layout")
        # The key as bpf/flow.h builds it: each address's wire bytes read as
        # host-order u32 words; the smaller (address, port) is the lo side.
        # The server's words are below every client's, so the opener (the
        # client) is the hi side: CT_F_ORIG_IS_HI.
        def word(a):
            return int.from_bytes(bytes(a), "little")

        def port(p):
            return int.from_bytes(p.to_bytes(2, "big"), "little")

        server = word(SERVER)
        if any(word(_client_addr(t)) <= server for t in range(_clients(n))):
            raise RuntimeError("client address below the server's: the key order assumption fails")
        cl_words, cl_ports = array("I"), array("H")
        for addr, sport in _tuples(n):
            cl_words.append(word(addr))
            cl_ports.append(port(sport))
        keys = bytearray(ksize * n)
        k32 = memoryview(keys).cast("I")
        k16 = memoryview(keys).cast("H")
        k32[abi.CtKey.addr_lo.offset // 4::ksize // 4] = array("I", [server]) * n
        k32[abi.CtKey.addr_hi.offset // 4::ksize // 4] = cl_words
        k16[abi.CtKey.port_lo.offset // 2::ksize // 2] = array("H", [port(SERVER_PORT)]) * n
        k16[abi.CtKey.port_hi.offset // 2::ksize // 2] = cl_ports
        raw = memoryview(keys)
        raw[abi.CtKey.proto.offset::ksize] = bytes([17]) * n
        raw[abi.CtKey.family.offset::ksize] = bytes([abi.const("CT_FAMILY_IPV4")]) * n

        values = bytearray(esize * n)
        q = memoryview(values).cast("I")
        now = time.monotonic_ns()
        q[abi.CtEntry.expires.offset // 4::esize // 4] = array("I", [abi.ticks(now + LIVE_FOR_NS)]) * n
        q[abi.CtEntry.created.offset // 4::esize // 4] = array("I", [abi.ticks(now - NS)]) * n
        memoryview(values)[abi.CtEntry.flags.offset::esize] = (
            bytes([abi.const("CT_F_ORIG_IS_HI")]) * n)
        return keys, values

    def _update(self, name: str, keys: bytearray, values: bytearray, first: int,
                count: int) -> None:
        ksize, esize = len(keys) // self.n, len(values) // self.n
        fd = bpfsys.obj_get(str(self.pin_dir / name))
        try:
            kbuf = (ctypes.c_char * len(keys)).from_buffer(keys)
            vbuf = (ctypes.c_char * len(values)).from_buffer(values)
            done = bpfsys.update_batch(fd, ctypes.addressof(kbuf) + first * ksize,
                                       ctypes.addressof(vbuf) + first * esize, count)
        finally:
            os.close(fd)
        if done != count:
            raise RuntimeError(f"{name}: the batch update stopped at {done} of {count}")

    def present(self) -> int:
        return sum(table.read_raw(self.pin_dir, t)[2] for t in table.TABLES)

    def list_cmd(self, output: str = "json") -> list[str]:
        return [*_ctbpf_cmd(), "list", "--pin-dir", str(self.pin_dir), "-o", output]

    def close(self) -> None:
        remove_pins(self.pin_dir)


# --------------------------------------------------------------------------
# kernel side: nf_conntrack in a private namespace, filled by trafgen


def _kernel_fill(kernel: kerneltable.KernelTable, limits: kerneltable.Limits, n: int,
                 count: int) -> dict:
    """The first `count` of the n flows, made by trafgen; nf_conntrack_max
    (global, read-only inside a namespace) raised for the run if it is
    below them."""
    before = limits.read()
    now = limits.at_least(count + 1024)
    kernel.setup()
    info = kernel.fill(unreplied=(_plan(n, count),), check_assured=False)
    return {"nf_conntrack_max_before": before["max"],
            **({"nf_conntrack_max_raised_to": now["max"]} if now["max"] != before["max"]
               else {}),
            "nf_conntrack_buckets": now["buckets"], "fill_s": info["fill_s"],
            "fill_passes": info["passes"]}


# --------------------------------------------------------------------------
# the exporter: `ctbpf run --metrics-addr` in a namespace of its own


_SCRAPER = r"""
import http.client, json, re, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
out = []
for i in range(count):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    r = c.getresponse()
    body = r.read()
    dt = time.perf_counter() - t0
    c.close()
    entries = sum(float(v) for v in re.findall(rb'^ctbpf_entries\{[^}]*\} (\S+)$', body, re.M))
    out.append({"s": dt, "status": r.status, "bytes": len(body), "entries": entries})
print(json.dumps(out))
"""


class Exporter:
    def __init__(self, pin_dir: Path, table_size: int, tag: str, timeout: float) -> None:
        self.pin_dir = pin_dir
        self.table_size = table_size
        self.ns = f"ctbcp-m-{tag}"
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(f"/tmp/ctbench-cp-{self.ns}.log")
        self.made = False

    def start(self) -> dict:
        kerneltable.run_cmd(["ip", "netns", "add", self.ns])
        self.made = True
        kerneltable.run_cmd(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        kerneltable.run_cmd(["ip", "-n", self.ns, "link", "add", "cbm0", "type", "veth", "peer",
                             "name", "cbm1"])
        for ifname in ("cbm0", "cbm1"):
            kerneltable.run_cmd(["ip", "-n", self.ns, "link", "set", ifname, "up"])
        t0 = time.perf_counter()
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *_ctbpf_cmd(), "run", "--iface", "cbm0",
             "--xdp-mode", "generic", "--pin-dir", str(self.pin_dir),
             # the sizes CtbpfTable made the maps with: adopted as they are
             "--max", str(2 * self.table_size), "--new-max", str(self.table_size),
             "--metrics-addr", f"127.0.0.1:{METRICS_PORT}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.timeout
        while "ctbpf: tracking on" not in self.log_path.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ctbpf run exited {self.proc.returncode}: "
                                   f"{self.log_path.read_text().strip()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ctbpf run not tracking after {self.timeout:g} s")
            time.sleep(0.1)
        return {"start_s": round(time.perf_counter() - t0, 3)}

    def scrape(self, count: int) -> list[dict]:
        r = kerneltable.run_cmd(["ip", "netns", "exec", self.ns, sys.executable, "-c", _SCRAPER,
                  str(METRICS_PORT), str(count)], timeout=self.timeout)
        return json.loads(r.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self.made:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
            self.made = False
            try:   # the daemon's status directory (ctbpf/agent/runstatus.py run_dir), left empty
                Path("/run/ctbpf", self.ns).rmdir()
            except OSError:
                pass
        self.log_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# the benchmark


def run(args) -> dict:
    n, runs = args.controlplane_entries, max(1, args.controlplane_runs)
    list_n = min(args.controlplane_list_entries or n, n)
    if not 1 <= n <= 250 * 250 * PORTS_PER_CLIENT or n > args.controlplane_table_size:
        raise ValueError(f"--controlplane-entries {n}: out of range (at most the table size)")
    tag = secrets.token_hex(3)
    timeout = args.controlplane_timeout
    ours = CtbpfTable(n, args.controlplane_table_size, tag)
    kernel = (None if args.controlplane_no_kernel
              else kerneltable.KernelTable(tag, timeout, prefix="ctbcp"))
    limits = kerneltable.Limits()
    exporter = None
    setup: dict = {}
    figures: dict = {}
    try:
        setup["ctbpf"] = ours.setup()
        small_n = max(1, list_n // 10)
        print(f"  filling the ctbpf table with {small_n} flows: peak RSS of ctbpf list",
              flush=True)
        ours.fill(small_n)
        small_rss = listbench.rss_at(ours.list_cmd, min(runs, 3), timeout)
        print(f"  filling the ctbpf table with {list_n} flows", flush=True)
        setup["ctbpf"]["fill_list_s"] = ours.fill(list_n)
        if kernel is not None:
            print(f"  filling nf_conntrack with {list_n} flows (trafgen)", flush=True)
            setup["kernel"] = _kernel_fill(kernel, limits, n, list_n)
        figures["list"] = _list_figures(ours, kernel, list_n, runs, timeout)
        figures["list"]["rss"] = {"small_entries": small_n, "small_mb": small_rss}
        print("  ctbpf top refresh", flush=True)
        figures["top"] = {"entries": list_n, "refresh_s": listbench.top_refresh(ours.pin_dir,
                                                                                max(runs, 5))}
        if kernel is not None:
            kernel.close()   # frees the conntrack entries before the scrape
            limits.restore()

        if not args.controlplane_no_metrics:
            print(f"  filling the ctbpf table up to {n} flows; ctbpf run --metrics-addr",
                  flush=True)
            setup["ctbpf"]["fill_rest_s"] = ours.fill(n)
            exporter = Exporter(ours.pin_dir, args.controlplane_table_size, tag, timeout)
            setup["exporter"] = exporter.start()
            warm = exporter.scrape(1)   # the first scrape after start, on its own
            scrapes = exporter.scrape(max(1, args.controlplane_scrapes))
            bad = [s for s in warm + scrapes if s["status"] != 200 or s["entries"] != n]
            if bad:
                raise RuntimeError(f"a scrape did not report {n} entries: {bad[0]}")
            figures["scrape"] = {"entries": n, "first_s": round(warm[0]["s"], 4),
                                 "wall_s": common.spread([s["s"] for s in scrapes]),
                                 "runs_wall_s": [round(s["s"], 4) for s in scrapes],
                                 "bytes": scrapes[0]["bytes"],
                                 "phases_s": _scrape_phases(ours.pin_dir)}
    finally:
        if exporter is not None:
            exporter.stop()
        if kernel is not None:
            kernel.close()
        limits.restore()
        ours.close()

    return {"config": {"entries": n, "list_entries": list_n, "runs": runs,
                       "scrapes": args.controlplane_scrapes,
                       "table_size": args.controlplane_table_size,
                       "ctbpf_list": "ctbpf list --pin-dir DIR -o FORMAT | (drained)",
                       "kernel_list": "ip netns exec NS conntrack -L | (drained)"},
            "setup": setup, "figures": figures, "targets": _targets(figures),
            "plots": _plots(figures)}


def _list_figures(ours: CtbpfTable, kernel: kerneltable.KernelTable | None, count: int, runs: int,
                  timeout: float) -> dict:
    # one untimed run of each: every flow printed, caches warm
    shown = kerneltable.count_in_stream(ours.list_cmd("json"), b'"protonum"', timeout)
    if shown != count:
        raise RuntimeError(f"ctbpf list -o json printed {shown} flows, not {count}")
    if kernel is not None:
        shown = kerneltable.count_in_stream(kernel.list_cmd(), b"\n", timeout)
        if shown != count:
            raise RuntimeError(f"conntrack -L printed {shown} lines, not {count}")
    out = listbench.list_figures(ours.list_cmd, kernel.list_cmd() if kernel else None, runs,
                                 timeout)
    out["entries"] = count
    out["json"]["phases_s"] = _list_phases(ours.pin_dir)
    return out


def _scrape_phases(pin_dir: Path) -> dict:
    """Where a scrape spends its time: what ctbpf.datapath.occupancy does for the
    collector (batch reads of both tables, then the count), in this
    process, one run."""
    t0 = time.perf_counter()
    raw = [table.read_raw(pin_dir, name) for name in table.TABLES]
    t1 = time.perf_counter()
    now = time.monotonic_ns()
    for keys, values, count in raw:
        occupancy.count_raw(keys, values, count, now)
    t2 = time.perf_counter()
    return {"batch_read": round(t1 - t0, 3), "count": round(t2 - t1, 3)}


def _list_phases(pin_dir: Path) -> dict:
    """Where `ctbpf list -o json` spends its time: its steps in this process,
    one run, whole table (the command overlaps them chunk by chunk; the rest
    of its wall time is starting Python and writing)."""
    from ctbpf.datapath import listtext, tablestream  # noqa: PLC0415

    read = decode = text = 0.0
    size = 0
    t = time.perf_counter()
    for name, keys, entries, now in tablestream.read_chunks(pin_dir):
        t1 = time.perf_counter()
        chunk = tablestream.decode(keys, entries, now, name)
        t2 = time.perf_counter()
        size += len(listtext.json_lines(chunk))
        t3 = time.perf_counter()
        read, decode, text = read + t1 - t, decode + t2 - t1, text + t3 - t2
        t = time.perf_counter()
    return {"batch_read": round(read, 3), "decode": round(decode, 3), "json": round(text, 3),
            "json_bytes": size}


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else str(n))


def _targets(f: dict) -> list[dict]:
    rows = []
    lst = f.get("list", {})
    if "proc" in lst:
        rows += listbench.targets(lst, lst.get("rss"), f.get("top", {}).get("refresh_s"),
                                  _size(lst["entries"]))
    if "scrape" in f:
        s = f["scrape"]["wall_s"]
        rows.append(common.target_row(
            f"scrape /metrics at {_size(f['scrape']['entries'])} entries", "s", s,
            f"<= {TARGET_SCRAPE_S:g}", s["median"] <= TARGET_SCRAPE_S))
    return rows


def _plots(f: dict) -> list[str]:
    try:
        plots = []
        if "list" in f:
            size = _size(f["list"]["entries"])
            names = {"proc": "ctbpf list", "conntrack": "ctbpf list -o conntrack",
                     "json": "ctbpf list -o json", "conntrack -L": "conntrack -L"}
            groups = {f"list {size} entries": {names[k]: f["list"][k]["wall_s"]
                                               for k in names if k in f["list"]}}
            plots.append(common.plot_bars("controlplane-list", f"Listing {size} entries "
                                          "(median, min-max)", "seconds", groups))
        if "scrape" in f:
            size = _size(f["scrape"]["entries"])
            runs = f["scrape"]["runs_wall_s"]

            def point(v):
                return {"median": v, "min": v, "max": v}
            plots.append(common.plot_lines(
                "controlplane-scrape", f"GET /metrics at {size} entries, one after another",
                "scrape", "seconds",
                {"ctbpf run --metrics-addr": [(i + 1, point(v)) for i, v in enumerate(runs)],
                 f"target {TARGET_SCRAPE_S:g} s": [(1, point(TARGET_SCRAPE_S)),
                                                    (len(runs), point(TARGET_SCRAPE_S))]},
                logx=False))
        return plots
    except ImportError as e:   # matplotlib missing: the figures stand without plots
        print(f"  no plots: {e}", file=sys.stderr)
        return []


def summary(result: dict) -> str:
    c, f = result["config"], result["figures"]
    lines = [f"list at {c['list_entries']} entries ({c['runs']} runs), scrape at "
             f"{c['entries']} entries; median [min, max]"]
    if "proc" in f.get("list", {}):
        lines += listbench.summary_lines(f["list"], f["list"].get("rss"),
                                         f.get("top", {}).get("refresh_s"))
        ph = f["list"]["json"]["phases_s"]
        lines.append(f"  {'':<22} -o json in-process, one run: batch read {ph['batch_read']:.3f}"
                     f" s, decode {ph['decode']:.3f} s, JSON {ph['json']:.3f} s "
                     f"({ph['json_bytes'] / 1e6:.0f} MB)")
    if "scrape" in f:
        w = f["scrape"]["wall_s"]
        lines.append(f"  {'GET /metrics':<20} wall {w['median']:.3f} s [{w['min']:.3f}, "
                     f"{w['max']:.3f}] over {w['n']} scrapes (first {f['scrape']['first_s']:.3f}"
                     f" s, {f['scrape']['bytes']} bytes)")
        ph = f["scrape"].get("phases_s")
        if ph:
            lines.append(f"  {'':<20} in-process, one run: batch read of the tables "
                         f"{ph['batch_read']:.3f} s, count {ph['count']:.3f} s")
    lines += ["", common.table(result["targets"])]
    return "\n".join(lines)
