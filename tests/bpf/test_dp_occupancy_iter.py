"""Table occupancy for the metrics: counted in the kernel by a BPF map
iterator where the kernel accepts tracing programs, from batch reads where
it refuses them (lockdown with the BPF LSM answers EPERM to root). Both
kinds of kernel run every test here: the probe's verdict decides which
branch a test checks, and the batch path is also forced on any kernel."""

import errno

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ctbpf.agent.metrics import TrackerCollector
from ctbpf.datapath import features, occupancy

import packets as P


@pytest.fixture(scope="module")
def probed():
    """The probe, run once for the module, as the agent runs it at start."""
    found = features.KernelFeatures(with_iterator=True)
    yield found
    found.close()


def _fill(tracker) -> None:
    d = P.TcpDialog(P.A4, P.B4, 40000, 80)
    for direction, flags in ((P.ORIG, "S"), (P.REPLY, "SA"), (P.ORIG, "A")):
        tracker.send(d.frame(direction, flags))                    # ESTABLISHED, ASSURED
    tracker.send(P.frame(P.tcp("S", P.A6, P.B6, 40001, 443)))      # SYN_SENT
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40002, 53)))
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40003, 53)))
    tracker.send(P.frame(P.icmp_echo(P.A4, P.B4)))
    tracker.expire(lambda f: f.orig.sport == 40003)                # expired: not counted


def _scraped_entries(pin_dir, found) -> dict:
    """ctbpf_flow_entries as /metrics serves it: {(table, proto, state): n}."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TrackerCollector(pin_dir, lambda: 65536, features=found))
    out = {}
    for line in generate_latest(reg).decode().splitlines():
        if line.startswith("ctbpf_flow_entries{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(kv.split("=", 1) for kv in labels[len("ctbpf_flow_entries{"):-1]
                          .split(","))
            out[tuple(fields[k].strip('"') for k in ("table", "proto", "state"))] = float(value)
        if line.startswith("ctbpf_build_info{"):
            out["occupancy"] = line.split('occupancy="', 1)[1].split('"', 1)[0]
    return out


def test_the_probe_reports_what_the_kernel_did(probed):
    it = probed.iterator
    if it.ok:
        assert probed.iter_counter is not None and probed.occupancy == "iterator"
    else:
        # The kernels that refuse it do so before the verifier runs, to root
        # with CAP_BPF and CAP_PERFMON: lockdown (integrity) with the BPF LSM.
        assert it.errno == errno.EPERM, it
        assert "lockdown or the BPF LSM" in it.refusal
        assert probed.iter_counter is None and probed.occupancy == "batch"
    assert f"iterator refused: {it.refusal}" in probed.line() if not it.ok else \
        "counted by a BPF iterator" in probed.line()


def test_the_metrics_count_what_the_batch_reads_count(tracker, probed):
    _fill(tracker)
    live, present = occupancy.occupancy(tracker.pin_dir)
    assert present == 5
    assert live["assured"] == {(6, 3): 1}                          # 3: ESTABLISHED
    assert live["new"] == {(6, 1): 1, (17, None): 1, (1, None): 1}  # 1: SYN_SENT
    if probed.iter_counter is not None:
        assert probed.iter_counter.count(tracker.pin_dir) == (live, present)
    scraped = _scraped_entries(tracker.pin_dir, probed)
    assert scraped.pop("occupancy") == probed.occupancy
    assert scraped == {("assured", "tcp", "ESTABLISHED"): 1, ("new", "tcp", "SYN_SENT"): 1,
                       ("new", "udp", ""): 1, ("new", "icmp", ""): 1}


def test_the_batch_fallback_when_the_iterator_is_disabled(tracker, monkeypatch):
    monkeypatch.setenv(features.DISABLE_ENV, "iterator")
    forced = features.KernelFeatures(with_iterator=True)
    try:
        assert not forced.iterator.ok and forced.iter_counter is None
        assert "disabled by CTBPF_DISABLE" in forced.line()
        _fill(tracker)
        scraped = _scraped_entries(tracker.pin_dir, forced)
        assert scraped.pop("occupancy") == "batch"
        assert sum(scraped.values()) == 4
    finally:
        forced.close()


def test_empty_tables(tracker, probed):
    if probed.iter_counter is not None:
        assert probed.iter_counter.count(tracker.pin_dir) == ({"assured": {}, "new": {}}, 0)
    assert occupancy.occupancy(tracker.pin_dir) == ({"assured": {}, "new": {}}, 0)
    assert _scraped_entries(tracker.pin_dir, probed) == {"occupancy": probed.occupancy}


def test_the_probe_keeps_bccs_output_to_itself(capfd):
    found = features.KernelFeatures(with_iterator=True)
    found.close()
    out, err = capfd.readouterr()
    assert "Need super-user" not in err and "processed" not in err, err
    assert out == ""
