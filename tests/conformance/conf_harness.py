"""The conformance harness: the kernel's nf_conntrack and ctbpf side by side.

One lab (ctbpf.lab.netns.Lab: client -- router -- server) serves the whole run.
In the router namespace:

* the kernel tracks every packet: an nft table (``inet ctbpf_conf``) in the
  prerouting hook, after conntrack (priority -150), counts packets per
  ``ct state`` in named counters, so the kernel's verdict on each packet is a
  counter delta; the policy is accept, the table only observes;
* ctbpf tracks the same frames: ``ctbpf run --iface cli0 --iface srv0`` with
  its own pin directory, in observe mode; its maps are read from this
  process through the pins.

Packets are crafted with scapy and written to AF_PACKET sockets opened inside
the client and server namespaces (their eth0), so each one enters the router
exactly as a real frame. The endpoints' own stacks are silenced by an nft
input table that drops what they would answer (TCP, UDP, echo requests,
other protocols); real-socket scenarios lift it for their duration.
Neighbour entries are static everywhere, so no ARP/NDP runs during a
scenario; ICMPv6 neighbour discovery and MLD that still reach the router are
counted apart ("noise") and taken out of both sides' counts.

After every packet both tables are read and compared flow by flow
(presence, original direction, TCP state, [UNREPLIED], [ASSURED], remaining
timeout within TIMEOUT_SLACK seconds) together with the packet's user-land
state on each side.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ctbpf import abi, tunables
from ctbpf.datapath import bpfsys, configmap, loader, stats, table
from ctbpf.lab.netns import Lab, LabError

REPO = Path(__file__).resolve().parents[2]
BPFFS = Path("/sys/fs/bpf")
PIN_PREFIX = "ctbpf-conf-"

#: Seconds of slack when comparing remaining timeouts.
TIMEOUT_SLACK = 2
#: Seconds to wait for one packet to be counted by both trackers.
PACKET_WAIT = 1.5
#: Seconds ctbpf may take to compile, load and attach.
READY_TIMEOUT = 30.0
#: Entries per ctbpf table (small: the suite never has more than a few flows).
MAX_ENTRIES = 4096

STATES = ("new", "established", "related", "invalid", "untracked")
NFT_TABLE = "ctbpf_conf"
SILENCE_TABLE = "ctbpf_conf_silence"

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """The lab or one of the trackers could not be set up or read."""


# --------------------------------------------------------------------------
# network namespaces from this process


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block with this thread inside the named network namespace.
    Sockets and files opened there stay bound to it after the block."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise HarnessError(f"setns({name}): {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover
                err = ctypes.get_errno()
                raise HarnessError(f"cannot return to our network namespace: {os.strerror(err)}")
    finally:
        os.close(home)


# --------------------------------------------------------------------------
# one normalised view of a flow, from either side


@dataclass(frozen=True)
class FlowView:
    key: tuple            # direction-free identity
    proto: int
    orig: str             # "src[:port] > dst[:port]" of the original direction
    state: str | None     # TCP state, None otherwise
    unreplied: bool
    assured: bool
    timeout: int

    def brief(self) -> str:
        flags = "".join(f" [{f}]" for f, on in (("UNREPLIED", self.unreplied),
                                                 ("ASSURED", self.assured)) if on)
        st = f" {self.state}" if self.state else ""
        return f"{_proto_name(self.proto)}{st} {self.orig}{flags} {self.timeout}s"


def _proto_name(p: int) -> str:
    return {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(p, f"proto{p}")


def _addr(a: str) -> str:
    return str(ipaddress.ip_address(a))


def _endpoint(addr: str, port) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def make_key(proto: int, src: str, dst: str, sport=None, dport=None, icmp_id=None,
             icmp_req=None) -> tuple:
    """Identity of a flow whichever direction it is written in. ICMP query
    flows keep their direction: requests with the same id from both ends
    are two flows (only a request opens one, so its sender is the original
    source on both sides)."""
    if icmp_id is not None:
        return (proto, ((src, -1), (dst, -1)), icmp_id, icmp_req)
    ends = tuple(sorted([(src, sport if sport is not None else -1),
                         (dst, dport if dport is not None else -1)]))
    return (proto, ends, icmp_id, icmp_req)


# ICMP reply type -> request type, both families (the kernel prints the
# request in the original tuple for flows a request opened).
_ICMP_REQ = {0: 8, 14: 13, 16: 15, 18: 17, 8: 8, 13: 13, 15: 15, 17: 17}
_ICMP6_REQ = {129: 128, 140: 139, 128: 128, 139: 139}


def parse_proc_line(line: str) -> FlowView | None:
    """One /proc/net/nf_conntrack line, or None for what we cannot read."""
    tok = line.split()
    if len(tok) < 6:
        return None
    proto = int(tok[3])
    timeout = int(tok[4])
    i = 5
    state = None
    if proto == 6:
        state = tok[5]
        i = 6
    orig: dict[str, str] = {}
    unreplied = assured = False
    seen_src = 0
    for t in tok[i:]:
        if t == "[UNREPLIED]":
            unreplied = True
            continue
        if t == "[ASSURED]":
            assured = True
            continue
        k, sep, v = t.partition("=")
        if not sep:
            continue
        if k == "src":
            seen_src += 1
        if seen_src == 1 and k not in orig:
            orig[k] = v
    if "src" not in orig:
        return None
    src, dst = _addr(orig["src"]), _addr(orig["dst"])
    if proto in (6, 17) and "sport" in orig:
        sp, dp = int(orig["sport"]), int(orig["dport"])
        key = make_key(proto, src, dst, sp, dp)
        text = f"{_endpoint(src, sp)} > {_endpoint(dst, dp)}"
    elif proto in (1, 58) and "id" in orig:
        req = (_ICMP_REQ if proto == 1 else _ICMP6_REQ).get(int(orig["type"]), int(orig["type"]))
        key = make_key(proto, src, dst, icmp_id=int(orig["id"]), icmp_req=req)
        text = f"{src} > {dst} type={orig['type']} id={orig['id']}"
    else:
        key = make_key(proto, src, dst)
        text = f"{src} > {dst}"
    return FlowView(key, proto, text, state, unreplied, assured, timeout)


def view_of_ctbpf(f: table.Flow) -> FlowView:
    o = f.orig
    if f.proto in (6, 17):
        key = make_key(f.proto, o.src, o.dst, o.sport, o.dport)
        text = f"{_endpoint(o.src, o.sport)} > {_endpoint(o.dst, o.dport)}"
    elif f.proto in (1, 58) and o.id is not None:
        key = make_key(f.proto, o.src, o.dst, icmp_id=o.id, icmp_req=o.type)
        text = f"{o.src} > {o.dst} type={o.type} id={o.id}"
    else:
        key = make_key(f.proto, o.src, o.dst)
        text = f"{o.src} > {o.dst}"
    return FlowView(key, f.proto, text, f.state, f.unreplied, f.assured, f.timeout)


def compare_tables(kernel: dict, ours: dict, slack: int = TIMEOUT_SLACK) -> list[tuple[str, str]]:
    """[(field, description)] of every difference between two tables."""
    diffs = []
    for key in sorted(set(kernel) | set(ours), key=repr):
        k, c = kernel.get(key), ours.get(key)
        if k is None or c is None:
            present = k or c
            who = "kernel only" if c is None else "ctbpf only"
            diffs.append(("presence", f"{who}: {present.brief()}"))
            continue
        what = k.orig
        if k.orig != c.orig:
            diffs.append(("direction", f"{what}: original direction kernel {k.orig}, "
                                       f"ctbpf {c.orig}"))
        if k.state != c.state:
            diffs.append(("state", f"{what}: state kernel {k.state}, ctbpf {c.state}"))
        if k.unreplied != c.unreplied:
            diffs.append(("unreplied", f"{what}: [UNREPLIED] kernel {k.unreplied}, "
                                       f"ctbpf {c.unreplied}"))
        if k.assured != c.assured:
            diffs.append(("assured", f"{what}: [ASSURED] kernel {k.assured}, ctbpf {c.assured}"))
        if abs(k.timeout - c.timeout) > slack:
            diffs.append(("timeout", f"{what}: timeout kernel {k.timeout}s, ctbpf {c.timeout}s"))
    return diffs


# --------------------------------------------------------------------------
# records of a scenario run


@dataclass
class Step:
    label: str
    kernel_verdict: str          # user-land state(s) of the packet(s), "-" when not seen
    ctbpf_verdict: str
    kernel_flows: dict
    ctbpf_flows: dict
    diffs: list[tuple[str, str]]

    def sides(self) -> str:
        def fmt(flows: dict) -> str:
            return "; ".join(f.brief() for f in sorted(flows.values(), key=lambda f: f.orig)) \
                or "(no flows)"
        return (f"kernel: {self.kernel_verdict} | {fmt(self.kernel_flows)} -- "
                f"ctbpf: {self.ctbpf_verdict} | {fmt(self.ctbpf_flows)}")


@dataclass
class Result:
    name: str
    steps: list[Step] = field(default_factory=list)
    kernel_totals: dict = field(default_factory=dict)
    ctbpf_totals: dict = field(default_factory=dict)
    total_diffs: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    outcome: str = "?"           # agree / differ / expected / changed / error

    def signature(self) -> set[tuple[int | str, str]]:
        """(step number, field) of every difference: what a documented
        expected difference is matched against. Per-state totals count only
        when no step already showed a verdict difference (they would repeat it)."""
        sig = {(n, f) for n, s in enumerate(self.steps, 1) for f, _ in s.diffs}
        if not any(f == "verdict" for _, f in sig):
            sig |= {("totals", f) for f, _ in self.total_diffs}
        return sig

    @property
    def agrees(self) -> bool:
        return self.error is None and not self.signature()

    def first_difference(self) -> str:
        if self.error:
            return f"error: {self.error}"
        for n, s in enumerate(self.steps, 1):
            if s.diffs:
                what = "; ".join(d for _, d in s.diffs)
                more = sum(1 for t in self.steps[n:] if t.diffs)
                tail = f" (+{more} later steps differ)" if more else ""
                return f"step {n} '{s.label}': {what} [{s.sides()}]{tail}"
        if self.total_diffs:
            return "per-state totals: " + "; ".join(d for _, d in self.total_diffs)
        return ""

    def report(self) -> str:
        lines = [f"scenario {self.name}: {len(self.steps)} steps"]
        for n, s in enumerate(self.steps, 1):
            mark = "!!" if s.diffs else "  "
            lines.append(f"{mark} {n:2d} {s.label}: {s.sides()}")
            for _, d in s.diffs:
                lines.append(f"        {d}")
        lines.append(f"   totals kernel {self.kernel_totals} ctbpf {self.ctbpf_totals}")
        for _, d in self.total_diffs:
            lines.append(f"!! totals: {d}")
        return "\n".join(lines)


#: Every scenario run in this process, by name (read by conftest's summary).
RESULTS: dict[str, Result] = {}
#: Scenario name -> "agree" / "differ" / "expected" / "changed" / "error".
OUTCOMES: dict[str, str] = {}


# --------------------------------------------------------------------------
# the lab with both trackers


def _nft_ruleset() -> str:
    counters = "\n".join(f"    counter {s} {{ }}" for s in (*STATES, "noise"))
    rules = "\n".join(f"        ct state {s} counter name {s} accept" for s in STATES)
    return f"""
