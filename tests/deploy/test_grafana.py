"""deploy/grafana/ctbpf-dashboard.json: valid JSON, a well-formed dashboard,
and every query names only metrics ctbpf exports (deploy_contract.EXPORTED)
and is valid PromQL (promtool parses it as a recording rule)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from deploy_contract import (DEPLOY, EXPORTED, check_ok, equality_matchers, expand_grafana,
                             label_values, metric_names, need_tool, run_tool)

DASHBOARD = DEPLOY / "grafana" / "ctbpf-dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])   # panels of a collapsed row


def _exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel query."""
    return [(f"panel {p['id']} {p['title']!r} target {t.get('refId')}", t["expr"])
            for p in _panels(dash) for t in p.get("targets", [])]


def _variable_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) inside the query variables' label_values(...)."""
    out = []
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", q.strip())
        assert m, f"variable {var['name']}: expected label_values(query, label), got {q!r}"
        out.append((f"variable {var['name']}", m.group(1)))
    return out


def test_is_a_dashboard(dashboard):
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        assert key in dashboard, key
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_layout_fits_the_grid_without_overlaps(dashboard):
    cells = {}
    for p in _panels(dashboard):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_queries_use_the_datasource_variable(dashboard):
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names
    for p in _panels(dashboard):
        if p.get("targets"):
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", p["title"]
                # and they follow the job/instance pickers
                assert 'job="$job"' in t["expr"] and 'instance=~"$instance"' in t["expr"], (
                    f"{p['title']!r}: {t['expr']}")


def test_every_query_names_only_exported_metrics(dashboard):
    values = label_values()
    seen = set()
    for where, expr in _exprs(dashboard) + _variable_queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= EXPORTED, f"{where}: not exported by ctbpf: {sorted(names - EXPORTED)}"
        seen |= names
        for metric, label, value in equality_matchers(expr):
            if (metric, label) in values:
                assert value in values[(metric, label)], (
                    f"{where}: ctbpf never sets {metric}{{{label}={value!r}}}")
    # what issue 5 asks the dashboard to show
    wanted = {
        "entries by state": "ctbpf_flow_entries",
        "usage against the limit": "ctbpf_entries_limit",
        "packet rates by user-land state": "ctbpf_packets_total",
        "invalid reasons": "ctbpf_invalid_packets_total",
        "sweeper runs": "ctbpf_sweeper_runs_total",
        "sweeper duration": "ctbpf_sweeper_duration_seconds_bucket",
        "sweeper deletions": "ctbpf_sweeper_deleted_total",
    }
    missing = {what: m for what, m in wanted.items() if m not in seen}
    assert not missing, f"the dashboard does not show: {missing}"


def test_metric_name_parser():
    """The parser the checks above rely on: functions, keywords, labels,
    durations and Grafana variables are not metric names."""
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(foo_bucket{a="x:y", '
            'b=~"$v"}[$__rate_interval]))) / on (job) group_left bar_total offset 5m '
            '> bool 1e3 and baz unless count without (le) (qux{c!="d"})')
    assert metric_names(expand_grafana(expr)) == {"foo_bucket", "bar_total", "baz", "qux"}
    assert equality_matchers('m{state="invalid", s!="untracked", r=~"a|b", v=~"$x"}') == [
        ("m", "state", "invalid"), ("m", "s", "untracked"), ("m", "r", "a"), ("m", "r", "b")]


def test_every_query_is_valid_promql(dashboard, tmp_path):
    """promtool parses each query (Grafana variables replaced) as the
    expression of a recording rule."""
    promtool = need_tool("promtool", "prometheus")
    rules = []
    for i, (where, expr) in enumerate(_exprs(dashboard) + _variable_queries(dashboard)):
        rules.append({"record": f"grafana:query_{i}", "expr": expand_grafana(expr)})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_tool([promtool, "check", "rules", str(path)])
    check_ok(proc)
    assert f"{len(rules)} rules found" in proc.stdout
