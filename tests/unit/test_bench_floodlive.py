"""bench/floodlive.py's arithmetic: which figure each target takes, and the
breakdown a missed target carries, from crafted runs (no lab)."""

import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import floodlive  # noqa: E402


def _run(flood, alone, with_streams, bps, established=4):
    m = {"flood": flood, "dropped_pps": with_streams, "passed_pps": 0.0, "srv0_rx_pps": alone,
         "throughput_bps": bps, "established_mid_stream": established, "stream_errors": []}
    if flood != "none":
        m.update(dropped_alone_pps=alone, srv0_rx_alone_pps=alone,
                 generator={"pps": 1e6, "attempted_pps": 4e6})
    return m


def _raw(alone, with_streams, kept):
    return {"none": [_run("none", 0, 0, 4e9) for _ in range(5)],
            "syn": [_run("syn", alone + i, with_streams, 4e9 * kept) for i in range(5)],
            "ack": [_run("ack", alone + i, with_streams, 4e9 * kept) for i in range(5)]}


def NF():  # noqa: N802 - the baseline's runs
    return _raw(1e6, 5e5, 0.5)


def _result(raw, monkeypatch):
    # no plot: a test must not write the tree's docs/img
    import bench.common  # noqa: PLC0415

    monkeypatch.setattr(bench.common, "plot_bars", lambda name, *a, **k: f"{name}.png")
    info = {"floor_xdp_drop": [{"dropped_pps": 2e6, "generator_pps": 2e6,
                                "generator_attempted_pps": 5e6}] * 5,
            "generator_cpu": 0, "router_and_streams_cpu": 1}
    args = SimpleNamespace(flood_runs=5, flood_seconds=1.5)
    return floodlive.result(list(raw), raw, info, args)


def test_the_drop_target_takes_the_rate_of_the_flood_alone(monkeypatch):
    res = _result({"nf_conntrack": NF(), "ctbpf-enforce": _raw(2e6, 1e6, 0.6)}, monkeypatch)
    syn = next(t for t in res["targets"] if t["figure"].startswith("SYN flood"))
    assert syn["ctbpf"]["median"] == 2e6 + 2 and syn["baseline"]["median"] == 1e6 + 2
    assert syn["ratio"] == 2.0 and syn["met"] is False
    # the miss is broken down against the veth's floor (2e6/s: 500 ns)
    assert "the veth floor 500" in syn["note"] and "10 x needs 100" in syn["note"]


def test_the_streams_target_needs_95_percent_and_every_entry(monkeypatch):
    res = _result({"nf_conntrack": NF(), "ctbpf-enforce": _raw(2e7, 1e6, 0.97)}, monkeypatch)
    rows = [t for t in res["targets"] if t["figure"].startswith("established streams")]
    assert len(rows) == 2 and all(t["met"] for t in rows)
    drop = next(t for t in res["targets"] if t["figure"].startswith("ACK flood"))
    assert drop["met"] is True and drop["ratio"] == 20.0

    lost = _raw(2e7, 1e6, 0.97)
    lost["syn"][2]["established_mid_stream"] = 3
    res = _result({"nf_conntrack": NF(), "ctbpf-enforce": lost}, monkeypatch)
    syn = next(t for t in res["targets"]
               if t["figure"].startswith("established") and "the SYN flood" in t["figure"])
    assert syn["met"] is False and "entries lost 1" in syn["note"]


def test_the_summary_names_the_floor_and_each_configuration(monkeypatch):
    res = _result({"nf_conntrack": NF(), "ctbpf-enforce": _raw(2e6, 1e6, 0.6)}, monkeypatch)
    text = floodlive.summary(res)
    assert "| nf_conntrack | syn |" in text and "| ctbpf-enforce | ack |" in text
    assert "XDP_DROP program alone dropped 2e+06" in text
