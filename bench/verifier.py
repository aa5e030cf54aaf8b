"""The verifier's budget: instructions it processes for each of the
datapath's programs on this kernel (limit 1,000,000 per program), the
figures docs/datapath.md records.

    python -m bench.verifier
"""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path

LIMIT = 1_000_000
_PROCESSED = re.compile(r"^processed (\d+) insns", re.M)


def programs() -> list[tuple[str, str]]:
    """(function, kind) of every program the loader loads, hook by hook."""
    from ctbpf.datapath.progs import STAGE_FUNCS, SWEEP_FUNC, TC_EGRESS_FUNC, XDP_FUNC

    out = [(XDP_FUNC, "xdp")]
    out += [(n, "xdp") for n, table, _ in STAGE_FUNCS if table == "ct_jump_xdp"]
    out += [(TC_EGRESS_FUNC, "tc")]
    out += [(n, "tc") for n, table, _ in STAGE_FUNCS if table == "ct_jump_tc"]
    return out + [(SWEEP_FUNC, "xdp")]


def measure() -> dict[str, int]:
    """Compile the datapath once with the verifier's statistics on, load
    every program, and read how many instructions each cost."""
    import bcc

    from ctbpf.datapath.features import captured_stderr
    from ctbpf.datapath.loader import program_source, remove_pins

    pin = Path("/sys/fs/bpf") / f"ctbpf-verifier-{secrets.token_hex(3)}"
    pin.mkdir()
    out: dict[str, int] = {}
    try:
        b = bcc.BPF(text=program_source().encode(), debug=bcc.DEBUG_BPF,
                    cflags=[f'-DCT_PIN_DIR="{pin}"', "-DCT_ASSURED_MAX=61440", "-DCT_NEW_MAX=4096",
                            "-Wno-unused-function"])
        for name, kind in programs():
            with captured_stderr() as said:
                b.load_func(name.encode(), bcc.BPF.XDP if kind == "xdp" else bcc.BPF.SCHED_CLS)
            counts = _PROCESSED.findall(said[0])
            out[name] = int(counts[-1]) if counts else -1
        b.cleanup()
    finally:
        remove_pins(pin)
        if pin.exists():
            for p in pin.glob("*"):
                p.unlink()
            pin.rmdir()
    return out


def main() -> int:
    counts = measure()
    width = max(map(len, counts))
    for name, n in counts.items():
        print(f"{name:<{width}}  {n:>9,}  {n / LIMIT:6.1%} of {LIMIT:,}")
    return 0 if all(0 <= n < LIMIT for n in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
