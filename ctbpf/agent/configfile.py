"""Tunables by name: values from `ctbpf set` and from the TOML config file,
checked against ctbpf.tunables.

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
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ctbpf import tunables
from ctbpf.errors import UsageError
from ctbpf.policy import model
from ctbpf.tunables import ALL_BY_NAME, BY_NAME, ENTRIES_PER_BUCKET, Tunable

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
            cfg.mode = model.parse_mode(raw, f"{where}: mode")
            continue
        if key == "policy":
            cfg.policies, cfg.forced = model.parse_policy_table(raw, where)
            model.check(model.PolicySet(cfg.mode or "observe", cfg.policies), cfg.forced)
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
