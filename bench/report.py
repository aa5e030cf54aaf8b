"""The benchmarks' results, gathered: bench/results/<date>.json (every
benchmark's result of that day) and docs/performance.md (generated: the
newest result of every benchmark).

`python -m bench` calls merge_day() for the days it ran and then
write_report(); `python -m bench --report-only` calls write_report() alone.

A benchmark's section in the report is its module's NOTES (Markdown), its
summary(result) and its plots; the summary table at the top holds the
"targets" rows of every result (bench.common.target_row), grouped by
benchmark in the order of bench.ORDER.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

from . import ORDER, common

ROOT = common.ROOT
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"

# <date>.json (a day's file) and <date>-<name>.json (one benchmark's run)
_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:-([A-Za-z0-9_]+))?\.json$")

_ROW_DEFAULTS = {"figure": "", "unit": "", "ctbpf": None, "baseline": None,
                 "baseline_name": "", "ratio": None, "target": "", "met": None, "note": ""}


# --------------------------------------------------------------------------
# result files


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _newer(a: dict | None, b: dict) -> bool:
    """Whether result b was started later than a (or a is missing). The
    "date" fields are ISO 8601 with the same offset on one machine, so they
    compare as strings; a result without one loses."""
    return a is None or str(b.get("date", "")) >= str(a.get("date", ""))


def day_path(results_dir: Path, day: str) -> Path:
    return results_dir / f"{day}.json"


def merge_day(results_dir: Path, day: str) -> Path:
    """Write <day>.json: what it held, updated by every <day>-<name>.json
    (the newer result of a benchmark wins). A partial run so replaces only
    its own benchmarks' part."""
    path = day_path(results_dir, day)
    old = _load(path) or {}
    benchmarks = dict(old.get("benchmarks", {})) if isinstance(old.get("benchmarks"), dict) else {}
    for f in sorted(results_dir.glob(f"{day}-*.json")):
        m = _FILE.match(f.name)
        if not m or m.group(1) != day or not m.group(2):
            continue
        result = _load(f)
        if result is None:
            continue
        name = str(result.get("benchmark") or m.group(2))
        if _newer(benchmarks.get(name), result):
            benchmarks[name] = result
    ordered = {n: benchmarks[n] for n in _ordered(benchmarks)}
    results_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"date": day, "benchmarks": ordered}, indent=1) + "\n")
    tmp.replace(path)
    return path


def latest(results_dir: Path) -> dict[str, tuple[dict, str]]:
    """{benchmark: (its newest result, the file it came from)} over every
    day's file and every per-benchmark file."""
    found: dict[str, tuple[dict, str]] = {}
    if not results_dir.is_dir():
        return found

    def offer(name: str, result: dict, source: Path) -> None:
        if _newer(found.get(name, (None,))[0], result):
            found[name] = (result, source.name)

    # day files first: a per-benchmark file of the same run then wins the tie
    files = sorted(results_dir.glob("*.json"), key=lambda p: (p.name.count("-") > 2, p.name))
    for f in files:
        m = _FILE.match(f.name)
        if not m:
            continue
        data = _load(f)
        if data is None:
            continue
        if m.group(2) is None:
            for name, result in (data.get("benchmarks") or {}).items():
                if isinstance(result, dict):
                    offer(str(name), result, f)
        else:
            offer(str(data.get("benchmark") or m.group(2)), data, f)
    return found


def _ordered(names) -> list[str]:
    names = list(names)
    return [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)


# --------------------------------------------------------------------------
# the Markdown


def normalize_row(row: dict) -> dict:
    """A target row with every key bench.common.table reads; rows written
    before target_row existed (or by hand) may lack unit, baseline_name or
    note. Pipes in the text would cut the table's cells."""
    out = dict(_ROW_DEFAULTS)
    out.update({k: v for k, v in row.items() if k in _ROW_DEFAULTS})
    for k in ("figure", "unit", "baseline_name", "target", "note"):
        out[k] = "" if out[k] is None else str(out[k]).replace("|", "\\|").replace("\n", " ")
    return out


def _cell(x) -> str:
    try:
        return common.format_value(x)
    except (KeyError, TypeError, ValueError):
        return str(x).replace("|", "\\|")


def _table_line(row: dict) -> str:
    """One row of bench.common.table; a unit-less figure has no "()"."""
    r = normalize_row(row)
    try:
        line = common.table([r]).splitlines()[-1]
    except (KeyError, TypeError, ValueError):   # a value format_value cannot print
        base = _cell(r["baseline"])
        if r["baseline_name"] and r["baseline"] is not None:
            base = f"{base} ({r['baseline_name']})"
        met = {True: "yes", False: "**no**"}.get(r["met"], "n/a")
        if r["note"]:
            met = f"{met}: {r['note']}"
        line = (f"| {r['figure']} ({r['unit']}) | {_cell(r['ctbpf'])} | {base} | "
                f"{_cell(r['ratio'])} | {r['target']} | {met} |")
    if not r["unit"]:
        line = line.replace(f"| {r['figure']} () |", f"| {r['figure']} |", 1)
    return line


def summary_table(results: Mapping[str, dict]) -> str:
    """Every target row of every result, one bold line per benchmark."""
    head = common.table([]).splitlines()
    lines = list(head)
    ncols = head[0].count("|") - 1
    for name in _ordered(results):
        rows = results[name].get("targets") or []
        lines.append(f"| **{name}** |" + " |" * (ncols - 1))
        if not rows:
            lines.append("| (no target rows) |" + " |" * (ncols - 1))
        for row in rows:
            lines.append(_table_line(row) if isinstance(row, dict)
                         else f"| {_cell(row)} |" + " |" * (ncols - 1))
    return "\n".join(lines)


