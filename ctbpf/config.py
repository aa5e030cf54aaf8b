"""Tunables by name: values from `ctbpf set` and from the TOML config file,
checked against ctbpf.tunables; reading and writing them on a running
datapath; where each current value comes from; and the daemon's reload of
its config file on SIGHUP.

The config file (`ctbpf run --config FILE`, see deploy/ctbpf.toml)::

    max = 65536              # optional: conntrack_max, entries per table
    buckets = 8192           # optional: hashsize; max = 8 x buckets if max is not given
    [tunables]
    tcp_timeout_established = 432000
    tcp_loose = true

With a config file, the datapath's tunables are the file's values, and the
defaults for what it leaves out, at start and after every SIGHUP; a
`ctbpf set` lasts until then. Without one, a restart keeps the values the
pinned maps hold.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import abi, bpfsys, pins, policy, tunables
from .errors import CtbpfError, UsageError
from .loader import read_config, write_raw_config
from .tunables import ALL_BY_NAME, BY_NAME, ENTRIES_PER_BUCKET, Tunable


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
BOOL_ALLOWED = "0/1, true/false, yes/no or on/off"
LIMIT_NAMES = tuple(t.name for t in tunables.LIMITS)

# Names people bring from the kernel's sysctls that differ by more than the prefix.
_ALIASES = {"hashsize": "buckets", "conntrack_max": "max", "conntrack_buckets": "buckets"}
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


class ConfigErrors(UsageError):
    """Several problems at once (one line each), e.g. every bad pair of a `ctbpf set`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if len(problems) == 1
                         else f"{problems[0]} (and {len(problems) - 1} more)")
        self.problems = problems


# --------------------------------------------------------------------------
# names and values


def known_names() -> list[str]:
    return list(ALL_BY_NAME)


def unknown_message(name: str) -> str:
    """One line for a name that is no tunable: the likely one, or all of them."""
    base = name.strip().rsplit(".", 1)[-1]
    base = base.removeprefix("nf_conntrack_")
    if base in _ALIASES:
        return f"{name}: unknown tunable; did you mean {_ALIASES[base]}? (ctbpf's name for it)"
    if base != name and base in ALL_BY_NAME:
        return (f"{name}: unknown tunable; did you mean {base}? (the kernel's sysctl names "
                f"without the nf_conntrack_ prefix)")
    close = _close_matches(base)
    if close:
        return f"{name}: unknown tunable; did you mean {' or '.join(close)}?"
    return f"{name}: unknown tunable; known: {', '.join(known_names())}"


def _close_matches(name: str) -> list[str]:
    """The best few known names: within 0.1 of the closest by similarity,
    or containing the name (`established` -> tcp_timeout_established)."""
    scored = sorted(((difflib.SequenceMatcher(None, name, n).ratio(), n) for n in known_names()),
                    reverse=True)
    best = scored[0][0]
    close = [n for r, n in scored if r >= 0.6 and r >= best - 0.1]
    if not close and len(name) >= 3:
        close = [n for n in known_names() if name in n]
    return close[:3]


def lookup(name: str) -> Tunable:
    try:
        return ALL_BY_NAME[name]
    except KeyError:
        raise UsageError(unknown_message(name)) from None


