"""The forwarding benchmark's generator cells: the same lab, flows and
configurations as bench/forwarding.py's trafgen cells, but the timed packets
come from bench/livegen.py (XDP frames, no skb per packet, on a CPU of its
own) and the router runs with native XDP and threaded NAPI. Driven by
bench.forwarding.run (`python -m bench forwarding`), which reports both; see
forwarding.NOTES ("The generator cells").

Not a benchmark of its own (not in bench.ORDER): helpers only.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, spread, target_row
from bench.forwarding import BPFFS, FLOW_SPECS, NFT_SINK, Router, _split, prepare

#: Router configurations of the generator cells.
LIVE_CONFIGS = ("none", "nf_conntrack", "ctbpf", "ctbpf-enforce", "ctbpf-fast")
LIVE_CELLS = ("udp/1", "udp/1k", "udp/100k", "tcp/1", "tcp/1k", "tcp/100k", "tcp/new")
#: The generator's CPU, and the CPU the router's NAPI threads are pinned to.
GEN_CPU, ROUTER_CPU = 0, 1
LIVE_RAMP_S = 0.2
#: A UDP flow is ASSURED (and so fast-path eligible) at its first packet in
#: the original direction 2 s after the reply (the kernel's rule, which
#: ctbpf follows): the window of a UDP established cell opens that long after
#: the replies, in every configuration alike.
UDP_STREAM_S = 2.0
UDP_MARGIN_S = 0.3
#: Frames per generator run: far above what a run sends (its time bound ends it).
GEN_RATE_BOUND = 12_000_000
SETUP_QDISC = "pfifo limit 250000"
SETUP_RATES = ("1000000pps", "200000pps")
GROW_TIMEOUT_S = 40.0
ENFORCE_TOML = """mode = "enforce"

[policy.in.cli0]
accept = ["new", "established", "related"]

[policy.in.srv0]
accept = ["established", "related"]
"""
XDP_PASS = ROOT / "bench" / "traffic" / "xdp_pass.py"
XDP_DROP = ROOT / "bench" / "traffic" / "xdp_drop.py"


def _napi_threads() -> dict[int, str]:
    """Kernel threads of threaded NAPI instances named after the router's
    veths (napi/cli0-N, napi/srv0-N), pid -> name."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(("napi/cli0-", "napi/srv0-")):
            out[int(p.name)] = comm
    return out


