"""The metric names deploy/ relies on (deploy_contract.py) against what
ctbpf's collector really yields: its collect() is run on made-up counters
and table occupancy (no BPF needed) and the exposition text is parsed.

A rename in ctbpf/agent/metrics.py then fails here rather than silently emptying
a dashboard panel or disarming an alert. The sweeper's families come from
its SweepStats through the collector's `extra` hook (as the daemon's
metrics service wires them), fed here with a few observed passes.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from deploy_contract import COLLECTOR_METRICS, SWEEPER_METRICS, label_values


def _raw_table(entries: list[tuple[int, int]]) -> tuple[bytes, bytes, int]:
    """What table.read_raw returns for entries of (proto, state), all live."""
    import time

    from ctbpf import abi

    keys, values = bytearray(), bytearray()
    for proto, state in entries:
        key, entry = abi.CtKey(), abi.CtEntry()
        key.proto = proto
        key.family = 2
        entry.state = state
        entry.expires = abi.ticks(time.monotonic_ns() + 3600 * 10**9)
        keys += bytes(key)
        values += bytes(entry)
    return bytes(keys), bytes(values), len(entries)


@pytest.fixture
def exposition(monkeypatch, tmp_path) -> str:
    """The collector's exposition text, its map reads replaced by made-up
    tables (a TCP entry in every TCP state, a UDP and an ICMP one, in each
    table) and counters (every one reads 7)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ctbpf import abi
    from ctbpf.agent import metrics, sweepcore
    from ctbpf.datapath import stats, table

    entries = [(6, state) for state in abi.TCP_STATE_NAMES] + [(17, 0), (1, 0)]
    monkeypatch.setattr(table, "read_raw", lambda pin_dir, name: _raw_table(entries))
    monkeypatch.setattr(stats, "read_counters", lambda pin_dir: [7] * stats.COUNT)
    sweep_stats = sweepcore.SweepStats()
    for duration in (0.002, 0.004, 0.3):
        sweep_stats.observe(duration)
    sweep_stats.passes, sweep_stats.deleted_total, sweep_stats.interval = 3, 12, 4.0
    registry = CollectorRegistry()
    registry.register(metrics.TrackerCollector(
        tmp_path, limit=lambda: 65536, extra=lambda: metrics.sweeper_families(sweep_stats)))
    return generate_latest(registry).decode()


def _samples(text: str) -> list[tuple[str, dict[str, str]]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels) for fam in text_string_to_metric_families(text)
            for s in fam.samples]


def test_collector_yields_every_contract_metric(exposition):
    names = {name for name, _ in _samples(exposition)}
    missing = (COLLECTOR_METRICS | SWEEPER_METRICS) - names
    assert not missing, f"deploy/ relies on metrics ctbpf does not export: {sorted(missing)}"


def test_label_values_in_the_contract_are_the_collectors(exposition):
    """The label values deploy/ may match on (states, reasons, tables,
    protocols) are those the collector writes, and the other way round."""
    written: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name, labels in _samples(exposition):
        for label, value in labels.items():
            written[(name, label)].add(value)
    for key, allowed in label_values().items():
        assert written[key], f"the collector writes no {key[0]}{{{key[1]}}}"
        assert written[key] <= allowed, (key, written[key] - allowed)
        if key != ("ctbpf_flow_entries", "proto"):   # only the protocols seen are written
            assert written[key] == allowed, (key, allowed - written[key])


def test_limit_is_per_table(exposition):
    """The alert and the dashboard divide each table by the limit: it must be
    one value per target, with no table label."""
    limits = [labels for name, labels in _samples(exposition) if name == "ctbpf_entries_limit"]
    assert limits == [{}]


def test_sweeper_duration_is_a_histogram_in_seconds(exposition):
    samples = _samples(exposition)
    buckets = [labels["le"] for name, labels in samples
               if name == "ctbpf_sweeper_duration_seconds_bucket"]
    assert buckets and buckets[-1] == "+Inf"
    count = next(v for v in _values(exposition, "ctbpf_sweeper_duration_seconds_count"))
    total = next(v for v in _values(exposition, "ctbpf_sweeper_duration_seconds_sum"))
    assert count == 3 and abs(total - 0.306) < 1e-9


def _values(text: str, sample_name: str):
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample_name:
                yield s.value
