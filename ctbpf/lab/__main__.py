"""``python3 -m ctbpf.lab cleanup [GLOB] [--force]`` / ``python3 -m ctbpf.lab time``."""

from __future__ import annotations

import sys
import time
from typing import Sequence
from ctbpf.lab.netns import DEFAULT_PREFIX_GLOB, Lab, LabError, cleanup_stale

def _main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m ctbpf.lab cleanup [GLOB] [--force]`` / ``python3 -m ctbpf.lab time``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python3 -m ctbpf.lab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cleanup", help="remove stale lab namespaces")
    c.add_argument("glob", nargs="?", default=DEFAULT_PREFIX_GLOB)
    c.add_argument("--force", action="store_true", help="also labs whose owner is alive")
    sub.add_parser("time", help="build and remove one lab, print timings as JSON")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "cleanup":
            for name in cleanup_stale(args.glob, force=args.force):
                print(name)
        else:
            t0 = time.monotonic()
            lab = Lab()
            up = time.monotonic() - t0
            t1 = time.monotonic()
            lab.close()
            print(json.dumps({"prefix": lab.prefix, "setup_s": round(up, 4),
                              "teardown_s": round(time.monotonic() - t1, 4)}))
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
