"""`ctbpf set` on a running tracker: every value checked first, then written
at once through ctbpf.datapath.configmap; a new table size goes through a
resize (the daemon rebuilds its tables with their entries).
"""

from __future__ import annotations

from pathlib import Path

from ctbpf.agent.configfile import LIMIT_NAMES
from ctbpf.datapath.configmap import read_max, write_values
from ctbpf.tunables import BY_NAME, ENTRIES_PER_BUCKET

def check_limits(values: dict[str, int], current_max: int) -> list[str]:
    """Problems with max/buckets on a running tracker: its table size is fixed
    until it is restarted (equal values are fine)."""
    problems = []
    for name in LIMIT_NAMES:
        if name not in values:
            continue
        wanted = values[name] * (ENTRIES_PER_BUCKET if name == "buckets" else 1)
        if wanted != current_max:
            problems.append(f"{name}: the table size is fixed while the tracker runs (max "
                            f"{current_max} now); restart it with `ctbpf run --max {wanted}` "
                            f"to change it")
    return problems


def set_values(pin_dir: Path, values: dict[str, int]) -> list[str]:
    """`ctbpf set`: everything checked first, then written at once. Returns
    one line per name given, in order: `name: old -> new` or `name: v (unchanged)`."""
    current_max = read_max(pin_dir)
    lines = []
    if check_limits(values, current_max):
        # A new table size: reload the tables with their entries first, so
        # that a refused size (smaller than the live entries) changes nothing.
        from ctbpf.agent.resize import apply_limits  # noqa: PLC0415

        lines += apply_limits(pin_dir, values)
        values = {n: v for n, v in values.items() if n not in LIMIT_NAMES}
    changes = write_values(pin_dir, {n: v for n, v in values.items() if n in BY_NAME})
    for name, value in values.items():
        old, new = changes.get(name, (value, value))
        if name == "buckets":
            old = new = value
        lines.append(f"{name}: {old} -> {new}" if old != new else f"{name}: {new} (unchanged)")
    return lines
