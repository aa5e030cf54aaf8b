"""ctbpf top without a tracker or a terminal: rates from crafted samples,
and the pure renderer."""

import io
from collections import Counter

import pytest

from ctbpf.cli import main as cli, top
from ctbpf.cli.top import FlowSample, Sample, compute_frame, flow_delta, human, rate, render

STATES = ("new", "established", "related", "invalid", "untracked")
REASONS = ("tcp_flags", "trunc_l4")
KEY_A = (6, 2, ("10.0.0.1", 40000, "10.0.1.2", 80))
KEY_B = (17, 2, ("10.0.0.1", 5353, "10.0.1.2", 53))
KEY_C = (1, 2, ("10.0.0.1", None, "10.0.1.2", None))


def sample(mono, pkts, invalid=(0, 0), flows=None, occ=None, limit=65536):
    return Sample(
        mono=mono, wall=1_700_000_000.0 + mono, limit=limit,
        pkt_states=dict(zip(STATES, pkts)), invalid=dict(zip(REASONS, invalid)),
        occupancy=occ if occ is not None else {
            "assured": Counter({(6, "ESTABLISHED"): 1}),
            "new": Counter({(17, None): 1, (1, None): 1, (6, "SYN_SENT"): 2})},
        flows=flows or {})


def test_rate_is_delta_over_time_and_never_negative():
    assert rate(100, 400, 2.0) == 150.0
    assert rate(400, 100, 2.0) == 0.0      # counters reset (a new tracker)
    assert rate(1, 2, 0.0) == 0.0


def test_flow_delta_new_reset_and_growing():
    assert flow_delta(None, FlowSample("x", 5, 500)) == (5, 500)
    assert flow_delta(FlowSample("x", 5, 500), FlowSample("x", 9, 900)) == (4, 400)
    # fewer than before: the entry was deleted and made again, counts from 0
    assert flow_delta(FlowSample("x", 50, 5000), FlowSample("x", 3, 300)) == (3, 300)


def test_frame_rates_from_two_samples():
    prev = sample(10.0, (10, 100, 0, 4, 0), invalid=(3, 1), flows={
        KEY_A: FlowSample("tcp a", 10, 1000), KEY_B: FlowSample("udp b", 2, 200)})
    cur = sample(12.0, (14, 300, 0, 10, 0), invalid=(7, 3), flows={
        KEY_A: FlowSample("tcp a", 30, 3000), KEY_B: FlowSample("udp b", 2, 200),
        KEY_C: FlowSample("icmp c", 4, 336)})
    f = compute_frame(prev, cur)
    assert f.interval == pytest.approx(2.0)
    assert f.pkt_rates == {"new": 2.0, "established": 100.0, "related": 0.0, "invalid": 3.0,
                           "untracked": 0.0}
    assert f.invalid_rate == pytest.approx(3.0)
    assert f.invalid_rates == {"tcp_flags": 2.0, "trunc_l4": 1.0}
    assert f.entries == {"assured": 1, "new": 4}
    # ranked by bytes/s: a (2000 B in 2 s), then the new flow c (336 B), then idle b
    assert [(t.label, t.bps, t.pps) for t in f.talkers] == [
        ("tcp a", 1000.0, 10.0), ("icmp c", 168.0, 2.0), ("udp b", 0.0, 0.0)]
    assert f.talkers[0].total_bytes == 3000
    assert f.occupancy == [("icmp", "", {"assured": 0, "new": 1}),
                           ("tcp", "ESTABLISHED", {"assured": 1, "new": 0}),
                           ("tcp", "SYN_SENT", {"assured": 0, "new": 2}),
                           ("udp", "", {"assured": 0, "new": 1})]


def test_first_frame_has_no_rates_and_ranks_by_total_bytes():
    cur = sample(1.0, (1, 2, 3, 4, 5), flows={
        KEY_A: FlowSample("small", 1, 60), KEY_B: FlowSample("big", 9, 9000)})
    f = compute_frame(None, cur)
    assert f.interval is None and f.invalid_rate is None
    assert set(f.pkt_rates.values()) == {None}
    assert [t.label for t in f.talkers] == ["big", "small"]
    text = "\n".join(render(f))
    assert "rates: waiting" in text and "by total bytes" in text


def test_top_n_keeps_the_busiest():
    flows = {(6, 2, i): FlowSample(f"f{i}", i, 100 * i) for i in range(25)}
    f = compute_frame(sample(0.0, (0,) * 5), sample(1.0, (0,) * 5, flows=flows))
    assert [t.label for t in f.talkers] == [f"f{i}" for i in range(24, 14, -1)]


def test_render_frame():
    prev = sample(10.0, (10, 100, 0, 4, 0), flows={KEY_A: FlowSample("tcp a", 10, 1000)})
    cur = sample(12.0, (14, 3100, 0, 10, 0), invalid=(6, 0),
                 flows={KEY_A: FlowSample("tcp a 10.0.0.1:40000 -> 10.0.1.2:80 ESTABLISHED",
                                          3010, 4_001_000)})
    lines = render(compute_frame(prev, cur))
    assert lines[0].startswith("ctbpf top - ") and "rates over 2.0s" in lines[0]
    assert lines[1] == ("Entries: 5 total; assured 1/65536 (0.0%), new 4/65536 (0.0%)")
    assert lines[2] == ("Packets/s: new 2  established 1.5K  related 0  invalid 3  untracked 0")
    assert lines[3] == "Invalid/s: 3  (tcp_flags 3)"
    assert "PROTO   STATE          ASSURED       NEW     TOTAL" in lines
    assert "tcp     SYN_SENT             0         2         2" in lines
    assert "udp     -                    0         1         1" in lines
    assert "     2.0M     1.5K      4.0M  tcp a 10.0.0.1:40000 -> 10.0.1.2:80 ESTABLISHED" in lines


def test_render_empty_and_width():
    f = compute_frame(sample(0.0, (0,) * 5, occ={"assured": Counter(), "new": Counter()}),
                      sample(1.0, (0,) * 5, occ={"assured": Counter(), "new": Counter()}))
    lines = render(f, width=20)
    assert "(no live entries)" in lines and "(no flows)" in lines
    assert all(len(line) <= 20 for line in lines)


@pytest.mark.parametrize("n, text", [(None, "-"), (0, "0"), (999, "999"), (1500, "1.5K"),
                                     (2.5, "2.5"), (3_400_000, "3.4M"), (7e9, "7.0G")])
def test_human(n, text):
    assert human(n) == text


def test_plain_mode_prints_n_frames(monkeypatch):
    samples = iter([sample(float(i), (i, 10 * i, 0, 0, 0)) for i in range(4)])
    monkeypatch.setattr(top, "take_sample", lambda pin_dir: next(samples))
    monkeypatch.setattr(top.time, "sleep", lambda s: None)
    out = io.StringIO()
    top.run_plain("/nowhere", 1.0, 3, out=out)
    text = out.getvalue()
    assert text.count("ctbpf top - ") == 3 and text.count(top.SEPARATOR) == 2
    assert "established 10" in text


@pytest.mark.parametrize("argv, word", [
    (["top", "--interval", "0"], "--interval"), (["top", "--interval", "abc"], "--interval"),
    (["top", "--interval", "nan"], "--interval"), (["top", "--interval", "99999"], "--interval"),
    (["top", "--iterations", "0"], "--iterations"), (["top", "--iterations", "2.5"], "--iterations"),
    (["top", "--iterations", "1000001"], "--iterations")])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, word):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err
