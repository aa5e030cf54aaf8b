"""The flood benchmark's generator cells: the same lab, streams, floods and
policy as bench/flood.py's cells, but the flood comes from bench/livegen.py
(XDP frames, no skb per packet, on a CPU of its own) and the router runs
with native XDP and threaded NAPI. Driven by bench.flood.run (`python -m
bench flood`), which reports both; see flood.NOTES ("The generator cells").

Not a benchmark of its own (not in bench.ORDER): helpers only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench.common import ROOT, spread, target_row
from bench.fwdlive import LiveRouter

#: Router configurations of the generator cells, as in bench/fwdlive.py.
LIVE_CONFIGS = ("none", "nf_conntrack", "ctbpf", "ctbpf-enforce", "ctbpf-fast")
FLOODS = ("none", "syn", "ack")
#: How the two CPUs are shared: the generator's loop on GEN_CPU; the
#: router's NAPI threads (cli0, srv0) and the streams' sockets on WORK_CPU.
#: The drop rate is measured first with the flood alone (the router's
#: threads have WORK_CPU to themselves), then again while the streams run.
GEN_CPU, WORK_CPU = 0, 1
FLOOD_ALONE_S = 0.5
FLOOD_NET = "198.18"
STREAM_CONNS = 4
STREAM_PORT0 = 40000
RAMP_S = 0.3
#: Frames per generator run: far above what a run sends (its time bound ends it).
GEN_RATE_BOUND = 12_000_000


def _taskset(argv: list) -> list:
    return ["taskset", "-c", str(WORK_CPU), *[str(a) for a in argv]]


class FloodLiveRouter(LiveRouter):
    """fwdlive.LiveRouter with the flood benchmark's sinks and policy: the
    client drops the flood's sources at its netdev ingress (so it never
    answers them), the server keeps its stack (it is the streams' sink), the
    router's NAPI threads run on WORK_CPU."""

    def __init__(self) -> None:
        from bench.flood import ENFORCE_TOML, NFT_CLIENT_SINK, NFT_FIREWALL  # noqa: PLC0415

        super().__init__(grow=False, server_sink=False, napi_cpu=WORK_CPU,
                         enforce_toml=ENFORCE_TOML, sinks={"client": NFT_CLIENT_SINK},
                         nft_track=NFT_FIREWALL, tag="floodlive")


def _dropped(r: FloodLiveRouter, stats: dict | None) -> int:
    """What the router discarded so far: the nft drop rule's counter for the
    kernel, ctbpf's XDP_DROP counter in enforce mode, 0 otherwise."""
    from bench.flood import _nft_counter  # noqa: PLC0415

    if r.variant in ("ctbpf-enforce", "ctbpf-fast"):
        return stats["drop"] if stats else 0
    if r.variant == "nf_conntrack":
        return _nft_counter(r, "router", "inet", "ctbench")
    return 0


def one(r: FloodLiveRouter, flood: str, port: int, seconds: float) -> dict:
    """The streams for `seconds`, with (or without) the generator's flood
    from the server's side; the figures of the streams' window."""
    from bench.flood import _ctbpf_packets, _established, _nft_counter  # noqa: PLC0415
    from bench.livegen import LiveGen  # noqa: PLC0415

    stream = ROOT / "bench" / "traffic" / "stream.py"
    sink = r.lab.popen("server", _taskset([sys.executable, stream, "sink", "--port", port,
                                           "--conns", STREAM_CONNS, "--timeout", seconds + 20]))
    gen = res = None
    try:
        if not r.lab.wait_listening("server", port):
            raise RuntimeError("the stream sink does not listen")
        if flood != "none":
            bound = RAMP_S + seconds + 10
            gen = LiveGen(netns=r.lab.server, out="eth0", dst_mac=r.mac_rs, src=r.lab.server_ip,
                          dst=r.lab.client_ip, proto="tcp", flows="new", new_net=FLOOD_NET,
                          tcp_ack=flood == "ack", count=int(GEN_RATE_BOUND * bound),
                          max_seconds=bound, cpu=GEN_CPU)
            gen.start()
            time.sleep(RAMP_S)
        alone = {}
        if gen is not None:
            # the drop rate: the flood alone, the router's threads on a CPU of their own
            a0 = _dropped(r, _ctbpf_packets(r)), r.link_stats("router", "srv0")["rx"]
            ta = time.monotonic()
            time.sleep(FLOOD_ALONE_S)
            a1 = _dropped(r, _ctbpf_packets(r)), r.link_stats("router", "srv0")["rx"]
            dta = time.monotonic() - ta
            alone = {"dropped_alone_pps": (a1[0] - a0[0]) / dta,
                     "srv0_rx_alone_pps": (a1[1] - a0[1]) / dta}
        s0 = _ctbpf_packets(r)
        d0, p0 = _dropped(r, s0), _nft_counter(r, "client", "netdev", "ctbench_sink")
        l0 = r.link_stats("router", "srv0")
        t0 = time.monotonic()
        src = r.lab.popen("client", _taskset([sys.executable, stream, "source", "--host",
                                              r.lab.server_ip, "--port", port, "--conns",
                                              STREAM_CONNS, "--seconds", seconds]))
        time.sleep(seconds / 2)
        established = _established(r, port) if r.config in ("ctbpf", "nf_conntrack") else None
        out, err = src.communicate(timeout=seconds + 30)
        t1 = time.monotonic()
        s1 = _ctbpf_packets(r)
        d1, p1 = _dropped(r, s1), _nft_counter(r, "client", "netdev", "ctbench_sink")
        l1 = r.link_stats("router", "srv0")
        if gen is not None and not gen.running:
            raise RuntimeError("the generator stopped before the window closed")
    finally:
        if gen is not None:
            res = gen.stop() if gen.running else gen.wait(5)
    sout, serr = sink.communicate(timeout=30)
    src_res = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"errors": [err]}
    sink_res = json.loads(sout.strip().splitlines()[-1]) if sout.strip() else {"errors": [serr]}
    dt = t1 - t0
    received = sum(sink_res.get("bytes", []))
    m = {"flood": flood, "window_s": round(dt, 4),
         "dropped_pps": (d1 - d0) / dt, "passed_pps": (p1 - p0) / dt,
         "srv0_rx_pps": (l1["rx"] - l0["rx"]) / dt,
         "throughput_bps": 8 * received / sink_res["seconds"] if sink_res.get("seconds") else 0,
         "received_bytes": received, "established_mid_stream": established,
         "stream_errors": src_res.get("errors", []) + sink_res.get("errors", []),
         **alone}
    if res is not None:
        m["generator"] = {k: res.get(k) for k in ("mode", "pps", "sent", "seconds", "stopped",
                                                  "seeds", "reseeds", "cpu")}
        if res.get("seconds"):
            m["generator"]["attempted_pps"] = round(res["turns"] / res["seconds"], 1)
    if s0 is not None:
        m["ctbpf_packets"] = {k: s1["packets"][k] - s0["packets"][k] for k in s1["packets"]}
        m["ctbpf_entries_after"] = s1["entries"]
    return m


