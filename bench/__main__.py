"""Run the benchmarks: `python -m bench` runs them all, `python -m bench NAME`
only the named ones. Results go to bench/results/<date>-<name>.json."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import BENCHMARKS

RESULTS = Path(__file__).resolve().parent / "results"


def _modules():
    return {name: importlib.import_module(f"{__package__}.{name}") for name in BENCHMARKS}


def main(argv: list[str] | None = None) -> int:
    modules = _modules()
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    ap.add_argument("--results", type=Path, default=RESULTS, metavar="DIR",
                    help="where the JSON results go (default bench/results)")
    ap.add_argument("--no-save", action="store_true", help="print only, write no result file")
    for name, mod in modules.items():
        mod.add_arguments(ap.add_argument_group(f"{name}: {mod.HELP}"))
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in modules]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}")
    if os.geteuid() != 0:
        print("bench: needs root (it loads BPF programs)", file=sys.stderr)
        return 1
    failed = 0
    for name in args.names or BENCHMARKS:
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