def _machines(results: Mapping[str, dict]) -> list[str]:
    """One line per machine; results of the same machine (kernel, arch, CPU
    count, Python) are one, described with every detail any of them has."""
    hosts: dict[tuple, dict] = {}
    names: dict[tuple, list[str]] = {}
    for name in _ordered(results):
        h = results[name].get("host") or {}
        key = tuple(str(h.get(k, "?")) for k in ("kernel", "machine", "cpus", "python"))
        merged = hosts.setdefault(key, {})
        merged.update({k: v for k, v in h.items() if v not in (None, "")})
        names.setdefault(key, []).append(name)
    lines = []
    for key, h in hosts.items():
        parts = [str(h["os"])] if h.get("os") else []
        parts.append(f"kernel {h.get('kernel', '?')} ({h.get('machine', '?')})")
        cpu = f"{h.get('cpus', '?')} CPUs"
        if h.get("cpu_model"):
            cpu += f" ({h['cpu_model']})"
        parts.append(cpu)
        if h.get("mem_gib"):
            parts.append(f"{h['mem_gib']} GiB RAM")
        parts.append(f"Python {h.get('python', '?')}")
        lines.append(f"- {', '.join(parts)}"
                     + (f": {', '.join(names[key])}" if len(hosts) > 1 else ""))
    return lines


def _rel_image(path: str) -> str:
    """A plot's path (relative to the repository, as bench.common writes it)
    as the report links it: relative to docs/, where the report lives."""
    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    return Path(os.path.relpath(p, DOC.parent)).as_posix()


def _section(name: str, result: dict, source: str, module) -> list[str]:
    help_ = getattr(module, "HELP", "") if module is not None else ""
    out = [f"## {name}" + (f": {help_}" if help_ else ""), ""]
    h = result.get("host") or {}
    run = [f"Run {result.get('date', '?')}"]
    if result.get("elapsed_s") is not None:
        run.append(f"took {result['elapsed_s']} s")
    if h.get("loadavg_before") is not None:
        run.append(f"load average {h['loadavg_before'][0]} before, "
                   f"{(h.get('loadavg_after') or ['?'])[0]} after")
    out += [f"{', '.join(run)}. Command: `{result.get('command', f'.venv/bin/python -m bench {name}')}`."
            f" Result: `bench/results/{source}`.", ""]
    notes = (getattr(module, "NOTES", "") or "").strip() if module is not None else ""
    if notes:
        out += [notes, ""]
    text = ""
    if module is not None and hasattr(module, "summary"):
        try:
            text = module.summary(result)
        except Exception as e:  # noqa: BLE001 - an old result the module no longer reads
            text = f"(summary unavailable for this result: {type(e).__name__}: {e})"
    if text:
        out += ["```text", text.rstrip("\n"), "```", ""]
    for plot in result.get("plots") or []:
        out += [f"![{name}: {Path(str(plot)).stem}]({_rel_image(str(plot))})", ""]
    return out


def render(results: Mapping[str, tuple[dict, str]], modules: Mapping[str, object]) -> str:
    """docs/performance.md from {benchmark: (result, source file name)}."""
    plain = {n: r for n, (r, _) in results.items()}
    names = _ordered(results)
    out = [
        "<!-- Generated by `make bench` (bench/report.py): do not edit. Each benchmark's "
        "text is the NOTES string of its module, bench/<name>.py; edit it there. -->",
        "",
        "# Performance",
        "",
        "This page is generated by `make bench` from the newest result of every benchmark; "
        "edits go to the benchmarks' `NOTES` in `bench/<name>.py`, not here.",
        "",
        "## Reproducing",
        "",
        "- `make bench` runs every benchmark (it needs root) and regenerates this page.",
        "- `.venv/bin/python -m bench NAME [NAME ...]` runs some of them "
        f"({', '.join(f'`{n}`' for n in ORDER)}); `--help` lists their options.",
        "- `.venv/bin/python -m bench --report-only` rewrites this page from the saved "
        "results without running anything.",
        "- Raw results: `bench/results/<date>-<name>.json` for each run, merged into "
        "`bench/results/<date>.json` for each day.",
        "",
        "Each figure is the median of repeated runs with [min, max] after it. The machine "
        "is shared with other work, so the load average of each run is given with it.",
        "",
        "## Machine",
        "",
        *(_machines(plain) if plain else ["- no results yet"]),
        "",
        "## Targets",
        "",
    ]
    if plain:
        out += [summary_table(plain), ""]
        missing = [n for n in ORDER if n not in plain and n in modules]
        if missing:
            out += [f"No result yet for {', '.join(missing)}.", ""]
    else:
        out += ["No results yet: run `make bench`.", ""]
    for name in names:
        result, source = results[name]
        out += _section(name, result, source, modules.get(name))
    return "\n".join(out).rstrip("\n") + "\n"


def write_report(results_dir: Path = RESULTS, doc: Path = DOC,
                 modules: Mapping[str, object] | None = None) -> Path:
    if modules is None:
        modules = _import_modules()
    text = render(latest(results_dir), modules)
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
    return doc


def _import_modules() -> dict[str, object]:
    import importlib  # noqa: PLC0415

    from . import BENCHMARKS  # noqa: PLC0415

    out = {}
    for name in BENCHMARKS:
        try:
            out[name] = importlib.import_module(f"{__package__}.{name}")
        except Exception:  # noqa: BLE001 - a module being rewritten: its section goes bare
            pass
    return out