def floor(r: FloodLiveRouter) -> dict:
    """The veth's own ceiling: srv0 with a native XDP program that drops
    everything (bench/traffic/xdp_drop.py) and nothing else, the same
    generator's SYN flood for FLOOD_ALONE_S. What any XDP dropper can reach
    here; the rest of a dropper's time is its program."""
    from bench.fwdlive import XDP_DROP, _napi_threads  # noqa: PLC0415
    from bench.livegen import LiveGen  # noqa: PLC0415

    r.clear_config()
    before = _napi_threads()
    drop = r.lab.popen("router", [sys.executable, str(XDP_DROP), "--iface", "srv0",
                                  "--mode", "native", "--max-seconds", "60"], cwd=ROOT)
    gen = None
    try:
        r._wait_line(drop, "xdp_drop: attached")
        r.lab.exec("router", ["sh", "-c", "echo 1 > /sys/class/net/srv0/threaded"], timeout=10)
        time.sleep(0.1)
        for pid, name in _napi_threads().items():
            if pid not in before and name.startswith("napi/srv0-"):
                os.sched_setaffinity(pid, {WORK_CPU})
        bound = RAMP_S + FLOOD_ALONE_S + 10
        gen = LiveGen(netns=r.lab.server, out="eth0", dst_mac=r.mac_rs, src=r.lab.server_ip,
                      dst=r.lab.client_ip, proto="tcp", flows="new", new_net=FLOOD_NET,
                      count=int(GEN_RATE_BOUND * bound), max_seconds=bound, cpu=GEN_CPU).start()
        time.sleep(RAMP_S)
        x0, t0 = r.link_stats("router", "srv0")["rx"], time.monotonic()
        time.sleep(FLOOD_ALONE_S)
        x1, t1 = r.link_stats("router", "srv0")["rx"], time.monotonic()
        res = gen.stop()
        gen = None
        return {"dropped_pps": (x1 - x0) / (t1 - t0), "generator_pps": res.get("pps"),
                "generator_attempted_pps": round(res["turns"] / res["seconds"], 1)
                if res.get("seconds") else None}
    finally:
        if gen is not None and gen.running:
            gen.stop()
        drop.terminate()
        try:
            drop.wait(timeout=10)
        except subprocess.TimeoutExpired:
            drop.kill()


