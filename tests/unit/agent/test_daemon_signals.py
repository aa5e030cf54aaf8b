"""The daemon's signal handler runs between any two bytecodes of the main
thread, also inside write_status while json.dumps walks the status dict: it
must only set flags (a SIGTERM once arrived mid-dump and crashed the stop)."""

from __future__ import annotations

import json
import signal

from ctbpf.agent import daemon as daemon_mod


def _daemon(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon_mod, "run_dir", lambda: tmp_path)
    return daemon_mod.Daemon(args=None, pin_dir=tmp_path / "pins")


def test_sigterm_sets_a_flag_and_leaves_the_status_alone(tmp_path, monkeypatch):
    d = _daemon(tmp_path, monkeypatch)
    d.write_status(pid=1, ifaces=["eth0"])
    before = dict(d.status)
    d._on_signal(signal.SIGTERM, None)
    assert d.status == before
    assert d.stopped_by == "SIGTERM"
    assert d.stop_event.is_set()


def test_a_signal_during_the_dump_does_not_break_it(tmp_path, monkeypatch):
    d = _daemon(tmp_path, monkeypatch)
    real_dumps = json.dumps

    def dumps_interrupted(obj, **kw):
        # what a signal arriving inside the dump would do
        d._on_signal(signal.SIGINT, None)
        d._on_signal(signal.SIGHUP, None)
        return real_dumps(obj, **kw)

    monkeypatch.setattr(daemon_mod.json, "dumps", dumps_interrupted)
    d.write_status(pid=2, config_sha256="ab")
    assert json.loads((tmp_path / "daemon.json").read_text()) == {"pid": 2, "config_sha256": "ab"}
    assert d.stopped_by == "SIGINT" and d.reload_requested.is_set()
