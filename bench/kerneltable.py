"""nf_conntrack filled with real flows in a private network namespace: the
kernel-side baseline of `bench memory` and `bench controlplane`.

Two namespaces joined by a veth pair. The receiving one (rx) has conntrack
on (an nftables `ct state` rule at prerouting) and sends nothing (its
output hook drops everything ahead of conntrack, so the RSTs and ICMP errors
its stack would answer with never reach the table); the sending one (tx)
runs trafgen, one frame per flow and pass. Flows are planned (Plan) so that
the same tuples can be written into ctbpf's maps too (Plan.keys).

Three kinds of flow, all real kernel states:

  unreplied  one UDP packet: [UNREPLIED], unassured
  syn        one TCP SYN: SYN_SENT [UNREPLIED], unassured
  stream     a UDP packet, its reply, and after more than two seconds the
             next packet: the kernel's UDP tracker sets ASSURED only on a
             flow still active two seconds after it was made and replied
             (nf_conntrack_proto_udp.c, stream_ts)

nf_conntrack_max and the bucket count are global (read-only inside a
namespace): Limits changes them for a run and puts back what it found.
"""

from __future__ import annotations

import json
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
CT_BUCKETS = Path("/proc/sys/net/netfilter/nf_conntrack_buckets")
HASHSIZE = Path("/sys/module/nf_conntrack/parameters/hashsize")
SLAB_DIR = Path("/sys/kernel/slab")
SLABINFO = Path("/proc/slabinfo")

SERVER4 = (10, 200, 0, 1)
SERVER6 = "fd00:c7b0::1"
SERVER_PORT = 9          # UDP discard
TCP_PORT = 80
PORTS_PER_CLIENT = 62500
STREAM_AFTER_S = 2.2     # the kernel's 2 s (stream_ts), plus room for jiffies
BUCKET_BYTES = 8         # struct hlist_nulls_head
PAGE_SIZE = resource.getpagesize()
PASSES = 3               # trafgen passes before a short fill is an error

UDP, TCP = 17, 6


# --------------------------------------------------------------------------
# the flows


