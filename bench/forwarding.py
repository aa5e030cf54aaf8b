"""Forwarding through the lab router: no tracking, nf_conntrack, ctbpf.

trafgen (netsniff-ng) in the client namespace sends 64-byte UDP and TCP
frames to the server through the lab's router; the figure is the router's
forwarded packets per second (the server veth's rx counter) in a steady
window of each run. See NOTES for the method and the configurations.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MIN_RUNS, ROOT, add_generator_cells, plot_bars, spread, target_row

HELP = "pps forwarded by the lab router: no tracking vs nf_conntrack vs ctbpf (trafgen, 64 B)"

NOTES = """\
**What is measured.** Packets per second forwarded by the lab's router
namespace (client -- router -- server, veth pairs), for 64-byte frames
(Ethernet + IPv4 + UDP or TCP + payload, 64 bytes as written by trafgen,
no FCS) sent by `trafgen -P 1` in the client namespace to the server's
address. The figure is the growth of the server veth's `rx_packets` over a
steady window (after a short ramp) of each run, divided by the window;
each run is bounded by `trafgen -n` and by `timeout`. Every figure is the
median of the runs (min and max in brackets); the three configurations
are interleaved run by run, so drift on the shared machine hits all alike.
Both end namespaces drop TCP and UDP at their netdev ingress hook (nftables,
no conntrack there), so neither end host answers with RST or ICMP and only
the router does work per packet.

**Where the CPU goes.** On veth, a frame sent by trafgen is received and
forwarded by the router in the softirq of the sending CPU: the generator
and the router share one CPU, nothing queues and nothing is dropped at
the router's input (`delivered` is close to 1 in the raw data). The pps
is therefore what one CPU does generating *and* forwarding, and the
ratio between configurations understates the ratio of the router's own
per-packet costs: trafgen's share is the same in all of them. The raw data
gives `tracking_ns_per_packet` = 1/pps(config) - 1/pps(no tracking), the
CPU time tracking adds to each packet, which is the cleaner comparison.

**Configurations** (the router namespace only):

- `none`: plain forwarding, no nftables ruleset in the router, so
  nf_conntrack is never hooked there.
- `nf_conntrack`: an `inet` forward chain `ct state established,related
  accept; ct state new accept; ct state invalid drop`.