def add_arguments(g) -> None:
    g.add_argument("--flood-senders", default="flood,livegen", metavar="LIST",
                   help="which cells: flood (bench/traffic/flood.c, an skb per packet), "
                        "livegen (the XDP generator), or both (default)")
    g.add_argument("--flood-live-configs", default=",".join(LIVE_CONFIGS), metavar="LIST",
                   help=f"generator cells' configurations among {', '.join(LIVE_CONFIGS)}")


def check_args(args) -> list[str]:
    from bench.forwarding import _split  # noqa: PLC0415

    configs = _split(args.flood_live_configs, LIVE_CONFIGS)
    if not {GEN_CPU, WORK_CPU} <= os.sched_getaffinity(0):
        raise ValueError(f"the generator cells need CPUs {GEN_CPU} and {WORK_CPU}")
    return configs


def run(args) -> dict:
    configs = check_args(args)
    runs = max(1, args.flood_runs)
    raw = {c: {f: [] for f in FLOODS} for c in configs}
    r = FloodLiveRouter()
    info = {"lab": r.lab.prefix, "nf_conntrack_max": r.nf_max, "ctbpf_max": r.nf_max,
            "generator_cpu": GEN_CPU, "router_and_streams_cpu": WORK_CPU, "ready_lines": {},
            "napi_pinned": {}}
    port = STREAM_PORT0
    floors: list[dict] = []
    try:
        for i in range(runs):
            for config in configs:
                info["napi_pinned"][config] = r.set_config(config)["napi_pinned"]
                info["ready_lines"][config] = r.ready_line
                for flood in FLOODS:
                    port += 1
                    m = one(r, flood, port, args.flood_seconds)
                    raw[config][flood].append(m)
                    g = m.get("generator", {})
                    print(f"  live run {i + 1}/{runs} {config:13s} flood={flood:4s} dropped "
                          f"{m.get('dropped_alone_pps', 0):>10,.0f}/s alone, "
                          f"{m['dropped_pps']:>10,.0f}/s with the streams; passed {m['passed_pps']:>10,.0f}/s "
                          f"(gen {g.get('pps') or 0:,.0f}/s) streams "
                          f"{m['throughput_bps'] / 1e9:6.2f} Gbit/s established "
                          f"{m['established_mid_stream']}/{STREAM_CONNS} "
                          f"errors {len(m['stream_errors'])}", flush=True)
                r.clear_config()
            floors.append(floor(r))
            print(f"  live run {i + 1}/{runs} floor: srv0 with an XDP_DROP program alone drops "
                  f"{floors[-1]['dropped_pps']:,.0f}/s", flush=True)
    finally:
        r.close()
    info["floor_xdp_drop"] = floors
    return result(configs, raw, info, args)


DROPPERS = ("nf_conntrack", "ctbpf-enforce", "ctbpf-fast")


