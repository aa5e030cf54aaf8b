"""The listing figures of bench controlplane (issue 15): `ctbpf list` in
each format beside `conntrack -L` of the same flows, time to the first
line, peak RSS at two table sizes, and one `ctbpf top` refresh.

Every command runs as a subprocess whose stdout is read through a pipe and
thrown away (both sides alike), so the time of its first line can be seen;
wall time from fork to exit and the child's CPU from wait4. Peak RSS is the
child's VmHWM, polled while it writes: wait4's ru_maxrss would include the
forked copy of this (large) process from before the exec."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from pathlib import Path

from . import common

OUTPUTS = ("proc", "conntrack", "json")
TARGET_FIRST_LINE_S = 0.3
TARGET_TOP_S = 1.0
TARGET_JSON_RATIO = 1.5      # -o json at most 1.5x conntrack -L
STRETCH_SPEEDUP = 3.0        # -o proc/conntrack: >= 1x conntrack -L, stretch 3x


def run_piped(cmd: list[str], timeout: float) -> dict:
    """wall, cpu, first-line and peak-RSS figures of cmd, its stdout drained."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    first, size, fd, hwm = None, 0, p.stdout.fileno(), 0
    try:
        while True:
            select.select([fd], [], [], timeout)
            hwm = max(hwm, _vm_hwm_kb(p.pid))
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            if first is None and b"\n" in chunk:
                first = time.perf_counter() - t0
            size += len(chunk)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    finally:
        timer.cancel()
        p.stdout.close()
    code = os.waitstatus_to_exitcode(status)
    p.returncode = code   # reaped by wait4: Popen must not wait again
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit status {code}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "first": first,
            "rss_mb": hwm / 1024, "bytes": size}


def _vm_hwm_kb(pid: int) -> int:
    """The process's peak RSS so far (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _spread(runs: list[dict], key: str) -> dict:
    return common.spread([r[key] for r in runs if r[key] is not None])


def list_figures(ctbpf_cmd, kernel_cmd: list[str] | None, runs: int, timeout: float) -> dict:
    """ctbpf_cmd(output) -> argv. Runs interleaved, one of each per round."""
    raw: dict[str, list[dict]] = {o: [] for o in OUTPUTS}
    if kernel_cmd is not None:
        raw["conntrack -L"] = []
    for i in range(runs):
        for name in raw:
            cmd = kernel_cmd if name == "conntrack -L" else ctbpf_cmd(name)
            raw[name].append(run_piped(cmd, timeout))
        print(f"  list round {i + 1}/{runs}: " + ", ".join(
            f"{k} {v[-1]['wall']:.2f} s" for k, v in raw.items()), flush=True)
    return {k: {"wall_s": _spread(v, "wall"), "cpu_s": _spread(v, "cpu"),
                "first_line_s": _spread(v, "first"), "rss_mb": _spread(v, "rss_mb"),
                "bytes": v[0]["bytes"]} for k, v in raw.items()}


def rss_at(ctbpf_cmd, runs: int, timeout: float) -> dict:
    """Peak RSS of `ctbpf list -o proc` (MB), median of runs."""
    return _spread([run_piped(ctbpf_cmd("proc"), timeout) for _ in range(runs)], "rss_mb")


def top_refresh(pin_dir: Path, runs: int) -> dict:
    """Seconds of one `ctbpf top` refresh (read both tables, rates against
    the previous sample, render), in this process."""
    from ctbpf.cli import top  # noqa: PLC0415

    prev = top.take_sample(pin_dir)
    took = []
    for _ in range(runs):
        t0 = time.perf_counter()
        cur = top.take_sample(pin_dir)
        top.render(top.compute_frame(prev, cur))
        took.append(time.perf_counter() - t0)
        prev = cur
    return common.spread(took)


def targets(lst: dict, rss: dict | None, top_s: dict | None, size: str) -> list[dict]:
    rows = []
    base = lst.get("conntrack -L", {}).get("wall_s")
    for out in OUTPUTS:
        mine = lst[out]["wall_s"]
        speedup = base["median"] / mine["median"] if base else None
        if out == "json":
            goal = f"<= {TARGET_JSON_RATIO:g}x conntrack -L"
            met = None if speedup is None else 1 / speedup <= TARGET_JSON_RATIO
        else:
            goal = f">= 1x as fast as conntrack -L (stretch {STRETCH_SPEEDUP:g}x)"
            met = None if speedup is None else speedup >= 1
        rows.append(common.target_row(
            f"list {size}: `ctbpf list -o {out}` vs `conntrack -L`", "s", mine, goal, met,
            baseline=base, baseline_name="conntrack -L",
            note=("baseline skipped" if speedup is None else
                  f"{speedup:.2f}x as fast" if speedup >= 1 else f"{1 / speedup:.2f}x slower")))
    first = lst["proc"]["first_line_s"]
    rows.append(common.target_row(f"list {size}: first line of `ctbpf list`", "s", first,
                                  f"<= {TARGET_FIRST_LINE_S:g}",
                                  first["median"] <= TARGET_FIRST_LINE_S,
                                  baseline=lst.get("conntrack -L", {}).get("first_line_s"),
                                  baseline_name="conntrack -L"))
    if rss:
        small, big = rss["small_mb"], lst["proc"]["rss_mb"]
        rows.append(common.target_row(
            f"list {size}: peak RSS of `ctbpf list` (MB)", "MB", big,
            f"bounded: <= 1.25x its RSS at {rss['small_entries']} entries",
            big["median"] <= 1.25 * small["median"], baseline=small,
            baseline_name=f"ctbpf list at {rss['small_entries']}"))
    if top_s:
        rows.append(common.target_row(f"top {size}: one refresh", "s", top_s,
                                      f"<= {TARGET_TOP_S:g}", top_s["median"] <= TARGET_TOP_S))
    return rows


def summary_lines(lst: dict, rss: dict | None, top_s: dict | None) -> list[str]:
    lines = []
    for name, v in lst.items():
        if not isinstance(v, dict) or "wall_s" not in v:
            continue
        w, c, f, r = v["wall_s"], v["cpu_s"], v["first_line_s"], v["rss_mb"]
        label = name if name == "conntrack -L" else f"ctbpf list -o {name}"
        lines.append(f"  {label:<22} wall {w['median']:.3f} s [{w['min']:.3f}, {w['max']:.3f}]"
                     f"  cpu {c['median']:.3f} s  first line {f['median']:.3f} s"
                     f"  peak RSS {r['median']:.0f} MB  ({v['bytes'] / 1e6:.0f} MB out)")
    if rss:
        s = rss["small_mb"]
        lines.append(f"  {'ctbpf list -o proc':<22} peak RSS at {rss['small_entries']} entries "
                     f"{s['median']:.0f} MB [{s['min']:.0f}, {s['max']:.0f}]")
    if top_s:
        lines.append(f"  {'ctbpf top refresh':<22} {top_s['median']:.3f} s [{top_s['min']:.3f},"
                     f" {top_s['max']:.3f}]")
    return lines