class LiveRouter(Router):
    """forwarding.Router for the generator cells: the client's nft sink as
    before, the server's sink a native XDP_DROP program on its eth0 (held for
    the whole benchmark: it also lets the fast path's native redirect into
    srv0 reach the server), threaded NAPI on the router's cli0 and srv0, and
    every configuration with native XDP on cli0 and srv0."""

    def __init__(self, grow: bool = True, server_sink: bool = True, napi_cpu: int = ROUTER_CPU,
                 enforce_toml: str = ENFORCE_TOML, **router_kw) -> None:
        router_kw.setdefault("sinks", {"client": NFT_SINK})
        router_kw.setdefault("tag", "fwdlive")
        super().__init__(**router_kw)
        self.grow = grow
        self.napi_cpu = napi_cpu
        self.enforce_toml = enforce_toml
        self.variant = "none"
        self.napi_pinned: list[str] = []
        self.kept_pins: dict[str, Path] = {}
        self.warm_up: dict | None = None
        self.sink = None
        try:
            if server_sink:
                self.sink = self.lab.popen("server", [sys.executable, str(XDP_DROP), "--iface",
                                                      "eth0", "--mode", "native",
                                                      "--max-seconds", "3600"], cwd=ROOT)
                self._wait_line(self.sink, "xdp_drop: attached")
            # The flows are made by trafgen as in the trafgen cells; with native
            # XDP on the router's veths, veth stops the sender's queue while
            # the router's ring is full, and trafgen exits on the EAGAIN that
            # gives with no qdisc. A FIFO holds those packets instead (the
            # generator's XDP frames do not go through a qdisc).
            for ns in ("client", "server"):
                cp = self.lab.exec(ns, ["tc", "qdisc", "replace", "dev", "eth0", "root",
                                        *SETUP_QDISC.split()], timeout=10)
                if cp.returncode != 0:
                    raise RuntimeError(f"tc qdisc {SETUP_QDISC} on the {ns}'s eth0: "
                                       f"{cp.stderr.strip()}")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
        import select  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                err = proc.stderr.read()[-400:] if proc.poll() is not None else ""
                raise RuntimeError(f"{prefix!r} never came: {err.strip()}")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
            if ready:
                line = proc.stdout.readline()
                if line.startswith(prefix):
                    return line.strip()

    def set_config(self, config: str) -> dict:
        self.clear_config()
        t0 = time.monotonic()
        before = _napi_threads()
        if config in ("none", "nf_conntrack"):
            if config == "nf_conntrack":
                self.lab.nft("router", self.nft_track)
                self.config = "nf_conntrack"
            self.tracker = self.lab.popen("router", [
                sys.executable, str(XDP_PASS), "--iface", "cli0", "--iface", "srv0",
                "--mode", "native", "--max-seconds", "900"], env=self.lab.traffic_env(), cwd=ROOT)
            self.ready_line = self._wait_line(self.tracker, "xdp_pass: attached")
        else:
            fresh = config not in self.kept_pins
            self.pin_dir = self.kept_pins.setdefault(
                config, BPFFS / f"ctbpf-bench-{self.tag}-{secrets.token_hex(4)}")
            argv = [sys.executable, "-m", "ctbpf", "run", "--iface", "cli0", "--iface", "srv0",
                    "--pin-dir", str(self.pin_dir), "--max", str(self.nf_max),
                    "--new-max", str(self.nf_max // 2), "--keep-attached",
                    "--xdp-mode", "native", "--metrics-addr", "none"]
            if config != "ctbpf":
                conf = self.tmp / "enforce.toml"
                conf.write_text(self.enforce_toml)
                argv += ["--mode", "enforce", "--config", str(conf)]
            if config == "ctbpf-fast":
                argv.append("--fast-path")
            self.tracker = self.lab.popen("router", argv, env=self.lab.traffic_env(), cwd=ROOT)
            self.ready_line = self._wait_line(self.tracker, "ctbpf: tracking on ")
            self.config = "ctbpf"
            if fresh and self.grow:
                self.warm_up = self._grow_assured()
        self.variant = config
        self.napi_pinned = self._pin_napi(before)
        out = {"setup_s": round(time.monotonic() - t0, 2), "napi_pinned": self.napi_pinned}
        if self.warm_up is not None:
            out["ct_assured_warm_up"], self.warm_up = self.warm_up, None
        return out

    def _pin_napi(self, before: dict[int, str]) -> list[str]:
        """Threaded NAPI on cli0 and srv0 (possible once native XDP gave them a
        NAPI), and the threads it made, to napi_cpu."""
        for iface in ("cli0", "srv0"):
            cp = self.lab.exec("router", ["sh", "-c", f"echo 1 > /sys/class/net/{iface}/"
                                          f"threaded"], timeout=10)
            if cp.returncode != 0:
                raise RuntimeError(f"threaded NAPI on {iface}: {cp.stderr.strip()}")
        pinned = []
        deadline = time.monotonic() + 2.0
        while True:
            new = {p: n for p, n in _napi_threads().items() if p not in before}
            if len(new) >= 2 or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        for pid, name in sorted(new.items()):
            try:
                os.sched_setaffinity(pid, {self.napi_cpu})
                pinned.append(name)
            except OSError as e:
                pinned.append(f"{name} (not pinned: {e.strerror})")
        if not new:
            raise RuntimeError("no NAPI thread of cli0/srv0 appeared: threaded NAPI is off")
        return pinned

    def clear_config(self) -> None:
        """Router.clear_config, but a ctbpf variant's maps stay pinned (it ran
        with --keep-attached; its programs are detached here) for its next
        round to adopt: ct_assured keeps the size it grew to. Emptied first."""
        if self.config == "ctbpf" and self.pin_dir is not None:
            from ctbpf.datapath import tableops  # noqa: PLC0415

            try:
                tableops.flush(self.pin_dir)
            finally:
                self.pin_dir = None      # not removed by Router.clear_config
        super().clear_config()
        self.variant = "none"

    def _assured_size(self) -> int:
        cp = subprocess.run(["bpftool", "-j", "map", "show", "pinned",
                             str(self.pin_dir / "ct_assured")], capture_output=True, text=True,
                            timeout=10)
        return int(json.loads(cp.stdout)["max_entries"])

    def _grow_assured(self) -> dict:
        """ct_assured is made for 16,384 flows and grown by the agent (x4 when
        seven eighths full, checked every 2 s, a live rebuild of some
        seconds); a flow that becomes ASSURED while it is full stays in ct_new
        (not fast-path eligible: pass_not_assured) until a later packet finds
        room. A long-running tracker has grown it: this does it once per
        variant (the maps are kept between rounds), with the 100,000 TCP
        handshakes of the largest cell and an ACK per flow after each growth,
        then empties the tables."""
        from ctbpf.datapath import stats  # noqa: PLC0415

        t0 = time.monotonic()
        n = FLOW_SPECS["100k"][0]
        prepare(self, "tcp", "100k")
        sizes = [self._assured_size()]
        deadline = t0 + GROW_TIMEOUT_S
        while stats.read(self.pin_dir)["entries"]["assured"] < n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
            if self._assured_size() != sizes[-1]:
                sizes.append(self._assured_size())
                self.send("client", self.conf("tcp", "100k", "ack"), n)
        assured = stats.read(self.pin_dir)["entries"]["assured"]
        self.flush()
        return {"seconds": round(time.monotonic() - t0, 1), "ct_assured_sizes": sizes,
                "assured_of_100k": assured}

    def close(self) -> None:
        try:
            super().close()
        finally:
            from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

            for pin in self.kept_pins.values():
                try:
                    remove_pins(pin)
                except Exception as e:  # noqa: BLE001 - the others still go
                    print(f"forwarding: cannot remove {pin}: {e}", file=sys.stderr)
            self.kept_pins.clear()
            sink = getattr(self, "sink", None)
            if sink is not None and sink.poll() is None:
                sink.terminate()
                try:
                    sink.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    sink.kill()

    def send(self, ns: str, conf: Path, count: int, timeout: float = 20.0) -> None:
        """Router.send with trafgen's rate option, which makes it send with
        blocking sendto instead of its TX ring: the ring's flush fails with
        EAGAIN (and trafgen exits) while the router's ring is full; a blocking
        send waits. Retried once at a lower rate."""
        for rate in SETUP_RATES:
            cp = self.lab.exec(ns, ["timeout", "-s", "INT", f"{timeout:g}", "trafgen", "-o",
                                    "eth0", "-i", str(conf), "-n", str(count), "-P", "1", "-q",
                                    "-b", rate], timeout=timeout + 10)
            if cp.returncode == 0:
                return
        raise RuntimeError(f"trafgen in {ns} exited {cp.returncode}: "
                           f"{cp.stderr.strip()[-300:]}")

    def fast_counters(self) -> dict | None:
        if self.config != "ctbpf" or self.pin_dir is None:
            return None
        from ctbpf.datapath import fastpath  # noqa: PLC0415

        return fastpath.read(self.pin_dir)

    def link_stats(self, ns: str, iface: str) -> dict:
        cp = subprocess.run(["ip", "-n", self.lab.ns(ns), "-j", "-s", "link", "show", "dev",
                             iface], capture_output=True, text=True, timeout=10)
        s = json.loads(cp.stdout)[0]["stats64"]
        return {"rx": s["rx"]["packets"], "tx": s["tx"]["packets"],
                "rx_dropped": s["rx"]["dropped"], "tx_dropped": s["tx"]["dropped"]}

    def window_counters(self) -> tuple[float, dict]:
        """(time, counters): the server's rx read first, stamped at the middle
        of its read; then the client's, the router's."""
        t0 = time.monotonic()
        out = {"server.eth0": self.link_stats("server", "eth0")}
        t = (t0 + time.monotonic()) / 2
        out["client.eth0"] = self.link_stats("client", "eth0")
        for iface in ("cli0", "srv0"):
            out[f"router.{iface}"] = self.link_stats("router", iface)
        return t, out


def _fast_delta(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return None
    out = {}
    for iface, cs in b.items():
        base = a.get(iface, {})
        out[iface] = {k: v - base.get(k, 0) for k, v in cs.items()
                      if isinstance(v, int) and v - base.get(k, 0)}
    return out


def measure(r: LiveRouter, proto: str, flows: str, seconds: float) -> dict:
    """One run of a cell: the flows made as in the trafgen cells, then the
    generator's frames for a ramp and a window."""
    from bench.livegen import LiveGen  # noqa: PLC0415 - livegen imports bench.forwarding

    pre = prepare(r, proto, flows)
    ready_at = time.monotonic()
    if proto == "udp" and FLOW_SPECS[flows][0] is not None:
        ready_at += UDP_STREAM_S + UDP_MARGIN_S
    bound = LIVE_RAMP_S + seconds + UDP_STREAM_S + UDP_MARGIN_S + 3
    gen = LiveGen(netns=r.lab.client, out="eth0", dst_mac=r.mac_rc, src=r.lab.client_ip,
                  dst=r.lab.server_ip, proto=proto, flows=flows,
                  count=int(GEN_RATE_BOUND * bound), max_seconds=bound, cpu=GEN_CPU)
    gen.start()
    try:
        time.sleep(max(LIVE_RAMP_S, ready_at - time.monotonic()))
        f0 = r.fast_counters()
        t0, c0 = r.window_counters()
        time.sleep(seconds)
        t1, c1 = r.window_counters()
        f1 = r.fast_counters()
        if not gen.running:
            raise RuntimeError("the generator stopped before the window closed")
    finally:
        res = gen.stop() if gen.running else gen.wait(5)
    dt = t1 - t0
    d = {k: {f: c1[k][f] - c0[k][f] for f in c0[k]} for k in c0}
    fwd, sent = d["server.eth0"]["rx"], d["client.eth0"]["tx"]
    m = {"pps": fwd / dt, "forwarded": fwd, "sent": sent, "window_s": round(dt, 4),
         "offered_pps": sent / dt, "delivered": round(fwd / sent, 4) if sent else None,
         "router_cli0_rx_dropped": d["router.cli0"]["rx_dropped"],
         "client_tx_dropped": d["client.eth0"]["tx_dropped"],
         "generator": {k: res.get(k) for k in ("mode", "pps", "sent", "seconds", "stopped",
                                               "seeds", "reseeds", "out_tx_dropped",
                                               "bad_frames", "cpu")},
         "fast_path": _fast_delta(f0, f1), **pre, "entries_after": r.entries()}
    if res.get("seconds"):
        # what the generator tried to send: the frames OUT's peer refused
        # (its ring full) are in turns, not in sent
        m["generator"]["attempted_pps"] = round(res["turns"] / res["seconds"], 1)
    if res.get("refused"):
        m["generator"]["refused"] = res["refused"]
    return m


def add_arguments(g) -> None:
    g.add_argument("--forwarding-senders", default="trafgen,livegen", metavar="LIST",
                   help="which cells: trafgen (the skb senders), livegen (XDP generator "
                        "cells), or both (default)")
    g.add_argument("--forwarding-live-runs", type=int, default=5, metavar="N",
                   help="runs of every generator cell (default 5)")
    g.add_argument("--forwarding-live-seconds", type=float, default=0.4, metavar="S",
                   help=f"timed window of one generator run (default 0.4, plus a "
                        f"{LIVE_RAMP_S} s ramp)")
    g.add_argument("--forwarding-live-cells", default=",".join(LIVE_CELLS), metavar="LIST",
                   help="generator cells (default all of: " + ", ".join(LIVE_CELLS) + ")")
    g.add_argument("--forwarding-live-configs", default=",".join(LIVE_CONFIGS), metavar="LIST",
                   help=f"generator cells' configurations among {', '.join(LIVE_CONFIGS)}")


def check_args(args) -> tuple[list[str], list[str]]:
    """The generator cells' options, checked (ValueError): cells, configs."""
    cells = _split(args.forwarding_live_cells, LIVE_CELLS)
    configs = _split(args.forwarding_live_configs, LIVE_CONFIGS)
    if args.forwarding_live_runs < 1 or not 0 < args.forwarding_live_seconds <= 10:
        raise ValueError("--forwarding-live-runs >= 1, --forwarding-live-seconds in (0, 10]")
    if len(os.sched_getaffinity(0)) < 2 or not {GEN_CPU, ROUTER_CPU} <= os.sched_getaffinity(0):
        raise ValueError(f"the generator cells need CPUs {GEN_CPU} and {ROUTER_CPU}")
    return cells, configs


def run(args) -> dict:
    cells, configs = check_args(args)
    runs = args.forwarding_live_runs
    raw = {c: {cell: [] for cell in cells} for c in configs}
    setups: dict[str, list] = {c: [] for c in configs}
    r = LiveRouter(grow=any(c.endswith("/100k") for c in cells))
    info = {"lab": r.lab.prefix, "nf_conntrack_max": r.nf_max, "ctbpf_max": r.nf_max,
            "generator_cpu": GEN_CPU, "router_napi_cpu": ROUTER_CPU, "ready_lines": {}}
    try:
        for i in range(runs):
            for config in configs:
                setups[config].append(r.set_config(config))
                info["ready_lines"][config] = r.ready_line
                for cell in cells:
                    proto, flows = cell.split("/")
                    m = measure(r, proto, flows, args.forwarding_live_seconds)
                    raw[config][cell].append(m)
                    fp = ""
                    if config == "ctbpf-fast" and m["fast_path"]:
                        c = m["fast_path"].get("cli0", {})
                        fp = (f" fast path: cli0 rx {c.get('rx_packets', 0):,} srv0 tx "
                              f"{m['fast_path'].get('srv0', {}).get('tx_packets', 0):,}"
                              f" no_xmit {c.get('pass_no_xmit', 0)} not_assured "
                              f"{c.get('pass_not_assured', 0)}")
                    print(f"  live run {i + 1}/{runs} {config:13s} {cell:8s} {m['pps']:>11,.0f} "
                          f"pps  offered {m['offered_pps']:>11,.0f} (gen {m['generator']['pps']:,.0f})"
                          f"  delivered {m['delivered']}{fp}", flush=True)
                r.clear_config()
    finally:
        r.close()
    return result(configs, cells, raw, setups, info, args)


def result(configs, cells, raw, setups, info, args) -> dict:
    def sp(config, cell, key):
        return spread([m[key] for m in raw[config][cell] if m.get(key) is not None], digits=4
                      if key == "delivered" else 0)

    pps = {c: {cell: sp(c, cell, "pps") for cell in cells} for c in configs}
    offered = {c: {cell: sp(c, cell, "offered_pps") for cell in cells} for c in configs}
    gen = {c: {cell: spread([m["generator"]["pps"] for m in raw[c][cell]], digits=0)
               for cell in cells} for c in configs}
    attempted = {c: {cell: spread([m["generator"].get("attempted_pps") or 0
                                   for m in raw[c][cell]], digits=0)
                     for cell in cells} for c in configs}
    delivered = {c: {cell: sp(c, cell, "delivered") for cell in cells} for c in configs}
    ns_pp = {c: {cell: spread([1e9 / m["pps"] for m in raw[c][cell] if m["pps"]], digits=1)
                 for cell in cells} for c in configs}
    fast = {}
    if "ctbpf-fast" in configs:
        for cell in cells:
            tot: dict = {}
            for m in raw["ctbpf-fast"][cell]:
                for iface, cs in (m["fast_path"] or {}).items():
                    for k, v in cs.items():
                        tot.setdefault(iface, {}).setdefault(k, 0)
                        tot[iface][k] += v
            fast[cell] = tot
    targets = []
    if {"ctbpf-fast", "nf_conntrack"} <= set(configs):
        for cell in cells:
            if cell.endswith("/new"):
                continue
            c, b = pps["ctbpf-fast"][cell], pps["nf_conntrack"][cell]
            ratio = round(c["median"] / b["median"], 3) if b["median"] else None
            met = ratio is not None and ratio >= 3
            note = ("stretch 5 x met too" if ratio and ratio >= 5 else
                    "stretch 5 x not met" if met else _miss(cell, "ctbpf-fast", pps, ns_pp,
                                                           delivered, fast))
            no_xmit = fast.get(cell, {}).get("cli0", {}).get("pass_no_xmit", 0)
            if no_xmit:
                note += f"; pass_no_xmit {no_xmit} (should be 0)"
            targets.append(target_row(
                f"fast path forwarding, established flows ({cell}, XDP generator)",
                "packets/s", c, ">= 3 x nf_conntrack (stretch 5 x)", met, baseline=b,
                baseline_name="nf_conntrack", ratio=ratio, note=note))
    if {"ctbpf-enforce", "nf_conntrack"} <= set(configs):
        for cell in (x for x in cells if x.endswith("/new")):
            c, b = pps["ctbpf-enforce"][cell], pps["nf_conntrack"][cell]
            ratio = round(c["median"] / b["median"], 3) if b["median"] else None
            met = ratio is not None and ratio >= 2
            targets.append(target_row(
                f"new flows per second accepted by enforce mode ({cell}, XDP generator)",
                "flows/s", c, ">= 2 x nf_conntrack", met, baseline=b,
                baseline_name="nf_conntrack", ratio=ratio,
                note="" if met else _miss(cell, "ctbpf-enforce", pps, ns_pp, delivered, fast)))
    plots = []
    try:
        from bench.common import plot_bars  # noqa: PLC0415

        groups = {cell: {c: pps[c][cell] for c in configs} for cell in cells}
        plots.append(plot_bars("forwarding-live-pps", "Forwarded packets/s, XDP generator on "
                               "its own CPU (native XDP, threaded NAPI)", "packets/s", groups))
    except Exception as e:  # noqa: BLE001 - a missing plot must not lose the figures
        print(f"forwarding: live plot failed: {e}", file=sys.stderr)
    return {"settings": {"runs": args.forwarding_live_runs,
                         "seconds": args.forwarding_live_seconds, "ramp_s": LIVE_RAMP_S,
                         "udp_stream_wait_s": UDP_STREAM_S + UDP_MARGIN_S, "cells": cells,
                         "configs": configs, **info},
            "pps": pps, "offered_pps": offered, "generator_pps": gen,
            "generator_attempted_pps": attempted, "delivered": delivered,
            "ns_per_packet": ns_pp, "fast_path_counters": fast, "runs": raw,
            "config_setup": setups, "targets": targets, "plots": plots}


def _miss(cell, config, pps, ns_pp, delivered, fast) -> str:
    """A measured breakdown for a missed target: ns per forwarded packet of
    each configuration, and what reached the server."""
    parts = []
    for c in ("none", "nf_conntrack", "ctbpf", "ctbpf-enforce", "ctbpf-fast"):
        if c in ns_pp and cell in ns_pp[c]:
            parts.append(f"{c} {ns_pp[c][cell]['median']:g}")
    text = "ns/packet (1/pps): " + ", ".join(parts)
    if config in delivered:
        text += f"; delivered {delivered[config][cell]['median']:g} of the offered frames"
    if "nf_conntrack" in delivered:
        text += f" (nf_conntrack {delivered['nf_conntrack'][cell]['median']:g})"
    f = fast.get(cell, {}).get("cli0")
    if config == "ctbpf-fast" and f:
        rx = f.get("rx_packets", 0)
        tx = f.get("tx_packets", 0)
        text += f"; fast path tx/rx on cli0 {tx}/{rx}"
    return text


def summary(res: dict) -> str:
    from bench.common import format_value  # noqa: PLC0415

    configs = list(res["pps"])
    cells = list(next(iter(res["pps"].values())))
    st = res["settings"]
    lines = [f"XDP generator cells (native XDP on cli0/srv0, threaded NAPI: router on CPU "
             f"{st['router_napi_cpu']}, generator on CPU {st['generator_cpu']}): forwarded "
             f"pps, median [min, max] of {st['runs']}; below: the generator's pps (LiveGen: "
             f"frames the router took in) / frames it tried per second, and the fraction "
             f"of the frames taken in that reached the server",
             "| cell | " + " | ".join(configs) + " |", "|---" * (len(configs) + 1) + "|"]
    for cell in cells:
        lines.append(f"| {cell} | " + " | ".join(format_value(res["pps"][c][cell])
                                               for c in configs) + " |")
        lines.append("| gen pps / tried, delivered | " + " | ".join(
            f"{res['generator_pps'][c][cell]['median']:,.0f} / "
            f"{res['generator_attempted_pps'][c][cell]['median']:,.0f}, "
            f"{res['delivered'][c][cell]['median']:g}" for c in configs) + " |")
    return "\n".join(lines)