def _show(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return repr(raw)
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return "an array"
    return str(raw)


def expected(t: Tunable) -> str:
    """What a tunable accepts, for error messages and `ctbpf config`."""
    if t.unit == "bool":
        return BOOL_ALLOWED
    if t.unit == "s":
        return f"an integer number of seconds, {t.minimum} to {t.maximum}"
    return f"an integer, {t.minimum} to {t.maximum}"


def parse_value(t: Tunable, raw: object) -> int:
    """A value from the command line (str) or TOML (int, bool, str) as the
    integer the datapath stores; UsageError naming the tunable otherwise."""
    if t.unit == "bool":
        if isinstance(raw, bool):
            return int(raw)
        if isinstance(raw, int) and raw in (0, 1):
            return raw
        if isinstance(raw, str):
            word = raw.strip().lower()
            if word in TRUE_WORDS:
                return 1
            if word in FALSE_WORDS:
                return 0
        raise UsageError(f"{t.name}: expected {BOOL_ALLOWED}, got {_show(raw)}")
    what = "an integer number of seconds" if t.unit == "s" else "an integer"
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise UsageError(f"{t.name}: expected {what}, got {_show(raw)}")
    if isinstance(raw, str):
        if not _INTEGER.match(raw.strip()):
            raise UsageError(f"{t.name}: expected {what}, got {_show(raw)}")
        raw = int(raw.strip())
    if not t.minimum <= raw <= t.maximum:
        unit = " seconds" if t.unit == "s" else ""
        raise UsageError(f"{t.name}: {raw} is out of range: allowed {t.minimum} to "
                         f"{t.maximum}{unit}")
    return raw


def parse_assignments(pairs: list[str]) -> dict[str, int]:
    """`NAME=VALUE` arguments, all checked: ConfigErrors lists every bad one."""
    values: dict[str, int] = {}
    problems: list[str] = []
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            problems.append(f"{pair}: expected NAME=VALUE (e.g. tcp_timeout_established=3600)")
            continue
        try:
            t = lookup(name)
            value = parse_value(t, raw)
        except UsageError as e:
            problems.append(str(e))
            continue
        if name in values:
            problems.append(f"{name}: given twice")
            continue
        values[name] = value
    if problems:
        raise ConfigErrors(problems)
    return values


# --------------------------------------------------------------------------
# the config file


@dataclass
class ConfigFile:
    path: Path
    tunables: dict[str, int] = field(default_factory=dict)   # datapath tunables it sets
    max: int | None = None
    buckets: int | None = None
    digest: str = ""
    mode: str | None = None               # enforce-mode switch ("observe"/"enforce")
    policies: list | None = None          # ctbpf.policy.InterfacePolicy, when [policy] is given
    forced: set = field(default_factory=set)

    def effective_max(self) -> int | None:
        """conntrack_max as the file gives it: max, else 8 x buckets, else None."""
        if self.max is not None:
            return self.max
        if self.buckets is not None:
            return self.buckets * ENTRIES_PER_BUCKET
        return None

    def datapath_values(self) -> dict[str, int]:
        """Every datapath tunable: the file's value, or the default."""
        return dict(tunables.defaults(), **self.tunables)

    def given(self) -> dict[str, int]:
        """Every name the file sets, limits included."""
        out = dict(self.tunables)
        if self.max is not None:
            out["max"] = self.max
        if self.buckets is not None:
            out["buckets"] = self.buckets
        return out


def parse_text(text: str, path: Path | str = "<config>") -> ConfigFile:
    """Parse and check a config file's text; UsageError (one line, naming
    the file and the key) at the first problem."""
    where = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where}: not valid TOML: {e}") from None
    cfg = ConfigFile(Path(path), digest=hashlib.sha256(text.encode()).hexdigest())
    limits: dict[str, int] = {}

    def limit(name: str, raw: object, label: str) -> None:
        if name in limits:
            raise UsageError(f"{where}: {name} is given twice (top level and [tunables])")
        try:
            limits[name] = parse_value(ALL_BY_NAME[name], raw)
        except UsageError as e:
            raise UsageError(f"{where}: {label}{e}") from None

    for key, raw in doc.items():
        if key == "mode":
            cfg.mode = policy.parse_mode(raw, f"{where}: mode")
            continue
        if key == "policy":
            cfg.policies, cfg.forced = policy.parse_policy_table(raw, where)
            policy.check(policy.PolicySet(cfg.mode or "observe", cfg.policies), cfg.forced)
            continue
        if key == "tunables":
            if not isinstance(raw, dict):
                raise UsageError(f"{where}: tunables must be a table ([tunables]), "
                                 f"got {_show(raw)}")
            continue
        if key in LIMIT_NAMES:
            limit(key, raw, "")
            continue
        if isinstance(raw, dict):
            raise UsageError(f"{where}: unknown table [{key}]; the file holds top-level "
                             f"{' and '.join(LIMIT_NAMES)} and mode, a [tunables] table and "
                             f"[policy.in.IFACE] / [policy.out.IFACE] tables")
        if key in BY_NAME:
            raise UsageError(f"{where}: {key} belongs in the [tunables] table")
        raise UsageError(f"{where}: unknown key {key!r} at the top level; the file holds "
                         f"top-level {' and '.join(LIMIT_NAMES)} and mode, a [tunables] table "
                         f"and [policy.in.IFACE] / [policy.out.IFACE] tables")
    for key, raw in doc.get("tunables", {}).items():
        if key in LIMIT_NAMES:
            limit(key, raw, "[tunables] ")
            continue
        if key not in BY_NAME:
            raise UsageError(f"{where}: [tunables] {unknown_message(key)}")
        try:
            cfg.tunables[key] = parse_value(BY_NAME[key], raw)
        except UsageError as e:
            raise UsageError(f"{where}: [tunables] {e}") from None
    cfg.max = limits.get("max")
    cfg.buckets = limits.get("buckets")
    return cfg


def load_file(path: str | os.PathLike) -> ConfigFile:
    """Read and check a config file; UsageError (one line) if it is unreadable or bad."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UsageError(f"config file {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {p}: not UTF-8 text") from None
    return parse_text(text, p)


def effective_max(cli_max: int | None, cfg: ConfigFile | None) -> int:
    """conntrack_max for `ctbpf run`: --max, else the file's, else the default."""
    if cli_max is not None:
        return cli_max
    from_file = cfg.effective_max() if cfg is not None else None
    return from_file if from_file is not None else tunables.DEFAULT_MAX


# --------------------------------------------------------------------------
# the running datapath


def _read_raw(pin_dir: Path):

    cfg = read_config(pin_dir)
    version = cfg.value[abi.const("CT_CFG_LAYOUT_VERSION")]
    if version != abi.LAYOUT_VERSION:
        raise CtbpfError(f"ct_config in {pins.display(pin_dir)} has layout version {version}, this build "
                         f"uses {abi.LAYOUT_VERSION}: not touching it")
    return cfg


