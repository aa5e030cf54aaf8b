"""`ctbpf config`: every tunable with its value in the datapath, its
default, and where the value comes from (default, the daemon's config
file, or `ctbpf set`).
"""

from __future__ import annotations

from pathlib import Path

from ctbpf import tunables
from ctbpf.agent.configfile import load_file
from ctbpf.agent.runstatus import daemon_status
from ctbpf.datapath import pincheck, pins, sizing
from ctbpf.datapath.configmap import read_max, read_sizes, read_values
from ctbpf.errors import UsageError
from ctbpf.tunables import ENTRIES_PER_BUCKET, Tunable

# --------------------------------------------------------------------------
# sources: where each value comes from


def _source(value: int, default: int, in_file: int | None) -> str:
    if in_file is not None and value == in_file:
        return "file"
    if value == default:
        return "default"
    return "set"


def table_sizes(pin_dir: Path) -> tuple[int, int, int]:
    """(new_max, ct_assured's and ct_acct's sizes now) of the running tables."""
    return (read_sizes(pin_dir)[1], pincheck.pinned_size(pin_dir, "ct_assured"),
            pincheck.pinned_size(pin_dir, "ct_acct"))


def describe(pin_dir: Path) -> dict:
    """Every tunable with its value in the datapath, its default and its
    source: default, file (the daemon's config file gives it) or set
    (neither: changed at runtime). For max: option when `ctbpf run --max` gave it."""
    values = read_values(pin_dir)
    current_max = read_max(pin_dir)
    status = daemon_status(pin_dir)
    path = status.get("config") if status else None
    cfg, note = None, None
    if path:
        try:
            cfg = load_file(path)
        except UsageError as e:
            note = f"the config file cannot be read now ({e}); sources ignore it"
        else:
            loaded = status.get("config_sha256")
            if loaded and loaded != cfg.digest:
                note = (f"{path} changed since the daemon read it: `kill -HUP {status.get('pid')}` "
                        f"applies it")
    given = cfg.given() if cfg else {}
    rows = []
    for t in tunables.TUNABLES:
        v = values[t.name]
        rows.append(_row(t, v, _source(v, t.default, given.get(t.name))))
    file_max = cfg.effective_max() if cfg else None
    if file_max is not None and current_max == file_max:
        max_source = "file"
    elif current_max == tunables.DEFAULT_MAX:
        max_source = "default"
    else:
        max_source = "option"
    rows.append(_row(tunables.ALL_BY_NAME["max"], current_max, max_source))
    b = tunables.ALL_BY_NAME["buckets"]
    if "buckets" in given:
        rows.append(_row(b, given["buckets"], "file"))
    else:
        buckets = max(1, current_max // ENTRIES_PER_BUCKET)
        rows.append(_row(b, buckets, "default" if buckets == b.default else "max/8"))
    new_max, assured, acct = table_sizes(pin_dir)
    default_new = sizing.default_new_max(current_max)
    rows.append({**_row(tunables.NEW_MAX, new_max,
                        "default" if new_max == default_new else "option"), "default": default_new})
    start = min(sizing.ASSURED_START, current_max - new_max)
    rows.append({**_row(tunables.ASSURED_NOW, assured, "grown" if assured > start else "default"),
                 "default": start})
    start = min(sizing.ACCT_START, new_max + assured)
    rows.append({**_row(tunables.ACCT_NOW, acct, "grown" if acct > start else "default"),
                 "default": start})
    return {"pin_dir": pins.display(pin_dir), "config_file": path,
            "daemon_pid": status.get("pid") if status else None,
            "note": note, "tunables": rows}


def _row(t: Tunable, value: int, source: str) -> dict:
    return {"name": t.name, "value": value, "default": t.default, "source": source,
            "unit": t.unit, "minimum": t.minimum, "maximum": t.maximum, "doc": t.doc}


def text(desc: dict) -> str:
    rows = desc["tunables"]
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'NAME':<{width}}  {'VALUE':>9}  {'DEFAULT':>9}  SOURCE"]
    lines += [f"{r['name']:<{width}}  {r['value']:>9}  {r['default']:>9}  {r['source']}"
              for r in rows]
    if desc["config_file"]:
        lines.append(f"config file: {desc['config_file']} (daemon pid {desc['daemon_pid']})")
    else:
        lines.append("config file: none")
    if desc["note"]:
        lines.append(f"note: {desc['note']}")
    return "\n".join(lines)