def result(configs, raw, info, args) -> dict:
    fig = {}
    for c in configs:
        base = [m["throughput_bps"] for m in raw[c]["none"]]
        fig[c] = {"throughput_gbps_no_flood": spread(base, 1e-9, 3)}
        for f in ("syn", "ack"):
            ms = raw[c][f]
            fig[c][f] = {
                "dropped_alone_pps": spread([m["dropped_alone_pps"] for m in ms], digits=0),
                "srv0_rx_alone_pps": spread([m["srv0_rx_alone_pps"] for m in ms], digits=0),
                "dropped_pps": spread([m["dropped_pps"] for m in ms], digits=0),
                "passed_pps": spread([m["passed_pps"] for m in ms], digits=0),
                "router_rx_pps": spread([m["srv0_rx_pps"] for m in ms], digits=0),
                "generator_pps": spread([m["generator"]["pps"] or 0 for m in ms], digits=0),
                "generator_attempted_pps": spread([m["generator"].get("attempted_pps") or 0
                                                   for m in ms], digits=0),
                "throughput_gbps": spread([m["throughput_bps"] for m in ms], 1e-9, 3),
                "throughput_kept": spread([m["throughput_bps"] / b if b else 0
                                           for m, b in zip(ms, base)], digits=3),
                "entries_lost": max((STREAM_CONNS - m["established_mid_stream"] for m in ms
                                     if m["established_mid_stream"] is not None), default=None),
                "stream_errors": sum(len(m["stream_errors"]) for m in ms)}
    floors = info["floor_xdp_drop"]
    fig["floor_xdp_drop"] = {"dropped_pps": spread([f["dropped_pps"] for f in floors],
                                                   digits=0),
                             "generator_pps": spread([f["generator_pps"] or 0 for f in floors],
                                                     digits=0)}
    floor_ns = 1e9 / max(fig["floor_xdp_drop"]["dropped_pps"]["median"], 1)
    targets = []
    k = fig.get("nf_conntrack")
    for ec in (c for c in ("ctbpf-enforce", "ctbpf-fast") if c in fig):
        for f, name in (("syn", "SYN flood"), ("ack", "ACK flood")):
            c = fig[ec][f]
            ratio = (round(c["dropped_alone_pps"]["median"] / k[f]["dropped_alone_pps"]["median"],
                           3) if k and k[f]["dropped_alone_pps"]["median"] else None)
            met = ratio is not None and ratio >= 10
            note = (f"generator {c['generator_pps']['median']:,.0f}/s taken in by srv0 (tried "
                    f"{c['generator_attempted_pps']['median']:,.0f}/s); nf_conntrack took in "
                    f"{k[f]['generator_pps']['median']:,.0f}/s" if k else "")
            if not met and k:
                ns_c = 1e9 / max(c["dropped_alone_pps"]["median"], 1)
                ns_k = 1e9 / max(k[f]["dropped_alone_pps"]["median"], 1)
                fl = fig["floor_xdp_drop"]["dropped_pps"]
                floor_hi = 1e9 / max(fl["min"], 1)
                own = (f"+ its program {ns_c - floor_ns:.0f}" if ns_c > floor_hi else
                       f"with its program within the floor's spread ({1e9 / max(fl['max'], 1):.0f}"
                       f"-{floor_hi:.0f})")
                note += (f"; ns per dropped packet (1/rate, the router's CPU): {ec} {ns_c:.0f} "
                         f"= the veth floor {floor_ns:.0f} (an XDP_DROP program alone) {own}; "
                         f"nf_conntrack {ns_k:.0f}; 10 x needs "
                         f"{ns_k / 10:.0f}; while the streams ran {c['dropped_pps']['median']:,.0f}"
                         f"/s against {k[f]['dropped_pps']['median']:,.0f}/s")
            if c["passed_pps"]["max"] > 0:
                note += f"; flood packets reached the client: up to {c['passed_pps']['max']:g}/s"
            targets.append(target_row(
                f"{name} from outside: packets/s dropped at XDP ({ec}, XDP generator on CPU "
                f"{GEN_CPU}, the router on CPU {WORK_CPU})",
                "packets/s", c["dropped_alone_pps"], ">= 10 x nf_conntrack", met,
                baseline=k[f]["dropped_alone_pps"] if k else None, baseline_name="nf_conntrack",
                ratio=ratio, note=note))
            kept_ok = c["throughput_kept"]["median"] >= 0.95
            lost_ok = c["entries_lost"] == 0 and c["stream_errors"] == 0
            targets.append(target_row(
                f"established streams' throughput under the {name}, share of no flood "
                f"({ec}, XDP generator on CPU {GEN_CPU}, streams and router on CPU {WORK_CPU})",
                "ratio", c["throughput_kept"], ">= 0.95 and no entry lost", kept_ok and lost_ok,
                baseline=k[f]["throughput_kept"] if k else None, baseline_name="nf_conntrack",
                ratio=None if not k or not k[f]["throughput_kept"]["median"] else round(
                    c["throughput_kept"]["median"] / k[f]["throughput_kept"]["median"], 3),
                note=("" if kept_ok else
                      f"the router's srv0 thread never idles under the flood (it took in "
                      f"{c['router_rx_pps']['median']:,.0f}/s of the "
                      f"{c['generator_attempted_pps']['median']:,.0f}/s tried), so the "
                      f"scheduler gives it its share of CPU {WORK_CPU} whatever a packet "
                      f"costs; ") +
                     f"entries lost {c['entries_lost']}, stream errors {c['stream_errors']}; "
                     f"streams without flood {fig[ec]['throughput_gbps_no_flood']['median']:g}"
                     f" Gbit/s, nf_conntrack {k['throughput_gbps_no_flood']['median']:g}"
                     if k else ""))
    plots = []
    try:
        from bench.common import plot_bars  # noqa: PLC0415

        groups = {f"{f} flood": {c: fig[c][f]["dropped_alone_pps"] for c in configs
                                 if c in DROPPERS}
                  for f in ("syn", "ack")}
        plots.append(plot_bars("flood-live-drop-rate", "Flood packets/s dropped by the router, "
                               "XDP generator on its own CPU", "packets/s", groups))
        groups = {f"{f} flood": {c: fig[c][f]["throughput_kept"] for c in configs}
                  for f in ("syn", "ack")}
        plots.append(plot_bars("flood-live-throughput-kept", "Streams' throughput under the "
                               "XDP generator's flood / without", "share", groups))
    except Exception as e:  # noqa: BLE001 - a missing plot must not lose the figures
        print(f"flood: live plot failed: {e}", file=sys.stderr)
    return {"settings": {"runs": args.flood_runs, "seconds": args.flood_seconds,
                         "ramp_s": RAMP_S, "stream_conns": STREAM_CONNS, "configs": configs,
                         **info},
            "figures": fig, "runs": raw, "targets": targets, "plots": plots}