def read_values(pin_dir: Path) -> dict[str, int]:
    """The datapath tunables in ct_config now."""
    return tunables.from_config(_read_raw(pin_dir))


def read_max(pin_dir: Path) -> int:
    """conntrack_max of the running tables (the maps' max_entries)."""
    fd = bpfsys.obj_get(str(pin_dir / "ct_new"))
    try:
        return bpfsys.map_info(fd).max_entries
    finally:
        os.close(fd)


def write_values(pin_dir: Path, values: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Read-modify-write of ct_config: only the named slots change (slots
    this build does not know keep their value). Returns {name: (old, new)}
    for every name given."""
    cfg = _read_raw(pin_dir)
    before = {name: int(cfg.value[BY_NAME[name].slot]) for name in values}
    for name, value in values.items():
        cfg.value[BY_NAME[name].slot] = value
    write_raw_config(pin_dir, cfg)
    return {name: (before[name], values[name]) for name in values}


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
        from .resize import apply_limits  # noqa: PLC0415

        lines += apply_limits(pin_dir, values)
        values = {n: v for n, v in values.items() if n not in LIMIT_NAMES}
    changes = write_values(pin_dir, {n: v for n, v in values.items() if n in BY_NAME})
    for name, value in values.items():
        old, new = changes.get(name, (value, value))
        if name == "buckets":
            old = new = value
        lines.append(f"{name}: {old} -> {new}" if old != new else f"{name}: {new} (unchanged)")
    return lines


# --------------------------------------------------------------------------
# sources: where each value comes from


def daemon_status(pin_dir: Path) -> dict | None:
    """daemon.json of this namespace's daemon, if it tracks on pin_dir."""
    from .daemon import run_dir  # noqa: PLC0415

    try:
        status = json.loads((run_dir() / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or not status.get("pin_dir"):
        return None
    theirs = status["pin_dir"]
    try:
        a, b = os.stat(theirs), os.stat(pin_dir)
        same = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    except OSError:
        same = os.path.normpath(theirs) == os.path.normpath(str(pin_dir))
    return status if same else None


def _source(value: int, default: int, in_file: int | None) -> str:
    if in_file is not None and value == in_file:
        return "file"
    if value == default:
        return "default"
    return "set"


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


# --------------------------------------------------------------------------
# the daemon: apply at start, reload on SIGHUP


def _say(line: str) -> None:
    print(f"ctbpf: {line}", file=sys.stderr, flush=True)


class Reloader:
    """A Daemon reload hook: re-read the config file and apply it. A bad file
    raises UsageError (the daemon prints it and keeps what runs)."""

    def __init__(self, daemon, path: Path, cli_max: int | None, running_max: int,
                 cli_mode: str | None = None) -> None:
        self.cli_mode = cli_mode
        self.daemon = daemon
        self.path = path
        self.cli_max = cli_max
        self.running_max = running_max

    def __call__(self) -> None:
        cfg = load_file(self.path)
        try:
            changes = write_values(self.daemon.pin_dir, cfg.datapath_values())
        except OSError as e:
            raise CtbpfError(f"cannot write ct_config: {e}") from None
        changed = [f"{n}: {old} -> {new}" for n, (old, new) in changes.items() if old != new]
        if changed:
            for line in changed:
                _say(f"reload {self.path}: {line}")
        else:
            _say(f"reload {self.path}: no change")
        for line in apply_policy(self.daemon.pin_dir, cfg, self.cli_mode):
            _say(f"reload {self.path}: {line}")
        wanted = effective_max(self.cli_max, cfg)
        if wanted != self.running_max:
            _say(f"reload {self.path}: max {wanted} needs a restart (`ctbpf run --max "
                 f"{wanted}`); the tables keep {self.running_max} entries")
        self.daemon.write_status(config_sha256=cfg.digest, config_loaded=time.time())


def apply_policy(pin_dir: Path, cfg: ConfigFile | None, cli_mode: str | None) -> list[str]:
    """Put the config's policy (and mode; --mode wins over the file's) in
    force. Without either, the pinned policy stays as it is (a restart
    keeps it, like the flows). Returns what changed."""
    has_policy = cfg is not None and cfg.policies is not None
    mode = cli_mode or (cfg.mode if cfg is not None else None)
    if not has_policy and mode is None:
        return []
    current, _ = policy.read(pin_dir)
    wanted = policy.PolicySet(mode or current.mode,
                              list(cfg.policies) if has_policy else list(current.policies))
    forced = set(cfg.forced) if has_policy else {p.name for p in current.policies}
    return policy.apply(pin_dir, wanted, forced)


def status_fields(cfg: ConfigFile | None) -> dict:
    """What daemon.json records about the config file."""
    if cfg is None:
        return {"config": None}
    return {"config": str(cfg.path), "config_sha256": cfg.digest, "config_loaded": time.time()}
