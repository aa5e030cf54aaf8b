"""A tracker is ready the moment it looks ready, keeps working however its
ancestors end, refuses bad starts without leaving anything behind, reports
what the kernel refuses in one line of its own, and stops without an error.

Each test runs the real `ctbpf run` in a lab's router namespace, as users
do (`ip netns exec ROUTER ctbpf ...`), mostly with the default pin dir."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (BPFFS, CTBPF, READY_TIMEOUT, REPO, StderrWatch, default_pin_dir,
                      remove_pin_dir, run_in, xdp_attached)
from ctbpf.datapath import pins
from ctbpf.lab.netns import Lab

STARTING = "is still starting; try again in a moment"
UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(30)
try:
    while True:
        s.recvfrom(100)
except OSError:
    pass
"""
UDP_SEND = """
import socket, sys
for sport in range(int(sys.argv[3]), int(sys.argv[3]) + int(sys.argv[4])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture
def router(lab, need_bpf):
    """Yields the lab; whatever `ctbpf run` the test started in the router is
    stopped (SIGINT, then SIGKILL), XDP is taken off, the default pins go."""
    try:
        yield lab
    finally:
        for pid in _ctbpf_runs(lab):
            _stop_pid(pid)
        for iface in ("cli0", "srv0", "lo"):
            lab.exec("router", ["ip", "link", "set", "dev", iface, "xdp", "off"], timeout=10)
        remove_pin_dir(default_pin_dir(lab))
    assert not default_pin_dir(lab).exists()


def _ctbpf_runs(lab) -> list[int]:
    """`ctbpf run` processes in the lab's router namespace."""
    want = os.stat(f"/run/netns/{lab.router}")
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = open(f"/proc/{name}/cmdline", "rb").read().split(b"\0")
            ns = os.stat(f"/proc/{name}/ns/net")
        except OSError:
            continue
        if b"-m" in argv and b"ctbpf" in argv and b"run" in argv and \
                (ns.st_dev, ns.st_ino) == (want.st_dev, want.st_ino):
            found.append(int(name))
    return found


def _stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGINT, wait (bounded), SIGKILL as a last resort; True if it exited on SIGINT."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or \
                open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return False


def _ctbpf(lab, *args, timeout: float = 20.0, env=None) -> subprocess.CompletedProcess:
    return run_in(lab, "router", [*CTBPF, *args], timeout=timeout,
                  **({"env": env} if env else {}))


def _start(lab, *args, env=None) -> subprocess.Popen:
    return lab.popen("router", [*CTBPF, "run", *args], env=env or Lab.traffic_env(), cwd=REPO)