def summary(res: dict) -> str:
    from bench.common import format_value  # noqa: PLC0415

    st = res["settings"]
    lines = [f"XDP generator cells (native XDP on cli0/srv0, threaded NAPI; generator on CPU "
             f"{st['generator_cpu']}, router and streams on CPU {st['router_and_streams_cpu']}),"
             f" median [min, max] of {st['runs']}",
             "| config | flood | dropped/s, flood alone | dropped/s with streams | passed/s | "
             "generator taken in / tried per s | streams Gbit/s (no flood) | under flood | "
             "kept | entries lost |", "|---" * 10 + "|"]
    for c, fs in res["figures"].items():
        if c == "floor_xdp_drop":
            continue
        for f in ("syn", "ack"):
            x = fs[f]
            lines.append(f"| {c} | {f} | {format_value(x['dropped_alone_pps'])} | "
                         f"{format_value(x['dropped_pps'])} | "
                         f"{format_value(x['passed_pps'])} | "
                         f"{x['generator_pps']['median']:,.0f} / "
                         f"{x['generator_attempted_pps']['median']:,.0f} | "
                         f"{format_value(fs['throughput_gbps_no_flood'])} | "
                         f"{format_value(x['throughput_gbps'])} | "
                         f"{format_value(x['throughput_kept'])} | {x['entries_lost']} |")
    fl = res["figures"].get("floor_xdp_drop")
    if fl:
        lines.append(f"\nThe veth's floor: srv0 with an XDP_DROP program alone dropped "
                     f"{format_value(fl['dropped_pps'])} packets/s of the generator's SYN flood "
                     f"(generator {format_value(fl['generator_pps'])} taken in/s).")
    return "\n".join(lines)
