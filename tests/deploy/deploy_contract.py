"""What deploy/ may rely on: the metrics ctbpf exports, and small PromQL
helpers to check queries against them.

ctbpf/agent/metrics.py does not (yet) publish its list of metric names, so the
contract is kept here, by hand: the names the dashboard, the alert rules
and the PodMonitor may use. tests/deploy/test_metrics_contract.py checks it
against what ctbpf's collector really yields, so a rename on either side
fails a test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

#: Metric families ctbpf's collector yields (ctbpf/agent/metrics.py), as scraped:
#: counters with their `_total`, the info metric with its `_info`.
COLLECTOR_METRICS = frozenset({
    "ctbpf_entries",                    # {table}
    "ctbpf_flow_entries",               # {table, proto, state}
    "ctbpf_entries_limit",
    "ctbpf_packets_total",              # {state}
    "ctbpf_invalid_packets_total",      # {reason}
    "ctbpf_stat_found_total",
    "ctbpf_stat_invalid_total",
    "ctbpf_stat_ignore_total",
    "ctbpf_stat_insert_total",
    "ctbpf_stat_insert_failed_total",
    "ctbpf_stat_early_drop_total",
    "ctbpf_expired_total",
    "ctbpf_datapath_deletes_total",
    "ctbpf_promotions_total",
    "ctbpf_demotions_total",
    "ctbpf_events_lost_total",
    "ctbpf_expiry_index_lost_total",
    "ctbpf_dropped_packets_total",      # {cause}
    "ctbpf_untracked_no_stage_total",
    "ctbpf_icmp_errors_total",
    "ctbpf_non_ip_frames_total",
    "ctbpf_build_info",                 # {version, layout_version}
})

#: The sweeper's own families (ctbpf/agent/sweeper.py, yielded through the
#: collector's `extra`); the duration is a histogram.
SWEEPER_METRICS = frozenset({
    "ctbpf_sweeper_runs_total",
    "ctbpf_sweeper_duration_seconds_bucket",
    "ctbpf_sweeper_duration_seconds_sum",
    "ctbpf_sweeper_duration_seconds_count",
    "ctbpf_sweeper_deleted_total",
    "ctbpf_sweeper_interval_seconds",
    "ctbpf_sweeper_index_keys",
    "ctbpf_sweeper_passes_total",       # {kind}
    "ctbpf_sweeper_index_missed_total",
})

#: Prometheus' own per-target series.
PROMETHEUS_METRICS = frozenset({"up"})

EXPORTED = COLLECTOR_METRICS | SWEEPER_METRICS | PROMETHEUS_METRICS

def label_values() -> dict[tuple[str, str], frozenset[str]]:
    """(metric, label) -> the values ctbpf can put there, from the ABI."""
    from ctbpf import abi
    from ctbpf.datapath import table

    # ctbpf/datapath/occupancy.py names the tables after their pinned maps, minus "ct_"
    tables = frozenset(name.removeprefix("ct_") for name in table.TABLES)
    tcp_states = frozenset(abi.TCP_STATE_NAMES.values()) | {""}
    return {
        ("ctbpf_packets_total", "state"): frozenset(abi.PKT_STATE_NAMES.values()),
        ("ctbpf_invalid_packets_total", "reason"): frozenset(abi.INVALID_REASON_NAMES.values()),
        ("ctbpf_entries", "table"): tables,
        ("ctbpf_flow_entries", "table"): tables,
        ("ctbpf_flow_entries", "proto"): frozenset(table.PROTO_NAMES.values()),
        ("ctbpf_flow_entries", "state"): tcp_states,
    }


# --------------------------------------------------------------------------
# PromQL, just enough of it

PROMQL_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')

#: Grafana's variables, replaced by something PromQL accepts.
_GRAFANA_VARS = [
    (re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}"),
     "5m"),
    (re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*"),
     "grafana_var"),
]


def expand_grafana(expr: str) -> str:
    for pattern, replacement in _GRAFANA_VARS:
        expr = pattern.sub(replacement, expr)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (no function names, no
    keywords, no labels)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def equality_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every `metric{label="value"}` (=, != and the
    alternatives of a plain =~/!~ like "a|b") in an expression."""
    found = []
    for sel in _SELECTOR.finditer(expr):
        metric, body = sel.group(1), sel.group(2)
        for m in _MATCHER.finditer(body):
            label, op, value = m.groups()
            if "$" in value:        # a Grafana variable: checked at run time
                continue
            if op in ("=", "!="):
                found.append((metric, label, value))
            elif re.fullmatch(r"[A-Za-z0-9_|]+", value):
                found.extend((metric, label, v) for v in value.split("|"))
    return found


# --------------------------------------------------------------------------
# tools


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def need_tool(tool: str, package: str) -> str:
    """The path of `tool`; skip without it, or fail under CI=true (where
    scripts/setup.sh must have installed Debian's `package`)."""
    path = shutil.which(tool)
    if path is None:
        reason = (f"needs `{tool}` (Debian package `{package}`, installed by scripts/setup.sh: "
                  f"run `make setup`)")
        if in_ci():
            pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
        pytest.skip(reason)
    return path


def run_tool(args: list[str], cwd: Path | None = None, timeout: float = 120,
             env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(map(str, proc.args))} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