- `ctbpf`: `ctbpf run --iface cli0 --iface srv0 --xdp-mode auto` (the
  product's default: generic XDP on veth), the sweeper and the event relay
  running as in production, no nftables ruleset (kernel tracking off).
- `xdp_pass` (the two target cells only, to keep the run short): an empty XDP
  program returning XDP_PASS, attached in the same mode as ctbpf (generic
  on veth) to the same two interfaces (`bench/traffic/xdp_pass.py`). It
  prices the XDP hook itself. (Native XDP on veth, which `auto` picked
  before these figures, costs more: veth turns every skb into an XDP
  buffer with 256 bytes of headroom, a copy for frames from a packet socket
  or the stack, and turns GSO/GRO off for the link.)

When the router's input ring is full with XDP attached, veth stops the
sender's queue and trafgen exits on EAGAIN; it is restarted at once
(`trafgen_restarts` in the raw data).

**Equal capacity.** `nf_conntrack_max` and `nf_conntrack_buckets` are
read-only inside a network namespace (they are the host's global values),
so the benchmark does not change them: it reads `nf_conntrack_max` in the
router namespace and starts ctbpf with `--max` set to it (ctbpf's `max` is
per table, as documented for `--max`).

**Flows.** 1 flow, 1,000 flows (source port counter), 100,000 flows (source
port over 3,125 values and destination port over 32, coprime counters so
that 100,000 consecutive packets are 100,000 distinct flows), and `new`:
every packet a new flow (random source address in 10.200.0.0/16 and random
source port). For the established cells the flows exist before the
timed part, and every run starts from an empty table (`conntrack -F`,
`ctbpf flush`):

- UDP: one packet per flow from the client, then one reply per flow from
  the server (trafgen in the server namespace): both trackers see the
  reply, the flows are ESTABLISHED.
- TCP: a real three-way handshake per flow (54-byte segments), SYN from the client, SYN/ACK
  from the server, ACK from the client (trafgen, one packet per flow each,
  consistent sequence numbers), so the kernel's tracker has ESTABLISHED,
  ASSURED flows with window state, not mid-stream pickups (which would be
  `ct state new` until a reply and would skip the handshake's validation).
  The timed packets are ACK+PSH segments with 10 bytes of data at the
  sequence number after the handshake, within the advertised window.
- `new`: UDP datagrams or TCP SYNs (54-byte frames, no options), each
  from a new source; nothing
  answers. The kernel's table and ctbpf's LRU table of unassured flows fill
  and evict (early drop) during the run, as they would under such a load.

**Why the targets are out of reach in observe mode, and what would
close them.** ctbpf today tracks at XDP and returns XDP_PASS: every packet
still goes up the kernel's forwarding path afterwards, so its cost is
*added* to plain forwarding and ctbpf can never forward more than `none`.
The best ratio any observe-mode tracker can reach is pps(none) /
pps(nf_conntrack), which the raw data shows is well below 1.5 (and far
below 2) here: the kernel's tracker costs less than half of what
forwarding itself costs per packet. On top of that, the XDP hook on veth
has a price of its own (`xdp_pass`, an empty program) comparable to the
whole of nf_conntrack's tracking. What would close the gap: (1) forwarding
established flows in XDP itself (bpf_fib_lookup + XDP_REDIRECT to the out
interface, the kernel stack skipped for tracked flows) and dropping what
enforce mode rejects at XDP, so that ctbpf *replaces* work instead of
adding to it; (2) measuring on NICs whose drivers run XDP before any skb
is built (no veth skb-to-XDP conversion), with the generator on another
machine so its CPU share does not compress the ratios. See
`tracking_ns_per_packet` for the per-packet costs.

**The generator cells** (bench/fwdlive.py, `--forwarding-senders`). The
timed packets come from bench/livegen.py (XDP frames, no skb per packet;
live frames are refused here with EPERM, so its XDP loop) in the client
namespace, with the same tuples, sequence and acknowledgement numbers as
trafgen's; the flows are made by trafgen exactly as above (sent with its
rate option, blocking sendto, since its TX ring exits on EAGAIN against a
native-XDP veth). Frames redirected into a veth arrive only where its peer
runs native XDP, so every configuration has native XDP on cli0 and srv0:
ctbpf with `--xdp-mode native`, and `none` / `nf_conntrack` with an empty
XDP_PASS program in native mode (bench/traffic/xdp_pass.py) - not GRO,
which would merge the TCP segments. The server's sink is a native XDP_DROP
program on its eth0 (bench/traffic/xdp_drop.py), which also lets the fast
path's native redirect into srv0 reach it (`pass_no_xmit` is in the raw
data, per run). CPUs: the generator's loop runs in CPU 0's softirq
(`--cpu 0`); cli0 and srv0 have threaded NAPI, their threads pinned to
CPU 1, where the router's work (and the server's XDP drop, scheduled
from it) runs. ctbpf runs with `--new-max` = max/2 (the default max/16
holds 16,384 unassured flows: 100,000 handshakes made in phases overflow
it) and `--keep-attached` between rounds, its maps kept, so that
ct_assured, grown once per variant at the first round (about 20 s), holds
the 100,000 flows. UDP windows open 2.3 s after the replies (a UDP flow is
ASSURED at its first packet 2 s after the reply). Figures: the server's rx
over the window; the generator's pps (frames the router took in) and the
frames it tried per second, and the delivered fraction, beside each.