table inet {NFT_TABLE} {{
{counters}
    chain pre {{
        type filter hook prerouting priority -150; policy accept;
        icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit,
                       nd-neighbor-advert, nd-redirect, mld-listener-query,
                       mld-listener-report, mld-listener-done, mld2-listener-report }} counter name noise accept
{rules}
    }}
}}
"""


SILENCE_RULESET = f"""
table inet {SILENCE_TABLE} {{
    chain in {{
        type filter hook input priority -300; policy accept;
        icmp type {{ echo-request, timestamp-request, info-request, address-mask-request }} drop
        icmpv6 type {{ echo-request, 139 }} drop
        meta l4proto {{ icmp, ipv6-icmp }} accept
        drop
    }}
}}
"""


class Harness:
    """The lab, the kernel's conntrack and a ctbpf tracker in the router."""

    def __init__(self) -> None:
        self.lab: Lab | None = None
        self.proc: subprocess.Popen | None = None
        # The owner's pid in the name lets a later run remove what a killed
        # run left pinned (see _remove_stale_pins).
        self.pin_dir = BPFFS / f"{PIN_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.socks: dict[str, socket.socket] = {}
        self.proc_ct = None
        self.silenced = False
        self.values = tunables.defaults()
        #: Callables whose dicts are merged into ctbpf_counters() (e.g. the
        #: policy verdicts test's ct_verdicts reads), so every delta a Run
        #: takes covers them too.
        self.extra_ctbpf_counters: list = []

    # -- set up and tear down ----------------------------------------------

    def start(self) -> "Harness":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _remove_stale_pins() -> None:
        """Unpin what conformance runs whose process is gone left behind."""
        for d in BPFFS.glob(f"{PIN_PREFIX}*"):
            try:
                pid = int(d.name[len(PIN_PREFIX):].split("-", 1)[0])
            except ValueError:
                continue
            try:
                os.kill(pid, 0)
                continue            # its owner still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            loader.remove_pins(d)

    def _start(self) -> None:
        self._remove_stale_pins()
        self.lab = lab = Lab()
        if not lab.warm_up():
            raise HarnessError(f"lab {lab.prefix}: client cannot ping the server")
        self.macs = {(ns, ifc): self._mac(ns, ifc) for ns, ifc in
                     (("client", "eth0"), ("server", "eth0"), ("router", "cli0"),
                      ("router", "srv0"))}
        self._static_neighbours()
        for ns in ("client", "server"):
            lab.exec(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.router_solicitations=0",
                          "net.ipv6.conf.eth0.router_solicitations=0",
                          "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.eth0.accept_ra=0",
                          "net.ipv4.ip_local_port_range=20000 29999"], check=True)
        lab.nft("router", _nft_ruleset())
        self.set_kernel_sysctls(self.values)
        self.silence(True)
        self._start_ctbpf()
        for ns in ("client", "server"):
            with in_netns(lab.ns(ns)):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(("eth0", 0))
            self.socks[ns] = s
        with in_netns(lab.router):
            self.proc_ct = open("/proc/self/net/nf_conntrack")
        self.flush()

    def _mac(self, ns: str, ifname: str) -> str:
        cp = self.lab.exec(ns, ["ip", "-j", "link", "show", "dev", ifname], check=True)
        return json.loads(cp.stdout)[0]["address"]

    def _static_neighbours(self) -> None:
        lab, m = self.lab, self.macs
        plan = {
            "client": [(lab.router_client_ip, m[("router", "cli0")]),
                       (lab.router_client_ip6, m[("router", "cli0")])],
            "server": [(lab.router_server_ip, m[("router", "srv0")]),
                       (lab.router_server_ip6, m[("router", "srv0")])],
        }
        for ns, entries in plan.items():
            for ip, mac in entries:
                lab.exec(ns, ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0",
                              "nud", "permanent"], check=True)
        # Link-local neighbours too: nothing needs neighbour discovery later.
        for ns, ifname, peer_ns, peer_if in (("client", "eth0", "router", "cli0"),
                                             ("router", "cli0", "client", "eth0"),
                                             ("server", "eth0", "router", "srv0"),
                                             ("router", "srv0", "server", "eth0")):
            lab.exec(ns, ["ip", "neigh", "replace", self._link_local(peer_ns, peer_if), "lladdr",
                          m[(peer_ns, peer_if)], "dev", ifname, "nud", "permanent"], check=True)
        for ip, mac, dev in ((lab.client_ip, m[("client", "eth0")], "cli0"),
                             (lab.client_ip6, m[("client", "eth0")], "cli0"),
                             (lab.server_ip, m[("server", "eth0")], "srv0"),
                             (lab.server_ip6, m[("server", "eth0")], "srv0")):
            lab.exec("router", ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev,
                                "nud", "permanent"], check=True)

    def _link_local(self, ns: str, ifname: str) -> str:
        cp = self.lab.exec(ns, ["ip", "-j", "-6", "addr", "show", "dev", ifname,
                                "scope", "link"], check=True)
        for link in json.loads(cp.stdout):
            for info in link.get("addr_info", []):
                if info.get("local"):
                    return info["local"]
        raise HarnessError(f"no link-local address on {ifname} in {ns}")

    def _start_ctbpf(self) -> None:
        argv = [sys.executable, "-m", "ctbpf", "run", "--iface", "cli0", "--iface", "srv0",
                "--pin-dir", str(self.pin_dir), "--max", str(MAX_ENTRIES)]
        self.proc = self.lab.popen("router", argv, env=Lab.traffic_env(), cwd=REPO)
        deadline = time.monotonic() + READY_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith("ctbpf: tracking on "):
            err = ""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
            raise HarnessError(f"ctbpf run did not become ready: {line.strip()!r} "
                               f"{err.strip()[-800:]}")

    def close(self) -> None:
        errors = []
        for s in self.socks.values():
            s.close()
        self.socks = {}
        if self.proc_ct is not None:
            self.proc_ct.close()
            self.proc_ct = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append("ctbpf run did not stop on SIGINT")
        if self.lab is not None:
            try:
                self.lab.close()   # kills what is left, deletes the namespaces
            except LabError as e:
                errors.append(str(e))
            self.lab = None
        loader.remove_pins(self.pin_dir)
        if self.pin_dir.exists():
            errors.append(f"pins left behind in {self.pin_dir}")
        if errors:
            raise HarnessError("; ".join(errors))

    # -- knobs -------------------------------------------------------------

    def set_kernel_sysctls(self, values: dict[str, int]) -> None:
        settings = []
        for name, v in values.items():
            path = Path(f"/proc/sys/net/netfilter/nf_conntrack_{name}")
            # tcp_timeout_syn_sent2 has no sysctl: the kernel's is fixed at 120 s.
            if path.exists():
                settings.append(f"net.netfilter.nf_conntrack_{name}={v}")
        self.lab.exec("router", ["sysctl", "-q", "-w", *settings], check=True)

    def set_tunables(self, **changes: int) -> None:
        """Set the same knobs on both sides (kernel sysctls and ct_config)."""
        values = dict(self.values, **changes)
        self.set_kernel_sysctls(values)
        configmap.write_config(self.pin_dir, values)

    def reset_tunables(self) -> None:
        self.set_tunables()

    def silence(self, on: bool) -> None:
        for ns in ("client", "server"):
            if on:
                self.lab.exec(ns, ["nft", "delete", "table", "inet", SILENCE_TABLE])
                self.lab.nft(ns, SILENCE_RULESET)
            else:
                self.lab.exec(ns, ["nft", "delete", "table", "inet", SILENCE_TABLE])
        self.silenced = on

    @contextlib.contextmanager
    def unsilenced(self):
        self.silence(False)
        try:
            yield
        finally:
            self.silence(True)

    # -- reading both sides ------------------------------------------------

    def kernel_counters(self) -> dict[str, int]:
        """The conformance table's counters by name; named counters of any
        other table in the router (a policy twin, say) as "TABLE:NAME", read
        in the same dump."""
        cp = self.lab.exec("router", ["nft", "-j", "list", "counters"], check=True)
        out = {}
        for item in json.loads(cp.stdout)["nftables"]:
            c = item.get("counter")
            if c:
                name = c["name"] if c.get("table") == NFT_TABLE else f"{c['table']}:{c['name']}"
                out[name] = int(c["packets"])
        return out

    def ctbpf_counters(self) -> dict[str, int]:
        raw = stats.read_counters(self.pin_dir)
        out = {name: raw[v] for v, name in abi.PKT_STATE_NAMES.items()}
        for v, name in abi.INVALID_REASON_NAMES.items():
            out[f"inv:{name}"] = raw[stats.BASE + v]
        for extra in self.extra_ctbpf_counters:
            out.update(extra())
        return out

    def kernel_flows(self) -> dict:
        self.proc_ct.seek(0)
        flows = {}
        for line in self.proc_ct.read().splitlines():
            v = parse_proc_line(line)
            if v is not None:
                flows[v.key] = v
        return flows

    def ctbpf_flows(self) -> dict:
        return {v.key: v for v in map(view_of_ctbpf, table.read_flows(self.pin_dir))}

    def flush(self) -> None:
        """Empty both tables."""
        self.lab.exec("router", ["conntrack", "-F"])
        for name in table.TABLES:
            fd = bpfsys.obj_get(str(self.pin_dir / name))
            try:
                info = bpfsys.map_info(fd)
                keys, _, count = bpfsys.lookup_batch(fd, table.KEY_SIZE, table.ENTRY_SIZE,
                                                     info.max_entries)
                if count:
                    bpfsys.delete_batch(fd, keys[:count * table.KEY_SIZE], table.KEY_SIZE)
            finally:
                os.close(fd)
        left_k, left_c = self.kernel_flows(), self.ctbpf_flows()
        if left_k or left_c:
            raise HarnessError(f"tables not empty after a flush: kernel {len(left_k)}, "
                               f"ctbpf {len(left_c)}")

    # -- sending -----------------------------------------------------------

    def send_frame(self, ns: str, frame: bytes) -> None:
        self.socks[ns].send(frame)


