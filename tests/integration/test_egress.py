"""Host mode: ctbpf on an end host tracks what the host sends through TC
egress and what it receives through XDP, so its own connections are listed
with the host as the opener."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from pathlib import Path

from conftest import bpf_unavailable, cannot
from ctbpf.datapath.loader import remove_pins
from ctbpf.lab.netns import Lab, unavailable_reason

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


@pytest.fixture
def client_tracker():
    reason = unavailable_reason() or bpf_unavailable()
    if reason:
        cannot(reason)       # a skip, except under CI=true, where it fails
    pin_dir = Path(f"/sys/fs/bpf/ctbpf-eg-{secrets.token_hex(4)}")
    with Lab() as lab:
        proc = lab.popen("client", [sys.executable, "-m", "ctbpf", "run", "--iface", "eth0",
                                    "--egress", "--pin-dir", str(pin_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=lab.traffic_env())
        try:
            line = proc.stdout.readline()
            assert "tracking on eth0" in line and "egress" in line, proc.stderr.read()
            # counters are off by default (nf_conntrack_acct); the test reads them
            acct = lab.exec("client", [sys.executable, "-m", "ctbpf", "set", "acct=1",
                                       "--pin-dir", str(pin_dir)], env=lab.traffic_env())
            assert acct.returncode == 0, acct.stderr
            yield lab, pin_dir
            proc.send_signal(2)
            assert proc.wait(timeout=10) == 0
            tc = lab.exec("client", ["tc", "filter", "show", "dev", "eth0", "egress"]).stdout
            assert "ctbpf" not in tc
        finally:
            if proc.poll() is None:
                proc.kill()
            remove_pins(pin_dir)


def _flows(lab, pin_dir):
    out = lab.exec("client", [sys.executable, "-m", "ctbpf", "list", "-o", "json",
                              "--pin-dir", str(pin_dir)], env=lab.traffic_env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_own_connection_is_tracked_with_the_host_as_opener(client_tracker):
    lab, pin_dir = client_tracker
    lab.warm_up()
    server = lab.traffic_popen("server", "tcp-server", "--port", 7100, "--count", 1, "--hold", 2)
    assert lab.wait_listening("server", 7100)
    result = lab.traffic("client", "tcp-client", "--host", lab.server_ip, "--port", 7100,
                         "--hold", 1)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        tcp = [f for f in _flows(lab, pin_dir) if f["proto"] == "tcp" and f["orig"]["dport"] == 7100]
        if tcp and "ASSURED" in tcp[0]["flags"]:
            break
        time.sleep(0.1)
    assert len(tcp) == 1
    flow = tcp[0]
    assert flow["orig"]["src"] == lab.client_ip and flow["orig"]["dst"] == lab.server_ip
    assert "ASSURED" in flow["flags"] and "UNREPLIED" not in flow["flags"]
    assert flow["packets"]["orig"] >= 3 and flow["packets"]["reply"] >= 2
    server.wait(timeout=10)
