"""What every benchmark shares: spreads of repeated runs, the rows of the
report's target table, and plots.

A benchmark's run(args) returns a dict with, besides its own raw data:

    "targets": [target_row(...), ...]   one row per figure the issues set a
                                        target for (the report's table)
    "plots":   ["docs/img/NAME-....png"]  the PNGs it drew (plot_* below)

bench/report.py turns the rows of every result into docs/performance.md.
"""

from __future__ import annotations

import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG_DIR = ROOT / "docs" / "img"
MIN_RUNS = 5   # each figure is the median of at least this many runs


def spread(values, scale: float = 1.0, digits: int = 4) -> dict:
    """median / min / max (and n) of repeated measurements, times `scale`."""
    vals = [v * scale for v in values]
    if not vals:
        raise ValueError("no measurement to summarise")
    return {"median": round(statistics.median(vals), digits), "min": round(min(vals), digits),
            "max": round(max(vals), digits), "n": len(vals)}


def target_row(figure: str, unit: str, ctbpf: dict | float | None, target: str,
               met: bool | None, *, baseline: dict | float | None = None,
               baseline_name: str = "", ratio: float | None = None,
               note: str = "") -> dict:
    """One row of the report's table. `ctbpf` and `baseline` are spread()
    dicts (or plain numbers); `ratio` defaults to ctbpf/baseline medians;
    `met` is True, False, or None (not measurable here: `note` says why)."""
    def med(x):
        return x["median"] if isinstance(x, dict) else x
    if ratio is None and med(ctbpf) is not None and med(baseline):
        ratio = round(med(ctbpf) / med(baseline), 3)
    return {"figure": figure, "unit": unit, "ctbpf": ctbpf, "baseline": baseline,
            "baseline_name": baseline_name, "ratio": ratio, "target": target,
            "met": met, "note": note}


def format_value(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, dict):
        return f"{x['median']:g} [{x['min']:g}, {x['max']:g}]"
    return f"{x:g}"


def table(rows: list[dict]) -> str:
    """The target rows as a Markdown table."""
    out = ["| figure | ctbpf | baseline | ratio | target | met? |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = format_value(r["baseline"])
        if r.get("baseline_name") and r["baseline"] is not None:
            base = f"{base} ({r['baseline_name']})"
        met = {True: "yes", False: "**no**", None: "n/a"}[r["met"]]
        if r.get("note"):
            met = f"{met}: {r['note']}"
        out.append(f"| {r['figure']} ({r['unit']}) | {format_value(r['ctbpf'])} | {base} | "
                   f"{format_value(r['ratio'])} | {r['target']} | {met} |")
    return "\n".join(out)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")   # no screen here
    import matplotlib.pyplot as plt
    return plt


def plot_bars(name: str, title: str, ylabel: str, groups: dict[str, dict[str, dict]]) -> str:
    """Grouped bars with min-max whiskers: groups = {group: {series: spread}}.
    Writes docs/img/<name>.png; returns its path relative to the repo."""
    plt = _pyplot()
    series = sorted({s for g in groups.values() for s in g})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(series)) / 2), 4))
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for j, g in enumerate(groups.values()):
            if s in g and g[s] is not None:
                v = g[s]
                xs.append(j + i * width)
                ys.append(v["median"])
                lo.append(v["median"] - v["min"])
                hi.append(v["max"] - v["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=s)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(list(groups), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, plt, name)


def plot_lines(name: str, title: str, xlabel: str, ylabel: str,
               series: dict[str, list[tuple[float, dict]]], logx: bool = True) -> str:
    """Lines with min-max bands: series = {label: [(x, spread), ...]}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0])
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1]["median"] for p in pts], marker="o", label=label)
        ax.fill_between(xs, [p[1]["min"] for p in pts], [p[1]["max"] for p in pts], alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, plt, name)


def _save(fig, plt, name: str) -> str:
    IMG_DIR.mkdir(parents=True, exist_ok=True)
    path = IMG_DIR / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(ROOT))


def add_generator_cells(result: dict, live: dict) -> dict:
    """A benchmark's result with its generator cells' result (bench/fwdlive.py,
    bench/floodlive.py) under "live", their targets and plots appended."""
    result["live"] = live
    result["targets"] = result["targets"] + live.pop("targets")
    result["plots"] = result["plots"] + live.pop("plots", [])
    return result