def verdict_of(delta: dict[str, int]) -> str:
    """'new', 'established+invalid', ... from a counter delta; '-' if none."""
    parts = []
    for s in STATES:
        n = delta.get(s, 0)
        if n > 0:
            parts.append(s if n == 1 else f"{n}x{s}")
    return "+".join(parts) or "-"


def diff_counts(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


class Run:
    """One scenario's run: send packets, compare after each, collect."""

    def __init__(self, h: Harness, name: str) -> None:
        self.h = h
        self.result = Result(name)
        self.k0 = h.kernel_counters()
        self.c0 = h.ctbpf_counters()
        self.k_last, self.c_last = dict(self.k0), dict(self.c0)
        self.noise_credit = 0
        self.untracked_seen = 0    # ctbpf UNTRACKED packets that were not noise

    def _settle(self, expect_k: int, expect_c: int,
                timeout: float = PACKET_WAIT) -> tuple[dict, dict]:
        """Wait (bounded) until the kernel has counted `expect_k` more
        packets and ctbpf `expect_c` more."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.h.ctbpf_counters()
            c_n = sum(c[s] for s in STATES) - sum(self.c_last[s] for s in STATES)
            if c_n >= expect_c or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        while True:
            k = self.h.kernel_counters()
            k_n = sum(k[s] for s in STATES) - sum(self.k_last[s] for s in STATES)
            if k_n >= expect_k or time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        # Final reads, ctbpf first: XDP counts a frame before PREROUTING does,
        # so whatever ctbpf has counted by now the kernel has counted too.
        c = self.h.ctbpf_counters()
        k = self.h.kernel_counters()
        return k, c

    def _denoise(self, kd: dict, cd: dict) -> None:
        """Take neighbour discovery / MLD (counted apart by the kernel as
        "noise", UNTRACKED for ctbpf) out of ctbpf's UNTRACKED count. A noise
        frame the kernel counted before ctbpf's read stays as credit for
        the next step."""
        avail = kd.get("noise", 0) + self.noise_credit
        used = min(cd["untracked"], avail)
        cd["untracked"] -= used
        self.noise_credit = avail - used

    def step(self, label: str, frames: Iterable[tuple[str, bytes]],
             expect_kernel: int | None = None) -> Step:
        """Send frames (ns, bytes) and compare both sides afterwards. ctbpf
        sees every frame; the kernel may count fewer packets (reassembly,
        or frames the IP layer drops before conntrack): `expect_kernel`."""
        frames = list(frames)
        for ns, frame in frames:
            self.h.send_frame(ns, frame)
        n = len(frames)
        return self.observe(label, n if expect_kernel is None else expect_kernel, n)

    def observe(self, label: str, expect_k: int = 0, expect_c: int | None = None,
                timeout: float = PACKET_WAIT) -> Step:
        k, c = self._settle(expect_k, expect_k if expect_c is None else expect_c, timeout)
        kd, cd = diff_counts(k, self.k_last), diff_counts(c, self.c_last)
        self.k_last, self.c_last = k, c
        self._denoise(kd, cd)
        self.untracked_seen += cd["untracked"]
        kv, cv = verdict_of(kd), verdict_of(cd)
        reasons = [name[4:] for name, n in cd.items() if name.startswith("inv:") and n > 0]
        if reasons:
            cv += f"({','.join(reasons)})"
        kf, cf = self.h.kernel_flows(), self.h.ctbpf_flows()
        diffs = []
        if verdict_of(kd) != verdict_of(cd):
            diffs.append(("verdict", f"packet state kernel {kv}, ctbpf {cv}"))
        diffs += compare_tables(kf, cf)
        st = Step(label, kv, cv, kf, cf, diffs)
        self.result.steps.append(st)
        return st

    def finish(self) -> Result:
        c = self.h.ctbpf_counters()
        k = self.h.kernel_counters()
        kd, cd = diff_counts(k, self.k0), diff_counts(c, self.c0)
        # Noise arriving after the last step is no packet of the scenario.
        cd["untracked"] = self.untracked_seen
        r = self.result
        r.kernel_totals = {s: kd.get(s, 0) for s in STATES if kd.get(s, 0)}
        r.ctbpf_totals = {s: cd.get(s, 0) for s in STATES if cd.get(s, 0)}
        for s in STATES:
            if kd.get(s, 0) != cd.get(s, 0):
                r.total_diffs.append((s, f"{s} packets kernel {kd.get(s, 0)}, ctbpf {cd.get(s, 0)}"))
        return r