def _ready_line(proc: subprocess.Popen, timeout: float = READY_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline().strip()
        assert proc.poll() is None, f"ctbpf run exited {proc.returncode}: {proc.stderr.read()}"
    raise AssertionError(f"no ready line within {timeout:g}s")


def _stop(proc: subprocess.Popen) -> str:
    """SIGINT; exit 0; returns its whole stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return err


# --------------------------------------------------------------------------
# ready means ready


def test_commands_during_start_work_or_say_it_is_starting(router):
    lab, pin = router, default_pin_dir(router)
    proc = _start(router, "--iface", "cli0", "--iface", "srv0")
    calls = [("list",), ("set", "tcp_timeout_established=1234"), ("config",), ("stats",)]
    results, ready_at, i = [], None, 0
    deadline = time.monotonic() + READY_TIMEOUT + 10
    while ready_at is None:
        assert time.monotonic() < deadline, "the tracker never said it was ready"
        cmd = calls[i % len(calls)]
        i += 1
        started = time.monotonic()
        cp = _ctbpf(lab, *cmd)
        results.append((started, cmd, cp))
        if select.select([proc.stdout], [], [], 0)[0]:
            line = proc.stdout.readline()
            assert line.startswith("ctbpf: tracking on "), line
            ready_at = time.monotonic()
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    early = [r for r in results if r[0] < ready_at]
    assert early, "no command ran while the tracker was starting: this proves nothing"
    shown = pins.display(pin)
    for _, cmd, cp in results:
        if cp.returncode == 0:
            continue
        assert cp.stderr.strip() == f"ctbpf: error: the tracker for {shown} {STARTING}", \
            (cmd, cp.returncode, cp.stderr)
    # What the successful `set` wrote is what the running tracker holds.
    if any(cmd[0] == "set" and cp.returncode == 0 for _, cmd, cp in results):
        desc = json.loads(_ctbpf(lab, "config", "-o", "json").stdout)
        value = next(t for t in desc["tunables"] if t["name"] == "tcp_timeout_established")
        assert value["value"] == 1234, value
    assert "layout version" not in "".join(cp.stderr for _, _, cp in results)
    _stop(proc)


def test_a_command_gives_up_in_one_line_when_the_start_takes_too_long(router, pin_dir):
    """Stand in for a slow start: hold the pin dir's lock as a starting
    daemon does, with no maps and no status file."""
    from ctbpf.agent import readiness, pinlock  # noqa: PLC0415

    pin_dir.mkdir()
    lock = pinlock.PinLock(pin_dir)
    assert lock.try_acquire()
    try:
        assert readiness.state(pin_dir)[0] == "starting"
        t0 = time.monotonic()
        with pytest.raises(readiness.StillStarting) as e:
            readiness.wait_ready(pin_dir, wait=0.5)
        assert 0.5 <= time.monotonic() - t0 < 3
        assert str(e.value) == f"the tracker for {pin_dir} {STARTING}"
    finally:
        lock.release()
    assert readiness.state(pin_dir)[0] == "absent"


# --------------------------------------------------------------------------
# the agent outlives its ancestors


def test_the_bpffs_held_through_a_dead_process_stays_reachable(need_bpf):
    """What the agent does when it reaches the bpffs through another
    process's root: hold it, so the path outlives that process."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        held = pins._hold(f"/proc/{child.pid}/root/sys/fs/bpf")
        assert str(held).startswith(f"/proc/{os.getpid()}/fd/")
    finally:
        child.kill()
        child.wait()
    assert pins.is_bpffs(held)
    assert pins.display(held / "ctbpf@x") == "/sys/fs/bpf/ctbpf@x"


def test_a_daemon_started_from_a_shell_that_exits_keeps_sweeping(router, tmp_path):
    lab, pin = router, default_pin_dir(router)
    cfg = tmp_path / "ctbpf.toml"
    cfg.write_text("[tunables]\nudp_timeout = 1\n")
    log = tmp_path / "run.log"
    argv = " ".join([*CTBPF, "run", "--iface", "cli0", "--iface", "srv0", "--config", str(cfg),
                     "--sweep-min-interval", "0.2", "--sweep-max-interval", "0.5"])
    # The shell backgrounds the daemon and is gone at once.
    cp = lab.exec("router", ["sh", "-c", f"{argv} >{log} 2>&1 </dev/null &"],
                  env=Lab.traffic_env(), cwd=REPO, timeout=10)
    assert cp.returncode == 0, cp.stderr
    deadline = time.monotonic() + READY_TIMEOUT
    while "tracking on" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    text = _ctbpf(lab, "config").stdout
    assert f"config file: {cfg}" in text, text
    lab.popen("server", [sys.executable, "-c", UDP_SINK, "7001"])
    assert lab.wait_listening("server", 7001, "udp")
    sent = lab.exec("client", [sys.executable, "-c", UDP_SEND, lab.server_ip, "7001", "41000",
                               "20"], timeout=10)
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 10
    while True:
        s = json.loads(_ctbpf(lab, "stats", "-o", "json").stdout)
        flows = json.loads(_ctbpf(lab, "list", "-o", "json", "-p", "udp", "--dport",
                                  "7001").stdout)
        if s["events"]["swept"] >= 20 and not flows:
            break
        assert time.monotonic() < deadline, (s, flows, log.read_text())
        time.sleep(0.3)
    assert "abandoned" not in log.read_text() and "/proc/" not in log.read_text(), \
        log.read_text()
    (pid,) = _ctbpf_runs(lab)
    assert _stop_pid(pid)
    assert "ctbpf: detached" in log.read_text()
    assert (pin / "ct_new").exists()    # the maps stay pinned for the next run


# --------------------------------------------------------------------------
# bad starts: one line, nothing left behind


@pytest.mark.parametrize("args, needle", [
    (("--buckets", "0"), "--buckets 0 is out of range [2, 8388608] (max is 8 x buckets)"),
    (("--buckets", "1"), "--buckets 1 is out of range [2, 8388608] (max is 8 x buckets)"),
    (("--buckets", "-5"), "--buckets -5 is out of range [2, 8388608] (max is 8 x buckets)"),
    (("--max", "-40"), "--max -40 is out of range [16, 67108864]"),
    (("--max", "0"), "--max 0 is out of range [16, 67108864]"),
], ids=lambda v: "_".join(v) if isinstance(v, tuple) else None)
def test_bad_sizes_name_the_option(router, pin_dir, args, needle):
    cp = _ctbpf(router, "run", "--iface", "cli0", "--pin-dir", pin_dir, *args)
    assert cp.stderr.count("\n") == 1, cp.stderr
    assert cp.returncode == 2, cp.stderr
    assert cp.stderr.strip() == f"ctbpf: error: {needle}", cp.stderr
    assert not pin_dir.exists()


def test_a_pin_dir_that_is_a_pinned_map(router, pin_dir):
    first = _start(router, "--iface", "cli0", "--pin-dir", str(pin_dir), "--metrics-addr",
                   "none")
    _ready_line(first)
    try:
        target = pin_dir / "ct_stats"
        cp = _ctbpf(router, "run", "--iface", "srv0", "--pin-dir", target)
        assert cp.returncode == 2, cp.stderr
        assert cp.stderr.strip() == f"ctbpf: error: pin dir {target}: is not a directory"
    finally:
        _stop(first)


@pytest.mark.parametrize("why, args", [
    ("bad interface", ("--iface", "nosuch0")),
    ("bad config", ("--iface", "cli0", "--config", "/nonexistent/ctbpf.toml")),
    # Fails after loading and attaching: the metrics socket cannot bind.
    ("metrics address", ("--iface", "cli0", "--metrics-addr", "192.0.2.1:9476")),
], ids=lambda v: v.replace(" ", "_") if isinstance(v, str) else None)
def test_a_refused_start_leaves_nothing(router, why, args):
    pin = default_pin_dir(router)
    cp = _ctbpf(router, "run", *args)
    assert cp.returncode != 0, cp.stdout
    lines = cp.stderr.strip().splitlines()
    assert lines[-1].startswith("ctbpf: error: "), cp.stderr
    assert "Traceback" not in cp.stderr and "/proc/" not in cp.stderr, cp.stderr
    assert not pin.exists(), f"{why}: left {sorted(p.name for p in pin.iterdir())}"
    assert not list(BPFFS.glob(f"{pin.name}+start-*"))
    assert not xdp_attached(router, "cli0")


# --------------------------------------------------------------------------
# what the kernel refuses: one line of ours


def test_native_xdp_refused_on_lo_is_one_line_of_ours(router, pin_dir):
    proc = _start(router, "--iface", "lo", "--pin-dir", str(pin_dir), "--metrics-addr", "none")
    line = _ready_line(proc)
    assert line.startswith("ctbpf: tracking on lo (generic)"), line
    err = _stop(proc)
    assert "bpf: Attaching prog" not in err, err
    assert "ctbpf: native XDP is not available on lo (Operation not supported): " \
           "using generic mode" in err, err


def test_the_feature_line_and_metrics(router):
    proc = _start(router, "--iface", "cli0", "--metrics-addr", "127.0.0.1:9476")
    _ready_line(proc)
    try:
        scrape = run_in(router, "router", [sys.executable, "-c",
                        "import urllib.request;print(urllib.request.urlopen("
                        "'http://127.0.0.1:9476/metrics', timeout=10).read().decode())"])
        assert scrape.returncode == 0, scrape.stderr
        again = run_in(router, "router", [sys.executable, "-c",
                       "import urllib.request;urllib.request.urlopen("
                       "'http://127.0.0.1:9476/metrics', timeout=10).read()"])
        assert again.returncode == 0
    finally:
        err = _stop(proc)
    assert err.count("kernel features:") == 1, err
    for noise in ("Need super-user", "processed 0 insns", "Traceback", "occupancy iterator"):
        assert noise not in err, err
    from ctbpf.datapath import features  # noqa: PLC0415

    probe, counter = features.probe_iterator()
    if counter is not None:
        counter.close()
    how = "iterator" if probe.ok else "batch"
    assert f'occupancy="{how}"' in scrape.stdout
    assert f'ctbpf_kernel_feature{{feature="iterator"}} {float(probe.ok)}' in scrape.stdout


def test_the_fallbacks_run_a_whole_tracker(router, tmp_path):
    """Batch operations and the ring's mmap refused (as a kernel or a policy
    may): the tracker still lists, counts and sweeps, and says so once."""
    lab = router
    env = Lab.traffic_env()
    env["CTBPF_DISABLE"] = "batch,ring_mmap,iterator"
    cfg = tmp_path / "ctbpf.toml"
    cfg.write_text("[tunables]\nudp_timeout = 1\n")
    proc = _start(lab, "--iface", "cli0", "--iface", "srv0", "--config", str(cfg),
                  "--sweep-min-interval", "0.2", "--sweep-max-interval", "0.5", env=env)
    _ready_line(proc)
    try:
        lab.popen("server", [sys.executable, "-c", UDP_SINK, "7002"])
        assert lab.wait_listening("server", 7002, "udp")
        sent = lab.exec("client", [sys.executable, "-c", UDP_SEND, lab.server_ip, "7002",
                                   "42000", "10"], timeout=10)
        assert sent.returncode == 0
        flows = json.loads(_ctbpf(lab, "list", "-o", "json", "--dport", "7002",
                                  env=env).stdout)
        assert len(flows) == 10
        deadline = time.monotonic() + 10
        while json.loads(_ctbpf(lab, "list", "-o", "json", "--dport", "7002", env=env).stdout):
            assert time.monotonic() < deadline, "expired flows never swept by the walks"
            time.sleep(0.3)
    finally:
        err = _stop(proc)
    line = next(x for x in err.splitlines() if "kernel features:" in x)
    assert "batch operations refused: (disabled by CTBPF_DISABLE)" in line, line
    assert "ring buffer mmap refused: (disabled by CTBPF_DISABLE)" in line, line
    assert "abandoned" not in err, err


# --------------------------------------------------------------------------
# a clean stop


def test_sigint_during_sweeps_and_after_a_resize_stops_without_an_error(router, pin_dir):
    lab = router
    proc = _start(lab, "--iface", "cli0", "--iface", "srv0", "--pin-dir", str(pin_dir),
                  "--sweep-min-interval", "0.05", "--sweep-max-interval", "0.1",
                  "--metrics-addr", "none")
    _ready_line(proc)
    lab.popen("server", [sys.executable, "-c", UDP_SINK, "7003"])
    assert lab.wait_listening("server", 7003, "udp")
    lab.exec("client", [sys.executable, "-c", UDP_SEND, lab.server_ip, "7003", "43000", "200"],
             timeout=10)
    cp = _ctbpf(lab, "set", "max=4096", "--pin-dir", pin_dir)
    assert cp.returncode == 0, cp.stderr
    time.sleep(1.0)                         # sweeps on the resized tables
    err = _stop(proc)
    lines = err.strip().splitlines()
    assert lines[-1] == "ctbpf: detached", err
    for bad in ("abandoned", "Bad file descriptor", "Errno", "Traceback", "warning"):
        assert bad not in err, err
