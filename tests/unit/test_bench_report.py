"""bench/report.py: the day's merged result file and the generated
docs/performance.md, from crafted results in a temporary directory."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import ORDER, report  # noqa: E402
from bench.common import target_row  # noqa: E402

DAY = "2031-02-03"


def _result(name, date, targets=(), plots=(), **extra):
    return {"benchmark": name, "date": date, "elapsed_s": 12.5,
            "host": {"kernel": "6.18.0", "machine": "x86_64", "cpus": 2, "python": "3.11.2",
                     "os": "Debian GNU/Linux 12 (bookworm)", "cpu_model": "Test CPU",
                     "loadavg_before": [0.5, 0.4, 0.3], "loadavg_after": [0.9, 0.5, 0.3]},
            "command": f".venv/bin/python -m bench {name}",
            "targets": list(targets), "plots": list(plots), **extra}


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _module(name, notes="", fail=False):
    def summary(result):
        if fail:
            raise KeyError("figures")
        return f"{name} summary: {result['date']}"
    return SimpleNamespace(HELP=f"{name} help", NOTES=notes, summary=summary,
                           add_arguments=lambda g: None)


def test_merge_day_updates_only_the_benchmarks_that_ran(tmp_path):
    _write(tmp_path / f"{DAY}.json", {"date": DAY, "benchmarks": {
        "scale": _result("scale", f"{DAY}T08:00:00+0000", x="old scale"),
        "sweep": _result("sweep", f"{DAY}T08:00:00+0000", x="old sweep")}})
    _write(tmp_path / f"{DAY}-sweep.json", _result("sweep", f"{DAY}T09:00:00+0000", x="new sweep"))
    # an older per-benchmark file does not overwrite a newer merged result
    _write(tmp_path / f"{DAY}-scale.json", _result("scale", f"{DAY}T07:00:00+0000", x="older"))
    _write(tmp_path / f"{DAY}-datapath.json", _result("datapath", f"{DAY}T09:30:00+0000", x="dp"))
    # another day's files and stray files stay out
    _write(tmp_path / "2031-02-04-flood.json", _result("flood", "2031-02-04T01:00:00+0000"))
    (tmp_path / f"{DAY}-broken.json").write_text("{not json")

    path = report.merge_day(tmp_path, DAY)

    assert path == tmp_path / f"{DAY}.json"
    merged = json.loads(path.read_text())
    assert merged["date"] == DAY
    got = {name: r["x"] for name, r in merged["benchmarks"].items()}
    assert got == {"datapath": "dp", "scale": "old scale", "sweep": "new sweep"}
    # in the order of bench.ORDER
    assert list(merged["benchmarks"]) == [n for n in ORDER if n in got]


def test_merge_day_without_a_previous_day_file(tmp_path):
    _write(tmp_path / f"{DAY}-memory.json", _result("memory", f"{DAY}T10:00:00+0000"))
    merged = json.loads(report.merge_day(tmp_path, DAY).read_text())
    assert list(merged["benchmarks"]) == ["memory"]


def test_latest_takes_the_newest_result_of_each_benchmark_across_days(tmp_path):
    _write(tmp_path / "2031-02-01.json", {"date": "2031-02-01", "benchmarks": {
        "flood": _result("flood", "2031-02-01T10:00:00+0000", x="flood 1"),
        "sweep": _result("sweep", "2031-02-01T10:00:00+0000", x="sweep 1")}})
    _write(tmp_path / "2031-02-02-sweep.json", _result("sweep", "2031-02-02T10:00:00+0000",
                                                       x="sweep 2"))
    found = report.latest(tmp_path)
    assert {n: (r["x"], src) for n, (r, src) in found.items()} == {
        "flood": ("flood 1", "2031-02-01.json"), "sweep": ("sweep 2", "2031-02-02-sweep.json")}


def test_report_markdown(tmp_path):
    rows_dp = [target_row("packets per second", "Mpps", {"median": 2.5, "min": 2.0, "max": 3.0,
                                                         "n": 5}, ">= 2", True,
                          baseline=1.25, baseline_name="nf_conntrack")]
    # the sweep module's own row shape: no unit, baseline_name or note
    rows_sweep = [{"figure": "full sweep, s per million", "ctbpf": 0.48, "baseline": 0.64,
                   "ratio": 0.75, "target": "<= 0.5", "met": True, "probe": None},
                  {"figure": "a | piped figure", "ctbpf": None, "baseline": None, "ratio": None,
                   "target": "<= 0.1", "met": False, "note": "not shipped"}]
    _write(tmp_path / f"{DAY}-sweep.json", _result("sweep", f"{DAY}T09:00:00+0000", rows_sweep))
    _write(tmp_path / f"{DAY}-datapath.json", _result(
        "datapath", f"{DAY}T08:00:00+0000", rows_dp, plots=["docs/img/datapath-pps.png"]))
    _write(tmp_path / f"{DAY}-scale.json", _result("scale", f"{DAY}T08:30:00+0000"))
    modules = {"datapath": _module("datapath", notes="**Datapath** notes.\n\nSecond paragraph."),
               "sweep": _module("sweep", notes="Sweeper notes."),
               "scale": _module("scale", fail=True),
               "memory": _module("memory")}
    doc = tmp_path / "docs" / "performance.md"

    assert report.write_report(tmp_path, doc, modules) == doc
    text = doc.read_text()
    lines = text.splitlines()

    top = "\n".join(lines[:8])
    assert "generated by `make bench`" in top and "NOTES" in top
    assert "# Performance" in lines
    assert "`make bench`" in text and "`.venv/bin/python -m bench NAME" in text
    assert "--report-only" in text
    assert "Debian GNU/Linux 12 (bookworm), kernel 6.18.0 (x86_64), 2 CPUs (Test CPU)" in text

    # one summary table, grouped in the order of bench.ORDER
    assert text.count("| figure | ctbpf | baseline | ratio | target | met? |") == 1
    groups = [ln for ln in lines if ln.startswith("| **")]
    assert groups == [f"| **{n}** | | | | | |" for n in ("datapath", "scale", "sweep")]
    assert ("| packets per second (Mpps) | 2.5 [2, 3] | 1.25 (nf_conntrack) | 2 | >= 2 | yes |"
            in lines)
    assert "| full sweep, s per million | 0.48 | 0.64 | 0.75 | <= 0.5 | yes |" in lines
    assert "| a \\| piped figure | — | — | — | <= 0.1 | **no**: not shipped |" in lines
    assert "| (no target rows) | | | | | |" in lines
    assert "No result yet for memory." in text

    # sections in order, each with its notes, summary and plots
    heads = [ln for ln in lines if ln.startswith("## ")]
    assert heads == ["## Reproducing", "## Machine", "## Targets", "## datapath: datapath help",
                     "## scale: scale help", "## sweep: sweep help"]
    dp = text[text.index("## datapath"):text.index("## scale")]
    assert "**Datapath** notes.\n\nSecond paragraph." in dp
    assert f"datapath summary: {DAY}T08:00:00+0000" in dp
    assert "![datapath: datapath-pps](img/datapath-pps.png)" in dp
    assert f"bench/results/{DAY}-datapath.json" in dp
    assert "load average 0.5 before, 0.9 after" in dp
    sc = text[text.index("## scale"):text.index("## sweep")]
    assert "summary unavailable" in sc
    assert "Sweeper notes." in text[text.index("## sweep"):]


def test_report_with_no_results(tmp_path):
    doc = report.write_report(tmp_path / "none", tmp_path / "performance.md", {})
    assert "No results yet" in doc.read_text()


@pytest.mark.parametrize("row", [{"figure": "bare"}, {"figure": "odd", "ctbpf": "fast",
                                                       "baseline": {"median": 1}}])
def test_rows_the_common_table_cannot_print_still_render(row):
    line = report.summary_table({"x": {"targets": [row]}}).splitlines()[-1]
    assert line.startswith(f"| {row['figure']}") and line.count("|") == 7


def test_main_report_only_runs_nothing(tmp_path, monkeypatch):
    import bench.__main__ as bench_main

    ran = []
    fake = _module("sweep", notes="From main.")
    fake.run = lambda args: ran.append(args)
    monkeypatch.setattr(bench_main, "_modules", lambda: {"sweep": fake})
    _write(tmp_path / f"{DAY}-sweep.json", _result("sweep", f"{DAY}T09:00:00+0000"))
    doc = tmp_path / "perf.md"
    assert bench_main.main(["--report-only", "--results", str(tmp_path), "--doc", str(doc)]) == 0
    assert not ran
    assert "From main." in doc.read_text()


def test_machine_lines_merge_results_of_one_machine():
    rich = _result("sweep", f"{DAY}T09:00:00+0000")
    bare = _result("scale", f"{DAY}T08:00:00+0000")
    for k in ("os", "cpu_model"):
        del bare["host"][k]
    other = _result("flood", f"{DAY}T10:00:00+0000")
    other["host"]["kernel"] = "6.1.0"
    one = report._machines({"sweep": rich, "scale": bare})
    assert one == ["- Debian GNU/Linux 12 (bookworm), kernel 6.18.0 (x86_64), 2 CPUs (Test CPU), "
                   "Python 3.11.2"]
    two = report._machines({"sweep": rich, "scale": bare, "flood": other})
    assert len(two) == 2 and two[0].endswith(": scale, sweep") and two[1].endswith(": flood")