@dataclass(frozen=True)
class Plan:
    """`n` flows of one family and protocol from clients to the server, in
    trafgen's round-robin order: flow i comes from client i % T, source port
    1 + i // T. Plans with different `net` have disjoint clients."""

    family: int          # 4 or 6
    proto: int           # UDP or TCP
    n: int
    net: int = 1
    count: int | None = None   # make only the first `count` flows (default all n)

    def __post_init__(self) -> None:
        if self.family not in (4, 6) or self.proto not in (UDP, TCP):
            raise ValueError(f"plan: family {self.family}, proto {self.proto}")
        if self.n < 1 or not 1 <= self.net <= 255 - (self.clients - 1) // 250:
            raise ValueError(f"plan: {self.n} flows from net {self.net} leave the address plan")
        if not 0 <= self.made <= self.n:
            raise ValueError(f"plan: {self.count} of {self.n} flows")

    @property
    def made(self) -> int:
        return self.n if self.count is None else self.count

    @property
    def clients(self) -> int:
        return -(-self.n // PORTS_PER_CLIENT)

    @property
    def ports(self) -> int:
        return min(self.n, PORTS_PER_CLIENT)

    @property
    def server(self) -> str:
        return ".".join(map(str, SERVER4)) if self.family == 4 else SERVER6

    @property
    def dport(self) -> int:
        return SERVER_PORT if self.proto == UDP else TCP_PORT

    def client(self, t: int) -> str:
        """Client t (0-based): 10.200.net.1 ... 10.200.net.250, 10.200.net+1.1, ...;
        IPv6 fd00:c7b0:0:net::t+1."""
        if self.family == 4:
            return f"10.200.{self.net + t // 250}.{1 + t % 250}"
        return f"fd00:c7b0:0:{self.net:x}::{t + 1:x}"

    def tuples(self, count: int | None = None):
        """(client, source port) of the first `count` flows (default all n)."""
        clients = self.clients
        for i in range(self.n if count is None else count):
            yield self.client(i % clients), 1 + i // clients

    def trafgen(self, mac: str, reply: bool = False) -> str:
        """trafgen's configuration: one frame per client, its port counting
        up each time the frame is sent. reply: the server's answer."""
        ip = "ipv4" if self.family == 4 else "ipv6"
        ttl = "ttl" if self.family == 4 else "hoplimit"
        lines = []
        for t in range(self.clients):
            c, s = self.client(t), self.server
            port = f"dinc(1, {self.ports})"
            if self.proto == UDP:
                l4 = (f"udp(sp={SERVER_PORT}, dp={port}, csum=0)" if reply
                      else f"udp(sp={port}, dp={SERVER_PORT}, csum=0)")
            elif reply:
                raise ValueError("a SYN plan has no reply")
            else:
                l4 = f"tcp(sp={port}, dp={TCP_PORT}, seq=1000, syn, win=64240, csum=0)"
            src, dst = (s, c) if reply else (c, s)
            lines.append(f"{{ eth(da={mac}, sa=02:00:00:00:00:01), "
                         f"{ip}(saddr={src}, daddr={dst}, {ttl}=64), {l4} }}")
        return "\n".join(lines) + "\n"

    def keys(self, key_of, count: int | None = None) -> np.ndarray:
        """(count, key size) uint8: the datapath's keys of the first `count`
        flows (default: those made). key_of(src, dst, proto, sport, dport) -> bytes is the
        datapath's own key builder (ctbpf.datapath.flowkey), called once per
        client; the source port is written where it lands in the key, found
        by building one key twice."""
        count = self.made if count is None else count
        base = np.array([np.frombuffer(key_of(self.client(t), self.server, self.proto, 0,
                                              self.dport), dtype=np.uint8)
                         for t in range(self.clients)])
        probe = np.frombuffer(key_of(self.client(0), self.server, self.proto, 0x0102,
                                     self.dport), dtype=np.uint8)
        at = np.flatnonzero(probe != base[0])
        if len(at) != 2 or at[1] != at[0] + 1 or tuple(probe[at]) != (1, 2):
            raise RuntimeError("the key does not hold the source port as two network-order "
                               "bytes: build keys one by one")
        i = np.arange(count, dtype=np.uint32)
        out = base[i % self.clients]
        port = (1 + i // self.clients).astype(">u2").view(np.uint8).reshape(-1, 2)
        out[:, at[0]:at[0] + 2] = port
        return np.ascontiguousarray(out)


# --------------------------------------------------------------------------
# processes


def run_cmd(cmd: list[str], timeout: float = 30.0, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r


def count_in_stream(cmd: list[str], needle: bytes, timeout: float) -> int:
    """How many times needle appears in cmd's stdout, read in chunks (a
    listing of a million flows need not sit in memory)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    count, tail = 0, b""
    try:
        while chunk := p.stdout.read(1 << 20):
            buf = tail + chunk
            count += buf.count(needle)
            # keep the bytes that could start a needle cut by the chunk edge
            tail = buf[-(len(needle) - 1):] if len(needle) > 1 else b""
            count -= tail.count(needle)
        p.wait()
    finally:
        timer.cancel()
        p.stdout.close()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit status {p.returncode}")
    return count


def count_lines(cmd: list[str], timeout: float) -> int:
    """Lines of cmd's stdout."""
    return count_in_stream(cmd, b"\n", timeout)


# --------------------------------------------------------------------------
# global limits


class Limits:
    """nf_conntrack_max and the bucket count, set for a run; restore() puts
    back what was found, unless someone else changed it meanwhile."""

    def __init__(self) -> None:
        self._restore: list[tuple[Path, Path, int, int]] = []   # (write, read, before, ours)

    @staticmethod
    def read() -> dict:
        return {"max": int(CT_MAX.read_text()), "buckets": int(CT_BUCKETS.read_text())}

    def _set(self, write: Path, read: Path, value: int) -> int:
        before = int(read.read_text())
        if before != value:
            write.write_text(f"{value}\n")
            # the kernel rounds the bucket count up to whole pages
            self._restore.append((write, read, before, int(read.read_text())))
        return int(read.read_text())

    def set(self, ct_max: int | None = None, buckets: int | None = None) -> dict:
        if buckets is not None:
            self._set(HASHSIZE, CT_BUCKETS, buckets)
        if ct_max is not None:
            self._set(CT_MAX, CT_MAX, ct_max)
        return self.read()

    def at_least(self, ct_max: int) -> dict:
        if int(CT_MAX.read_text()) < ct_max:
            self._set(CT_MAX, CT_MAX, ct_max)
        return self.read()

    def restore(self) -> None:
        while self._restore:
            write, read, before, ours = self._restore.pop()
            try:
                if int(read.read_text()) == ours:
                    write.write_text(f"{before}\n")
            except OSError:
                pass


# --------------------------------------------------------------------------
# the table


class KernelTable:
    """nf_conntrack of a private namespace, filled with planned flows."""

    def __init__(self, tag: str, timeout: float = 90.0, prefix: str = "ctbk") -> None:
        self.timeout = timeout
        self.tx_ns, self.rx_ns = f"{prefix}-tx-{tag}", f"{prefix}-rx-{tag}"
        self.tx_if, self.rx_if = f"{prefix}t{tag}"[:15], f"{prefix}r{tag}"[:15]
        self.made: list[str] = []
        self.cfg_paths: list[Path] = []
        self.mac = ""

    def setup(self) -> None:
        for tool in ("trafgen", "conntrack", "nft"):
            if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin", "/sbin")):
                raise RuntimeError(f"{tool} is missing: `bash scripts/setup.sh` installs it")
        for ns in (self.tx_ns, self.rx_ns):
            run_cmd(["ip", "netns", "add", ns])
            self.made.append(ns)
        run_cmd(["ip", "link", "add", self.tx_if, "netns", self.tx_ns, "type", "veth",
                 "peer", "name", self.rx_if, "netns", self.rx_ns])
        rx = ["ip", "netns", "exec", self.rx_ns]
        # the rx stack never answers: no address resolution, no DAD to wait for
        run_cmd([*rx, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                 "net.ipv6.conf.default.accept_dad=0"])
        for ns, ifname in ((self.tx_ns, self.tx_if), (self.rx_ns, self.rx_if)):
            run_cmd(["ip", "-n", ns, "link", "set", ifname, "up"])
        run_cmd(["ip", "-n", self.rx_ns, "link", "set", "lo", "up"])
        run_cmd(["ip", "-n", self.rx_ns, "addr", "add", ".".join(map(str, SERVER4)) + "/16",
                 "dev", self.rx_if])
        run_cmd(["ip", "-n", self.rx_ns, "addr", "add", SERVER6 + "/48", "dev", self.rx_if,
                 "nodad"])
        # conntrack is on in a namespace once a rule needs it; the output
        # chain runs ahead of conntrack (priority raw - 100), so the stack's
        # RSTs and ICMP errors neither leave nor change an entry
        run_cmd([*rx, "nft", "-f", "-"], input=(
            "table inet ctbench {\n"
            " chain pre { type filter hook prerouting priority 0; ct state new counter; }\n"
            " chain out { type filter hook output priority -400; policy drop; }\n"
            "}\n"))
        run_cmd([*rx, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600",
                 "net.netfilter.nf_conntrack_udp_timeout_stream=3600",
                 "net.netfilter.nf_conntrack_tcp_timeout_syn_sent=3600",
                 # a SYN is data not yet acknowledged: without this its
                 # entry lives 300 s, not syn_sent's
                 "net.netfilter.nf_conntrack_tcp_timeout_unacknowledged=3600",
                 "net.netfilter.nf_conntrack_checksum=0", "net.ipv4.conf.all.rp_filter=0",
                 f"net.ipv4.conf.{self.rx_if}.rp_filter=0"])
        self.mac = json.loads(run_cmd(["ip", "-n", self.rx_ns, "-j", "link", "show",
                                       self.rx_if]).stdout)[0]["address"]

    def send(self, plan: Plan, count: int, reply: bool = False) -> None:
        """One trafgen pass: a frame for each of the first `count` flows."""
        path = Path(f"/tmp/ctbench-{self.rx_ns}.trafgen")
        if path not in self.cfg_paths:
            self.cfg_paths.append(path)
        path.write_text(plan.trafgen(self.mac, reply))
        run_cmd(["ip", "netns", "exec", self.tx_ns, "trafgen", "-i", str(path), "-o",
                 self.tx_if, "-n", str(count), "-P", "1", "-q"], timeout=self.timeout)

    def fill(self, unreplied: tuple[Plan, ...] = (), syn: tuple[Plan, ...] = (),
             streams: tuple[Plan, ...] = (), check_assured: bool = True) -> dict:
        """Make the flows of the plans (each plan's `made`). Frames a full
        backlog dropped are sent again: PASSES passes at most."""
        want = sum(p.made for p in (*unreplied, *syn, *streams))
        start = self.count()
        t0 = time.perf_counter()
        for passes in range(1, PASSES + 1):
            for p in (*unreplied, *syn, *streams):
                self.send(p, p.made)
            for p in streams:
                self.send(p, p.made, reply=True)
            made = self.count() - start
            if made >= want:
                break
        info = {"made_s": round(time.perf_counter() - t0, 3), "passes": passes}
        if made != want:
            raise RuntimeError(f"nf_conntrack holds {made} new entries after {passes} trafgen "
                               f"passes, not {want} (nf_conntrack_max {CT_MAX.read_text().strip()}"
                               f"; {self.stats()})")
        if streams:
            time.sleep(STREAM_AFTER_S)
            for passes in range(1, PASSES + 1):
                for p in streams:
                    self.send(p, p.made)
                if not check_assured:
                    break
                if self.count_assured() >= sum(p.made for p in streams):
                    break
            info["assured_passes"] = passes
        if check_assured:
            info["assured"] = self.count_assured()
            info["unassured"] = self.count() - start - info["assured"]
            if info["assured"] != sum(p.made for p in streams):
                raise RuntimeError(f"{info['assured']} ASSURED entries, not "
                                   f"{sum(p.made for p in streams)}")
        info["fill_s"] = round(time.perf_counter() - t0, 3)
        if self.count() - start != want:
            raise RuntimeError(f"nf_conntrack lost entries: {self.count() - start} of {want}")
        return info

    def count(self) -> int:
        r = run_cmd(["ip", "netns", "exec", self.rx_ns, "sysctl", "-n",
                     "net.netfilter.nf_conntrack_count"])
        return int(r.stdout)

    def stats(self) -> str:
        """`conntrack -S` summed over CPUs: the counters that explain a
        short fill (drop, early_drop, insert_failed, ...)."""
        r = subprocess.run(["ip", "netns", "exec", self.rx_ns, "conntrack", "-S"],
                           capture_output=True, text=True, timeout=self.timeout)
        sums: dict[str, int] = {}
        for word in r.stdout.split():
            k, eq, v = word.partition("=")
            if eq and v.isdigit() and k != "cpu":
                sums[k] = sums.get(k, 0) + int(v)
        return ", ".join(f"{k} {v}" for k, v in sums.items() if v) or "no counter moved"

    def count_status(self, status: str) -> int:
        return count_lines(["ip", "netns", "exec", self.rx_ns, "conntrack", "-L", "-u", status],
                           self.timeout)

    def count_assured(self) -> int:
        return self.count_status("ASSURED")

    def flush(self) -> None:
        run_cmd(["ip", "netns", "exec", self.rx_ns, "conntrack", "-F"], timeout=self.timeout)

    def list_cmd(self, output: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", self.rx_ns, "conntrack", "-L",
                *(["-o", output] if output else [])]

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()
        for path in self.cfg_paths:
            path.unlink(missing_ok=True)
        self.cfg_paths.clear()


# --------------------------------------------------------------------------
# what the kernel spends


def _first_int(text: str) -> int:
    return int(text.split()[0])     # sysfs slab files: "48 N0=48"


def parse_slabinfo(text: str) -> dict[str, dict]:
    """/proc/slabinfo: {cache: {active, objects, objsize, per_slab, pages_per_slab, slabs}}."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 16 or line.startswith("#") or not f[1].isdigit():
            continue
        out[f[0]] = {"active": int(f[1]), "objects": int(f[2]), "objsize": int(f[3]),
                     "per_slab": int(f[4]), "pages_per_slab": int(f[5]), "slabs": int(f[14])}
    return out


def slab_snapshot(cache: str = "nf_conntrack") -> dict:
    """The conntrack cache as SLUB's sysfs shows it, and all of /proc/slabinfo."""
    d = SLAB_DIR / cache
    if not d.exists():
        raise RuntimeError(f"no slab cache {cache} (is nf_conntrack in this kernel?)")
    sysfs = {name: _first_int((d / name).read_text())
             for name in ("objects", "total_objects", "slabs", "order", "slab_size",
                          "object_size")}
    return {"sysfs": sysfs, "slabinfo": parse_slabinfo(SLABINFO.read_text())}


def kernel_cost(before: dict, after: dict, entries: int, buckets: int,
                cache: str = "nf_conntrack") -> dict:
    """What `entries` conntrack entries cost the kernel, with two slab
    snapshots taken around their making.

    Each entry is one object of the nf_conntrack cache, `slab_size` bytes
    (the object and its alignment): entries x slab_size. The in-use objects
    the cache gained (sysfs `objects`, and /proc/slabinfo active objects x
    objsize) cross-check it; they are not the figure, because other
    namespaces' conntrack and the slab's per-CPU caches move them too.
    Extensions (accounting, timestamps, events, NAT, ...) are a separate
    kmalloc per entry when any is on: a kmalloc-* cache that grew by at
    least 90% of `entries` objects is counted as that; smaller moves are
    other work on the machine and are only reported. The buckets are 8
    bytes each, used or not."""
    if not entries:
        raise ValueError("no entries to divide by")
    sb, sa = before["sysfs"], after["sysfs"]
    ib, ia = before["slabinfo"].get(cache), after["slabinfo"].get(cache)
    slab_size = sa["slab_size"]
    out = {"flows": entries, "slab_size": slab_size, "object_size": sa["object_size"],
           "slab_bytes": entries * slab_size,
           "objects_delta": sa["objects"] - sb["objects"],
           "slab_pages_delta_bytes": (sa["slabs"] - sb["slabs"]) * (PAGE_SIZE << sa["order"])}
    out["objects_delta_per_entry"] = round(out["objects_delta"] / entries, 4)
    if ib and ia:
        if ia["objsize"] != slab_size:
            raise RuntimeError(f"{cache}: slabinfo objsize {ia['objsize']} != sysfs slab_size "
                               f"{slab_size}")
        out["slabinfo_objects_delta"] = ia["active"] - ib["active"]
    ext, moved = 0, {}
    for name, a in after["slabinfo"].items():
        if not name.startswith("kmalloc-") or name not in before["slabinfo"]:
            continue
        grew = a["active"] - before["slabinfo"][name]["active"]
        if grew >= 0.9 * entries:
            ext += grew * a["objsize"]
        if abs(grew) * a["objsize"] >= 65536:
            moved[name] = grew
    out["extension_bytes"] = ext
    out["kmalloc_moved_objects"] = moved
    out["buckets"] = buckets
    out["bucket_bytes"] = BUCKET_BYTES * buckets
    out["total_bytes"] = out["slab_bytes"] + ext + out["bucket_bytes"]
    out["per_flow"] = out["total_bytes"] / entries
    return out


def wait_slab_back(level: int, slack: int, timeout: float = 30.0) -> int:
    """After a flush the objects go back to the slab (after an RCU grace
    period): wait until at most level + slack are in use, so that the next
    fill's delta is its own."""
    deadline = time.monotonic() + timeout
    while True:
        now = _first_int((SLAB_DIR / "nf_conntrack" / "objects").read_text())
        if now <= level + slack or time.monotonic() > deadline:
            return now
        time.sleep(0.2)

