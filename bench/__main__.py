"""Run the benchmarks: `python -m bench` runs them all, `python -m bench NAME`
only the named ones. Results go to bench/results/<date>-<name>.json, are
merged into bench/results/<date>.json, and docs/performance.md is
regenerated from the newest result of every benchmark (bench/report.py);
`--report-only` does only the last step."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import BENCHMARKS, report

RESULTS = Path(__file__).resolve().parent / "results"


def _host() -> dict:
    """What the report says about the machine, beyond platform's."""
    out = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                out["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu_model"] = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        out["mem_gib"] = round(kib / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return out


def _modules():
    return {name: importlib.import_module(f"{__package__}.{name}") for name in BENCHMARKS}


def main(argv: list[str] | None = None) -> int:
    modules = _modules()
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    opt_in = [n for n, mod in modules.items() if getattr(mod, "OPT_IN", False)]
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)} but the "
                         f"opt-in {', '.join(opt_in)})")
    ap.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                    help="where the JSON results go (default bench/results)")
    ap.add_argument("--no-save", action="store_true",
                    help="print only: write no result file and leave docs/performance.md alone")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: regenerate docs/performance.md from the saved results")
    ap.add_argument("--doc", type=Path, default=report.DOC, metavar="FILE",
                    help="the generated report (default docs/performance.md)")
    for name, mod in modules.items():
        mod.add_arguments(ap.add_argument_group(f"{name}: {mod.HELP}"))
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in modules]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    if args.report_only:
        if args.names or args.no_save:
            ap.error("--report-only runs nothing: no NAME, no --no-save")
        print(f"-> {report.write_report(args.results, args.doc, modules)}", flush=True)
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (it loads BPF programs)", file=sys.stderr)
        return 1
    failed = 0
    days = set()
    for name in args.names or [n for n in modules if n not in opt_in]:
        mod = modules[name]
        print(f"== {name}: {mod.HELP}", flush=True)
        started = time.time()
        load_before = os.getloadavg()
        try:
            result = mod.run(args)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"bench {name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
            continue
        result = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                           time.localtime(started)),
                  "host": {"kernel": platform.release(), "machine": platform.machine(),
                           "cpus": os.cpu_count(), "python": platform.python_version(),
                           **_host(),
                           # other work on the machine shows here: wall >> cpu
                           "loadavg_before": [round(x, 2) for x in load_before],
                           "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
                  "command": f".venv/bin/python -m bench {name}",
                  "elapsed_s": round(time.time() - started, 1), **result}
        print(mod.summary(result), flush=True)
        if not args.no_save:
            args.results.mkdir(parents=True, exist_ok=True)
            day = time.strftime("%Y-%m-%d", time.localtime(started))
            path = args.results / f"{day}-{name}.json"
            path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"-> {path}", flush=True)
            days.add(day)
    if not args.no_save:
        for day in sorted(days):
            print(f"-> {report.merge_day(args.results, day)}", flush=True)
        print(f"-> {report.write_report(args.results, args.doc, modules)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