**Targets.** ctbpf >= 1.5 x nf_conntrack's forwarded pps on established
flows (the TCP 100,000-flow cell; the other established cells are in the
raw data and the plot) and >= 2 x its new flows per second (the TCP SYN
`new` cell: every packet is a new flow, so forwarded pps = new flows/s).
"""

BPFFS = Path("/sys/fs/bpf")
FRAME = 64
CLIENT_ISN, SERVER_ISN = 1000, 5000
SPORT0, DPORT0 = 10000, 20000
NEW_NET = "10.200"
FLOW_SPECS = {          # name -> (number of flows, source ports, destination ports)
    "1": (1, 1, 1),
    "1k": (1000, 1000, 1),
    "100k": (100_000, 3125, 32),
    "new": (None, None, None),
}
CONFIGS = ("none", "nf_conntrack", "ctbpf", "xdp_pass")
XDP_PASS_CELLS = ("tcp/100k", "tcp/new")
XDP_PASS_MODE = "generic"  # what `--xdp-mode auto` gets on veth (ready_line in the result)
NFT_TRACK = """table inet ctbench {
 chain forward {
  type filter hook forward priority 0; policy accept;
  ct state established,related accept
  ct state new accept
  ct state invalid drop
 }
}
"""
NFT_SINK = """table netdev ctbench_sink {
 chain in {
  type filter hook ingress device eth0 priority 0; policy accept;
  ip protocol { tcp, udp } drop
 }
}
"""
RAMP_S = 0.25
READY_TIMEOUT = 30.0


def add_arguments(g) -> None:
    g.add_argument("--forwarding-runs", type=int, default=MIN_RUNS, metavar="N",
                   help=f"runs of every cell; the median is reported (default {MIN_RUNS})")
    g.add_argument("--forwarding-seconds", type=float, default=0.6, metavar="S",
                   help="timed window of one run (default 0.6; plus a 0.25 s ramp)")
    g.add_argument("--forwarding-flows", default="1,1k,100k,new", metavar="LIST",
                   help="flow cells among 1, 1k, 100k, new (default all)")
    g.add_argument("--forwarding-protos", default="udp,tcp", metavar="LIST",
                   help="udp, tcp or both (default both)")
    g.add_argument("--forwarding-configs", default=",".join(CONFIGS), metavar="LIST",
                   help=f"router configurations among {', '.join(CONFIGS)} (default all)")
    g.add_argument("--forwarding-max-packets", type=int, default=20_000_000, metavar="N",
                   help="trafgen -n bound of one run (default 20000000)")
    from bench import fwdlive  # noqa: PLC0415 - fwdlive imports this module

    fwdlive.add_arguments(g)


def _split(text: str, allowed) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"choose among {', '.join(allowed)}, not {text!r}")
    return items


# --------------------------------------------------------------------------
# trafgen configurations


def _tcp(flags: str, seq: int, ack: int) -> str:
    return f"seq={seq}, aseq={ack}, win=65535, {flags}"


def trafgen_conf(*, dmac: str, src: str, dst: str, proto: str, flows: str,
                 kind: str = "data", reverse: bool = False) -> str:
    """One trafgen packet with counters. kind: data (the timed packets),
    syn / synack / ack (the handshake), reply (UDP answer). reverse: sent by
    the server, ports swapped."""
    n, nsp, ndp = FLOW_SPECS[flows]
    if flows == "new":
        sa = f"sa={NEW_NET}.0.0, sa[2:2]=drnd()"
        ports = "sp=drnd(1024, 65535), dp=80"
    else:
        sp = f"dinc({SPORT0}, {SPORT0 + nsp - 1})" if nsp > 1 else str(SPORT0)
        dp = f"dinc({DPORT0}, {DPORT0 + ndp - 1})" if ndp > 1 else str(DPORT0)
        sa = f"sa={src}"
        ports = f"sp={dp}, dp={sp}" if reverse else f"sp={sp}, dp={dp}"
    l3 = f"eth(da={dmac}), ipv4({sa}, da={dst}, ttl=64, df)"
    if proto == "udp":
        head, hlen = f"udp({ports})", 8
    else:
        flags = {"data": _tcp("ack, psh", CLIENT_ISN + 1, SERVER_ISN + 1),
                 "syn": _tcp("syn", CLIENT_ISN, 0),
                 "synack": _tcp("syn, ack", SERVER_ISN, CLIENT_ISN + 1),
                 "ack": _tcp("ack", CLIENT_ISN + 1, SERVER_ISN + 1)}[kind]
        if flows == "new":
            flags = _tcp("syn", CLIENT_ISN, 0)
        head, hlen = f"tcp({ports}, {flags})", 20
    payload = FRAME - 14 - 20 - hlen
    if proto == "tcp" and (kind in ("syn", "synack", "ack") or flows == "new"):
        # no data on SYNs and the handshake: 54-byte frames
        return f"{{ {l3}, {head} }}\n"
    return f"{{ {l3}, {head}, fill(0x61, {payload}) }}\n"


# --------------------------------------------------------------------------
# the lab


class Router:
    """A lab, its sinks, and the router configuration of the moment."""

    def __init__(self, sinks: dict[str, str] | None = None, nft_track: str = NFT_TRACK,
                 tag: str = "fwd") -> None:
        from ctbpf.lab.netns import Lab  # noqa: PLC0415

        self.lab = Lab()
        self.tag = tag
        self.nft_track = nft_track
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ctbpf-bench-{tag}-"))
        self.pin_dir: Path | None = None
        self.tracker: subprocess.Popen | None = None
        self.config = "none"
        self.confs: dict[tuple, Path] = {}
        if not self.lab.warm_up():
            raise RuntimeError(f"lab {self.lab.prefix}: the client cannot ping the server")
        # Neither end host answers what it receives (no RST, no ICMP).
        for ns, ruleset in (sinks or {"client": NFT_SINK, "server": NFT_SINK}).items():
            self.lab.nft(ns, ruleset)
        self.mac_rc = self._mac("router", "cli0")
        self.mac_rs = self._mac("router", "srv0")
        self.nf_max = int(self._read("router", "/proc/sys/net/netfilter/nf_conntrack_max"))
        self.nf_buckets = int(self._read("router", "/proc/sys/net/netfilter/nf_conntrack_buckets"))

    # -- helpers -----------------------------------------------------------

    def _read(self, ns: str, path: str) -> str:
        cp = self.lab.exec(ns, ["cat", path], timeout=10)
        if cp.returncode != 0:
            raise RuntimeError(f"cat {path} in {ns}: {cp.stderr.strip()}")
        return cp.stdout.strip()

    def _mac(self, ns: str, iface: str) -> str:
        cp = self.lab.exec(ns, ["ip", "-j", "link", "show", "dev", iface], timeout=10)
        return json.loads(cp.stdout)[0]["address"]

    def counters(self) -> dict:
        """rx/tx packets and drops of the ends and the router's interfaces."""
        out = {}
        for ns, iface in (("client", "eth0"), ("router", "cli0"), ("router", "srv0"),
                          ("server", "eth0")):
            cp = self.lab.exec(ns, ["ip", "-j", "-s", "link", "show", "dev", iface], timeout=10)
            s = json.loads(cp.stdout)[0]["stats64"]
            out[f"{ns}.{iface}"] = {"rx": s["rx"]["packets"], "tx": s["tx"]["packets"],
                                    "rx_dropped": s["rx"]["dropped"],
                                    "tx_dropped": s["tx"]["dropped"]}
        return out

    def conf(self, proto: str, flows: str, kind: str = "data", reverse: bool = False) -> Path:
        key = (proto, flows, kind, reverse)
        if key not in self.confs:
            lab = self.lab
            text = trafgen_conf(
                dmac=self.mac_rs if reverse else self.mac_rc,
                src=lab.server_ip if reverse else lab.client_ip,
                dst=lab.client_ip if reverse else lab.server_ip,
                proto=proto, flows=flows, kind=kind, reverse=reverse)
            path = self.tmp / f"{proto}-{flows}-{kind}-{'r' if reverse else 'f'}.cfg"
            path.write_text(text)
            self.confs[key] = path
        return self.confs[key]

    def send(self, ns: str, conf: Path, count: int, timeout: float = 20.0) -> None:
        """trafgen exactly `count` packets (bounded by a timeout) and wait."""
        cp = self.lab.exec(ns, ["timeout", "-s", "INT", f"{timeout:g}", "trafgen", "-o", "eth0",
                                "-i", str(conf), "-n", str(count), "-P", "1", "-q"],
                           timeout=timeout + 10)
        if cp.returncode != 0:
            raise RuntimeError(f"trafgen in {ns} exited {cp.returncode}: "
                               f"{cp.stderr.strip()[-300:]}")

    # -- configurations ----------------------------------------------------

    def set_config(self, config: str) -> dict:
        self.clear_config()
        t0 = time.monotonic()
        if config == "nf_conntrack":
            self.lab.nft("router", self.nft_track)
        elif config == "ctbpf":
            self._start_ctbpf()
        elif config == "xdp_pass":
            self.tracker = self.lab.popen("router", [
                sys.executable, str(ROOT / "bench" / "traffic" / "xdp_pass.py"),
                "--iface", "cli0", "--iface", "srv0", "--mode", XDP_PASS_MODE,
                "--max-seconds", "600"], env=self.lab.traffic_env(), cwd=ROOT)
            self._wait_ready("xdp_pass: attached")
        self.config = config
        return {"setup_s": round(time.monotonic() - t0, 2)}

    def _start_ctbpf(self) -> None:
        self.pin_dir = BPFFS / f"ctbpf-bench-{self.tag}-{secrets.token_hex(4)}"
        argv = [sys.executable, "-m", "ctbpf", "run", "--iface", "cli0", "--iface", "srv0",
                "--pin-dir", str(self.pin_dir), "--max", str(self.nf_max),
                "--new-max", str(self.nf_max // 2),
                "--xdp-mode", "auto", "--metrics-addr", "none"]
        self.tracker = self.lab.popen("router", argv, env=self.lab.traffic_env(), cwd=ROOT)
        self._wait_ready("ctbpf: tracking on ")

    def _wait_ready(self, prefix: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.tracker.poll() is not None:
                err = ""
                if self.tracker.poll() is not None:
                    err = self.tracker.stderr.read()[-500:]
                raise RuntimeError(f"{prefix!r} never came: {err.strip()}")
            ready, _, _ = select.select([self.tracker.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.tracker.stdout.readline()
                if line.startswith(prefix):
                    self.ready_line = line.strip()
                    return
                if line:
                    raise RuntimeError(f"unexpected line {line.strip()!r} (wanted {prefix!r})")

    def clear_config(self) -> None:
        """Back to plain forwarding: tracker stopped and detached, pins and
        nft table removed, the kernel's table flushed."""
        if self.tracker is not None:
            proc, self.tracker = self.tracker, None
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            for iface in ("cli0", "srv0"):   # a killed tracker cannot detach itself
                self.lab.exec("router", ["ip", "link", "set", "dev", iface, "xdp", "off"],
                              timeout=10)
        if self.pin_dir is not None:
            from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

            remove_pins(self.pin_dir)
            self.pin_dir = None
        if self.config == "nf_conntrack":
            self.lab.exec("router", ["nft", "delete", "table", "inet", "ctbench"], timeout=10)
            self.flush()
        self.config = "none"

    def flush(self) -> None:
        if self.config == "nf_conntrack":
            self.lab.exec("router", ["conntrack", "-F"], timeout=30)
        if self.config == "ctbpf" and self.pin_dir is not None:
            from ctbpf.datapath import tableops  # noqa: PLC0415

            tableops.flush(self.pin_dir)

    def entries(self) -> int | None:
        if self.config == "nf_conntrack":
            return int(self._read("router", "/proc/sys/net/netfilter/nf_conntrack_count"))
        if self.config == "ctbpf":
            from ctbpf.datapath import stats  # noqa: PLC0415

            return stats.read(self.pin_dir)["entries"]["total"]
        return None

    def ctbpf_stats(self) -> dict | None:
        if self.config != "ctbpf":
            return None
        from ctbpf.datapath import stats  # noqa: PLC0415

        return stats.read(self.pin_dir)

    def close(self) -> None:
        try:
            self.clear_config()
        finally:
            try:
                self.lab.close()
            finally:
                for p in self.tmp.iterdir():
                    p.unlink()
                self.tmp.rmdir()


# --------------------------------------------------------------------------
# load


class Blaster:
    """trafgen at full speed from `ns` until stop(), bounded by `seconds` and
    by `max_packets` per trafgen process. trafgen exits when its TX ring
    flush fails with EAGAIN (veth with XDP on the peer stops its queue when
    the peer's ring is full); it is then started again at once, at most
    MAX_RESTARTS times, and the restarts are counted."""

    MAX_RESTARTS = 500

    def __init__(self, r: "Router", ns: str, conf: Path, max_packets: int, seconds: float):
        import threading  # noqa: PLC0415

        self.r, self.ns, self.conf = r, ns, conf
        self.max_packets, self.deadline = max_packets, time.monotonic() + seconds
        self.stopped = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.is_set() and self.restarts <= self.MAX_RESTARTS:
            left = self.deadline - time.monotonic()
            if left <= 0:
                break
            self.proc = self.r.lab.popen(self.ns, [
                "timeout", "-s", "INT", f"{left:.2f}", "trafgen", "-o", "eth0", "-i",
                str(self.conf), "-n", str(self.max_packets), "-P", "1", "-q"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, err = self.proc.communicate()
            if self.stopped.is_set():
                break
            self.restarts += 1
            if len(self.errors) < 3:
                self.errors.append(f"exit {self.proc.returncode}: {err.strip()[-200:]}")

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.stopped.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        self.thread.join(15)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# --------------------------------------------------------------------------
# one run


def prepare(r: Router, proto: str, flows: str) -> dict:
    """Empty the table, then make the cell's flows exist (see NOTES)."""
    r.flush()
    n = FLOW_SPECS[flows][0]
    if n is None or r.config == "none":
        return {"entries_before": r.entries()}
    if proto == "udp":
        r.send("client", r.conf(proto, flows), n)
        r.send("server", r.conf(proto, flows, reverse=True), n)
    else:
        r.send("client", r.conf(proto, flows, "syn"), n)
        r.send("server", r.conf(proto, flows, "synack", reverse=True), n)
        r.send("client", r.conf(proto, flows, "ack"), n)
    return {"entries_before": r.entries()}


def measure(r: Router, proto: str, flows: str, seconds: float, max_packets: int) -> dict:
    blaster = Blaster(r, "client", r.conf(proto, flows), max_packets, RAMP_S + seconds + 5)
    try:
        time.sleep(RAMP_S)
        c0, t0 = r.counters(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = r.counters(), time.monotonic()
        if not blaster.running:
            raise RuntimeError(f"trafgen stopped before the window closed: {blaster.errors}")
    finally:
        blaster.stop()
    dt = t1 - t0
    d = {k: {f: c1[k][f] - c0[k][f] for f in c0[k]} for k in c0}
    fwd = d["server.eth0"]["rx"]
    sent = d["client.eth0"]["tx"]
    return {"pps": fwd / dt, "forwarded": fwd, "sent": sent, "window_s": round(dt, 4),
            "delivered": round(fwd / sent, 4) if sent else None,
            "router_rx_dropped": d["router.cli0"]["rx_dropped"],
            "trafgen_restarts": blaster.restarts, "trafgen_errors": blaster.errors,
            "client_tx_dropped": d["client.eth0"]["tx_dropped"]}


# --------------------------------------------------------------------------
# the benchmark


def run(args) -> dict:
    """The trafgen cells, then the generator cells (bench/fwdlive.py), as
    --forwarding-senders says; one result holding both."""
    from bench import fwdlive  # noqa: PLC0415

    senders = _split(args.forwarding_senders, ("trafgen", "livegen"))
    if "livegen" in senders:   # its options checked before anything runs
        fwdlive.check_args(args)
    result = run_trafgen(args) if "trafgen" in senders else {
        "settings": {}, "targets": [], "plots": [], "notes": NOTES}
    if "livegen" in senders:
        print("  generator cells (bench/livegen.py, native XDP, threaded NAPI)", flush=True)
        add_generator_cells(result, fwdlive.run(args))
    result["settings"]["senders"] = senders
    return result


def run_trafgen(args) -> dict:
    flows_list = _split(args.forwarding_flows, FLOW_SPECS)
    protos = _split(args.forwarding_protos, ("udp", "tcp"))
    configs = _split(args.forwarding_configs, CONFIGS)
    runs = max(1, args.forwarding_runs)
    cells = [(p, f) for p in protos for f in flows_list]
    raw: dict[str, dict[str, list[dict]]] = {
        c: {f"{p}/{f}": [] for p, f in cells if c != "xdp_pass" or f"{p}/{f}" in XDP_PASS_CELLS}
        for c in configs}
    setups: dict[str, list] = {c: [] for c in configs}
    ctbpf_stats: list[dict] = []
    r = Router()
    info = {"lab": r.lab.prefix, "nf_conntrack_max": r.nf_max,
            "nf_conntrack_buckets": r.nf_buckets, "ctbpf_max": r.nf_max}
    try:
        for i in range(runs):
            for config in configs:
                setups[config].append(r.set_config(config))
                if config == "ctbpf":
                    info["ctbpf_ready_line"] = r.ready_line
                for proto, flows in cells:
                    if config == "xdp_pass" and f"{proto}/{flows}" not in XDP_PASS_CELLS:
                        continue   # the hook's price: the target cells only, to keep it short
                    pre = prepare(r, proto, flows)
                    m = measure(r, proto, flows, args.forwarding_seconds,
                                args.forwarding_max_packets)
                    m.update(pre)
                    m["entries_after"] = r.entries()
                    raw[config][f"{proto}/{flows}"].append(m)
                    print(f"  run {i + 1}/{runs} {config:12s} {proto}/{flows:5s} "
                          f"{m['pps']:>10,.0f} pps  delivered {m['delivered']}  "
                          f"entries {m['entries_before']}->{m['entries_after']}", flush=True)
                if config == "ctbpf":
                    ctbpf_stats.append(r.ctbpf_stats())
                r.clear_config()
    finally:
        r.close()
    return _result(args, info, configs, cells, raw, setups, ctbpf_stats)


def _result(args, info, configs, cells, raw, setups, ctbpf_stats) -> dict:
    pps = {c: {cell: spread([m["pps"] for m in ms], digits=0) for cell, ms in cs.items()}
           for c, cs in raw.items()}
    added_ns = {}
    if "none" in configs:
        for c in configs:
            if c == "none":
                continue
            added_ns[c] = {}
            for cell in pps[c]:
                if cell not in raw["none"]:
                    continue
                base = [m["pps"] for m in raw["none"][cell]]
                vals = [1e9 / m["pps"] - 1e9 / b for m, b in zip(raw[c][cell], base)]
                added_ns[c][cell] = spread(vals, digits=1)
    targets = []
    if {"ctbpf", "nf_conntrack"} <= set(configs):
        est = next((cell for cell in ("tcp/100k", "udp/100k", "tcp/1k", "udp/1k", "tcp/1",
                                      "udp/1") if cell in pps["ctbpf"]), None)
        if est:
            c, b = pps["ctbpf"][est], pps["nf_conntrack"][est]
            ratio = round(c["median"] / b["median"], 3)
            targets.append(target_row(
                f"forwarding, established flows ({est})", "packets/s", c, ">= 1.5 x nf_conntrack",
                ratio >= 1.5, baseline=b, baseline_name="nf_conntrack", ratio=ratio,
                note=_note(ratio, 1.5, pps, est)))
        new = next((cell for cell in ("tcp/new", "udp/new") if cell in pps["ctbpf"]), None)
        if new:
            c, b = pps["ctbpf"][new], pps["nf_conntrack"][new]
            ratio = round(c["median"] / b["median"], 3)
            targets.append(target_row(
                f"new flows per second ({new}, every packet a new flow)", "flows/s", c,
                ">= 2 x nf_conntrack", ratio >= 2.0, baseline=b, baseline_name="nf_conntrack",
                ratio=ratio, note=_note(ratio, 2.0, pps, new)))
    plots = []
    try:
        groups = {cell: {c: pps[c][cell] for c in configs if cell in pps[c]}
                  for cell in next(iter(pps.values()))}
        plots.append(plot_bars("forwarding-pps", "Forwarded packets/s through the lab router "
                               "(64 B, one CPU)", "packets/s", groups))
    except Exception as e:  # noqa: BLE001 - a missing plot must not lose the figures
        print(f"forwarding: plot failed: {e}", file=sys.stderr)
    return {"settings": {"runs": args.forwarding_runs, "seconds": args.forwarding_seconds,
                         "ramp_s": RAMP_S, "frame_bytes": FRAME, "cells": [f"{p}/{f}" for p, f
                                                                           in cells],
                         "configs": configs, "max_packets": args.forwarding_max_packets, **info},
            "pps": pps, "tracking_ns_per_packet": added_ns, "runs": raw,
            "config_setup": setups, "ctbpf_stats_end_of_round": ctbpf_stats,
            "targets": targets, "plots": plots, "notes": NOTES}


def _note(ratio: float, want: float, pps: dict, cell: str) -> str:
    if ratio >= want:
        return ""
    none = pps.get("none", {}).get(cell)
    nf = pps.get("nf_conntrack", {}).get(cell)
    ceiling = ""
    if none and nf and nf["median"]:
        ceiling = (f"; no observe-mode tracker can pass {none['median'] / nf['median']:.2f} x "
                   f"here (plain forwarding / nf_conntrack)")
    return (f"observe mode adds XDP work to the kernel's forwarding path, it does not replace "
            f"any{ceiling}; needs XDP forwarding of tracked flows (see NOTES)")


def summary(result: dict) -> str:
    from bench import fwdlive  # noqa: PLC0415
    from bench.common import table  # noqa: PLC0415

    parts = []
    if "pps" in result:
        parts.append(_summary_trafgen(result))
    if "live" in result:
        parts.append(fwdlive.summary(result["live"]))
    return "\n\n".join(parts) + "\n\n" + table(result["targets"])


def _summary_trafgen(result: dict) -> str:
    from bench.common import format_value  # noqa: PLC0415

    pps = result["pps"]
    configs = list(pps)
    cells = list(next(iter(pps.values())))
    lines = ["| cell | " + " | ".join(configs) + " |", "|---" * (len(configs) + 1) + "|"]
    for cell in cells:
        lines.append(f"| {cell} | " + " | ".join(format_value(pps[c].get(cell)) for c in configs)
                     + " |")
    added = result.get("tracking_ns_per_packet") or {}
    if added:
        lines += ["", "ns of CPU added per packet by tracking (1/pps - 1/pps(none)):",
                  "| cell | " + " | ".join(added) + " |", "|---" * (len(added) + 1) + "|"]
        for cell in cells:
            lines.append(f"| {cell} | " + " | ".join(format_value(added[c].get(cell))
                                                     for c in added) + " |")
    return "\n".join(lines)
