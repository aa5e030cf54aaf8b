"""Failures reach the user as one clear line on stderr, never a traceback,
with conntrack-tools' exit codes (1 failure, 2 usage); a failed `run`
leaves nothing attached."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from ctbpf.lab.netns import Lab

REPO = Path(__file__).resolve().parents[2]
CTBPF = [sys.executable, "-m", "ctbpf"]
MISSING_PIN_DIR = "/sys/fs/bpf/ctbpf-it-missing-" + secrets.token_hex(4)


def ctbpf_host(*args: object, prefix: tuple[str, ...] = (),
               timeout: float = 15) -> subprocess.CompletedProcess:
    """`ctbpf ARGS` in the host namespace (prefix: e.g. setpriv ...)."""
    return subprocess.run([*prefix, *CTBPF, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=Lab.traffic_env())


def assert_one_error_line(cp: subprocess.CompletedProcess, code: int | None = None,
                          mentions: tuple[str, ...] = (), prefix: str = "ctbpf: error: ") -> str:
    """Exit `code` (any non-zero if None), nothing on stdout, exactly one
    `ctbpf: error: ...` line on stderr that names what was wrong."""
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{cp.stderr}"
    line = lines[0]
    assert line.startswith(prefix), line
    if code is None:
        assert cp.returncode != 0, line
    else:
        assert cp.returncode == code, (cp.returncode, line)
    assert cp.stdout == "", cp.stdout
    for word in mentions:
        assert word in line, f"{word!r} not in {line!r}"
    return line


# --------------------------------------------------------------------------
# usage errors: no root, no lab needed


@pytest.mark.parametrize("args, mentions", [
    (["frobnicate"], ["frobnicate"]),
    ([], ["COMMAND"]),
    (["run"], ["--iface"]),
    (["list", "-o", "xml"], ["xml"]),
    (["list", "--no-such-option"], ["--no-such-option"]),
], ids=["unknown-command", "no-command", "run-without-iface", "bad-output", "unknown-option"])
def test_usage_errors_exit_2(args, mentions):
    assert_one_error_line(ctbpf_host(*args), 2, tuple(mentions))


@pytest.mark.parametrize("args, mentions", [
    (["-p", "bogus"], ["protocol", "bogus"]),
    (["-p", "256"], ["256"]),
    (["--state", "ESTABLISHEDX"], ["state", "ESTABLISHEDX"]),
    (["--src", "10.0.0.300"], ["10.0.0.300"]),
    (["--dst", "fd00::1::2"], ["fd00::1::2"]),
    (["--sport", "70000"], ["port", "70000"]),
    (["--sport", "http"], ["port", "http"]),
    (["--dport", "-1"], ["port", "-1"]),
], ids=["proto-name", "proto-number", "state", "src", "dst", "sport-range", "sport-name",
        "dport-negative"])
def test_bad_filters_exit_2(args, mentions):
    """Filters are checked before the maps are opened: the line names the bad value
    (pointed at a pin dir that does not exist, which would be exit 1)."""
    cp = ctbpf_host("list", "--pin-dir", MISSING_PIN_DIR, *args)
    assert_one_error_line(cp, 2, tuple(mentions))


# --------------------------------------------------------------------------
# needs root and a lab


@pytest.fixture
def lab_only(lab, need_bpf):
    return lab


def test_list_and_stats_without_tracker(lab_only, run_ctbpf):
    for args in (["list"], ["list", "-o", "json"], ["stats"]):
        line = assert_one_error_line(ctbpf_host(*args, "--pin-dir", MISSING_PIN_DIR), 1,
                                     ("no ctbpf maps", MISSING_PIN_DIR))
        assert "ctbpf run" in line  # says what to do
        # In the router namespace, with its default pin dir: no tracker there either.
        assert_one_error_line(run_ctbpf(*args), 1, ("no ctbpf maps", f"ctbpf@{lab_only.router}"))


@pytest.mark.parametrize("ifaces, code, mentions", [
    (["nope0"], 2, ["nope0"]),
    (["cli0", "nope0"], 2, ["nope0"]),
    (["cli0", "cli0"], 2, ["twice"]),
], ids=["unknown", "one-unknown", "twice"])
def test_run_bad_interface_leaves_nothing(lab_only, run_ctbpf, pin_dir, ifaces, code, mentions):
    cp = run_ctbpf("run", *(a for i in ifaces for a in ("--iface", i)), "--pin-dir", pin_dir)
    assert_one_error_line(cp, code, tuple(mentions))
    _assert_no_xdp(lab_only, "cli0", "srv0")


def test_run_bad_pin_dir_and_max(lab_only, run_ctbpf, pin_dir):
    cp = run_ctbpf("run", "--iface", "cli0", "--pin-dir", "/sys/fs/bpf/bad dir")
    assert_one_error_line(cp, 2, ("pin dir",))
    cp = run_ctbpf("run", "--iface", "cli0", "--pin-dir", pin_dir, "--max", 3)
    assert_one_error_line(cp, 2, ("3",))
    _assert_no_xdp(lab_only, "cli0", "srv0")


def _assert_no_xdp(lab: Lab, *ifaces: str) -> None:
    for iface in ifaces:
        out = lab.exec("router", ["ip", "-d", "link", "show", "dev", iface], check=True).stdout
        assert "prog/xdp" not in out, f"XDP left on {iface}:\n{out}"


def _xdp_prog_line(lab: Lab, iface: str) -> str:
    out = lab.exec("router", ["ip", "-d", "link", "show", "dev", iface], check=True).stdout
    return next((l.strip() for l in out.splitlines() if "prog/xdp" in l), "")


def test_interface_already_carrying_xdp(lab, tracker, run_ctbpf):
    """A second tracker on a busy interface fails with exit 1, detaches what it
    had attached already, and the first tracker keeps working."""
    lab.exec("router", ["ip", "link", "add", "xa0", "type", "veth", "peer", "name", "xb0"],
             check=True)
    lab.exec("router", ["ip", "link", "set", "xa0", "up"], check=True)
    before = {i: _xdp_prog_line(lab, i) for i in ("cli0", "srv0")}
    assert all(before.values()), before

    # xa0 is free and comes first: it gets attached, then cli0 fails.
    # Same (pin) directory as the running tracker, as two `ctbpf run` in one namespace would.
    cp = run_ctbpf("run", "--iface", "xa0", "--iface", "cli0", "--pin-dir", tracker.pin_dir,
                   timeout=30)
    assert_one_error_line(cp, 1, ("cli0", "XDP"))
    _assert_no_xdp(lab, "xa0")
    assert {i: _xdp_prog_line(lab, i) for i in ("cli0", "srv0")} == before

    # The first tracker still tracks, and its maps are still where they were.
    assert lab.ping("client", lab.server_ip, count=2)
    flows = [f for f in tracker.list_json("-p", "icmp") if f["orig"]["src"] == lab.client_ip]
    assert flows and flows[0]["packets"] == {"orig": 2, "reply": 2}, flows
    assert tracker.stats()["packets"]["new"] >= 1


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def test_non_root(tracker, need_setpriv):
    """As nobody: one line, non-zero, whether the maps exist (a running
    tracker's) or not; `run` says it needs root."""
    assert os.access(sys.executable, os.X_OK)
    for args in (["list", "--pin-dir", tracker.pin_dir],
                 ["list", "-o", "json", "--pin-dir", tracker.pin_dir],
                 ["stats", "--pin-dir", tracker.pin_dir],
                 ["list"]):
        assert_one_error_line(ctbpf_host(*args, prefix=NOBODY))
    line = assert_one_error_line(ctbpf_host("run", "--iface", "lo", "--pin-dir", MISSING_PIN_DIR,
                                            prefix=NOBODY), 1)
    assert "root" in line
    assert not Path(MISSING_PIN_DIR).exists()
    line = assert_one_error_line(ctbpf_host("demo", prefix=NOBODY), 1, ("root",), prefix="ctbpf demo: error: ")
