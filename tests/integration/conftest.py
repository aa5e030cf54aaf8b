"""Fixtures for the integration suite: a namespace lab, and ctbpf trackers
running in its router namespace.

Everything here needs root, network namespaces and a kernel that loads BPF.
Where that is missing the tests skip, except under CI=true where they fail
with the reason: CI must never pass by skipping.

    lab            a warmed-up ctbpf.lab.netns.Lab (client -- router -- server), closed at teardown
    pin_dir        a unique /sys/fs/bpf/ctbpf-it-<hex> path, unpinned at teardown
    tracker        `ctbpf run --iface cli0 --iface srv0 --pin-dir <pin_dir>` in the router
                   namespace, ready; stopped with SIGINT at teardown (exit 0, XDP gone)
    start_tracker  a factory for more trackers (other interfaces, other or default pin dirs)
    shared_tracker the same as tracker, but one lab and tracker for a whole module
    run_ctbpf      run `ctbpf ARGS` in a namespace of the lab (or the host) and wait
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from ctbpf.lab.netns import Lab, list_namespaces, unavailable_reason

REPO = Path(__file__).resolve().parents[2]
#: How every test runs the CLI (ctbpf/cli/main.py has `if __name__ == "__main__"`).
CTBPF = [sys.executable, "-m", "ctbpf"]
#: Seconds a tracker may take to compile, load and attach (BCC: about 4 s here, 6 s with TC).
READY_TIMEOUT = 60.0
#: Seconds a tracker may take to detach and exit after SIGINT/SIGTERM.
STOP_TIMEOUT = 10.0
#: Seconds for one `ctbpf list`/`stats` run.
CLI_TIMEOUT = 15.0
BPFFS = Path("/sys/fs/bpf")
PIN_PREFIX = "ctbpf-it-"
ROUTER_IFACES = ("cli0", "srv0")


# --------------------------------------------------------------------------
# skipping, or failing under CI


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def cannot(reason: str) -> None:
    """Skip the test, or fail it when CI=true (CI must not pass by skipping)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


_reasons: dict[str, str | None] = {}


def lab_unavailable() -> str | None:
    if "lab" not in _reasons:
        reason = unavailable_reason()
        for tool in ("nft", "ping"):
            if reason is None and shutil.which(tool) is None:
                reason = f"needs the '{tool}' command"
        _reasons["lab"] = reason
    return _reasons["lab"]


def bpf_unavailable() -> str | None:
    """Why trackers cannot run here, or None. The load itself is the final
    judge: a tracker that fails to start fails its test with its own error."""
    if "bpf" not in _reasons:
        reason = lab_unavailable()
        if reason is None:
            try:
                import bcc  # noqa: F401, PLC0415
            except ImportError:
                reason = "BCC is missing (Debian python3-bpfcc; `make setup`)"
        if reason is None and not os.path.isdir(BPFFS):
            reason = f"{BPFFS} does not exist (no BPF filesystem)"
        _reasons["bpf"] = reason
    return _reasons["bpf"]


@pytest.fixture
def need_root():
    if os.geteuid() != 0:
        cannot("needs root")


@pytest.fixture
def need_setpriv():
    if shutil.which("setpriv") is None:
        cannot("needs setpriv (util-linux)")


@pytest.fixture
def need_lab():
    reason = lab_unavailable()
    if reason:
        cannot(f"lab unavailable: {reason}")


@pytest.fixture
def need_bpf():
    reason = bpf_unavailable()
    if reason:
        cannot(f"BPF unavailable: {reason}")


# --------------------------------------------------------------------------
# running commands


def run_in(lab: Lab | None, ns: str | None, argv: Sequence[object], *,
           timeout: float = CLI_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run argv in a lab namespace (or the host's when ns is None) and wait.

    The working directory is the repository (never a directory whose stray
    *.py files could shadow the standard library), and PYTHONPATH reaches
    this source tree.
    """
    kwargs.setdefault("env", Lab.traffic_env())
    kwargs.setdefault("cwd", REPO)
    argv = [str(a) for a in argv]
    if ns is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert lab is not None
    return lab.exec(ns, argv, timeout=timeout, **kwargs)


def xdp_attached(lab: Lab, iface: str, ns: str = "router") -> bool:
    """True if `ip -d link show IFACE` in ns shows an XDP program."""
    cp = lab.exec(ns, ["ip", "-d", "link", "show", "dev", iface], timeout=10)
    assert cp.returncode == 0, f"ip link show {iface} in {ns}: {cp.stderr.strip()}"
    return "prog/xdp" in cp.stdout


def remove_pin_dir(path: Path) -> None:
    from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

    remove_pins(path)


def new_pin_dir() -> Path:
    return BPFFS / f"{PIN_PREFIX}{secrets.token_hex(4)}"


def default_pin_dir(lab: Lab) -> Path:
    """Where a tracker started with `ip netns exec <router>` and no --pin-dir pins."""
    return BPFFS / f"ctbpf@{lab.router}"


# --------------------------------------------------------------------------
# the tracker


class TrackerError(AssertionError):
    pass


class Tracker:
    """`ctbpf run` in a lab namespace, and the CLI pointed at its maps."""

    def __init__(self, lab: Lab, pin_dir: Path | None, ifaces: Sequence[str] = ROUTER_IFACES,
                 ns: str = "router", extra: Sequence[str] = ()) -> None:
        self.lab = lab
        self.ns = ns
        self.pin_dir = pin_dir
        self.ifaces = tuple(ifaces)
        self.argv = [*CTBPF, "run", *(a for i in self.ifaces for a in ("--iface", i)),
                     *(["--pin-dir", str(pin_dir)] if pin_dir is not None else []), *extra]
        self.cli_argv = list(CTBPF)  # which build's CLI reads the maps
        self.proc: subprocess.Popen | None = None
        self.ready_line = ""
        self.returncode: int | None = None
        self.stderr = ""

    # -- life cycle --------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> "Tracker":
        """Start and wait (bounded) for the one ready line on stdout."""
        self.proc = self.lab.popen(self.ns, self.argv, env=Lab.traffic_env(), cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TrackerError(f"ctbpf run gave no ready line within {timeout:g}s; "
                                   f"stderr: {self.stderr.strip()[-500:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    self.ready_line = line.rstrip("\n")
                    break
            if self.proc.poll() is not None:
                self._collect()
                raise TrackerError(f"ctbpf run exited with {self.returncode} before it was "
                                   f"ready: {self.stderr.strip()[-800:]}")
        if not self.ready_line.startswith("ctbpf: tracking on "):
            self.kill()
            raise TrackerError(f"unexpected first line from ctbpf run: {self.ready_line!r}")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _collect(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return
        except ValueError:  # streams already closed by the lab's teardown
            out, err = "", ""
        self.returncode = self.proc.returncode
        self.stderr += err or ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the tracker, wait for it; it must exit 0 and leave no XDP
        program on its interfaces."""
        assert self.proc is not None, "tracker was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TrackerError(f"ctbpf run did not exit within {timeout:g}s of "
                                   f"{signal.Signals(sig).name}") from None
        self._collect()
        assert self.returncode == 0, (f"ctbpf run exited {self.returncode} after "
                                      f"{signal.Signals(sig).name}: {self.stderr.strip()}")
        assert "Traceback" not in self.stderr, self.stderr
        still = self.attached()
        assert not still, f"XDP still attached after {signal.Signals(sig).name}: {still}"
        return self.returncode

    def kill(self) -> None:
        """Last resort, for teardown after a failure: SIGKILL the process group."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and self.returncode is None:
                self._collect(timeout=1)
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._collect(timeout=1)
        # A killed tracker cannot detach: do it for it, so nothing stays attached.
        for iface in self.ifaces:
            try:
                self.lab.exec(self.ns, ["ip", "link", "set", "dev", iface, "xdp", "off"],
                              timeout=10)
            except Exception:  # noqa: BLE001 - the lab may be gone already
                pass

    def attached(self) -> list[str]:
        """This tracker's interfaces that carry an XDP program now."""
        return [i for i in self.ifaces if xdp_attached(self.lab, i, self.ns)]

    # -- the CLI on this tracker's maps ------------------------------------

    def cli(self, *args: object, check: bool = True,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
        pin = ["--pin-dir", str(self.pin_dir)] if self.pin_dir is not None else []
        cp = run_in(self.lab, self.ns, [*self.cli_argv, *args, *pin], timeout=timeout)
        if check and cp.returncode != 0:
            raise TrackerError(f"ctbpf {' '.join(map(str, args))} exited {cp.returncode}: "
                               f"{cp.stderr.strip()}")
        return cp

    def list_proc(self, *filters: object) -> list[str]:
        """`ctbpf list` lines (the spec's /proc/net/ip_conntrack format)."""
        return self.cli("list", *filters).stdout.splitlines()

    def list_conntrack(self, *filters: object) -> list[str]:
        return self.cli("list", "-o", "conntrack", *filters).stdout.splitlines()

    def list_json(self, *filters: object) -> list[dict]:
        return json.loads(self.cli("list", "-o", "json", *filters).stdout)

    def stats(self) -> dict:
        return json.loads(self.cli("stats", "-o", "json").stdout)


# --------------------------------------------------------------------------
# fixtures


@contextlib.contextmanager
def _a_lab():
    """A warmed-up lab, removed on the way out whatever happened."""
    the_lab = Lab()
    try:
        if not the_lab.warm_up():
            pytest.fail(f"lab {the_lab.prefix}: client cannot ping the server", pytrace=False)
        yield the_lab
    finally:
        the_lab.close()
    left = {the_lab.client, the_lab.router, the_lab.server} & set(list_namespaces())
    assert not left, f"namespaces left behind: {left}"


@contextlib.contextmanager
def _trackers(lab: Lab):
    """Yields start(pin_dir, ifaces, extra) -> a ready Tracker. On the way out
    every tracker still running is killed (and detached for it) and every
    pin directory handed out is removed, even after a failure."""
    made: list[Tracker] = []
    dirs: list[Path] = []

    def start(pin_dir: Path | None, ifaces: Sequence[str] = ROUTER_IFACES,
              extra: Sequence[str] = (), acct: bool = True) -> Tracker:
        tr = Tracker(lab, pin_dir, ifaces, extra=extra)
        made.append(tr)
        dirs.append(pin_dir if pin_dir is not None else default_pin_dir(lab))
        tr.start()
        # acct is off by default, as in the kernel; most tests read counters.
        if acct:
            tr.cli("set", "acct=1")
        return tr

    try:
        yield start
    finally:
        for tr in made:
            tr.kill()
        for d in dirs:
            remove_pin_dir(d)
    left = [str(d) for d in dirs if d.exists()]
    assert not left, f"pins left behind: {left}"


def _stop_cleanly(tr: Tracker) -> None:
    """Teardown of a tracker the test did not stop: SIGINT, exit 0, no XDP left."""
    if tr.returncode is None:
        tr.stop(signal.SIGINT)


@pytest.fixture
def lab(need_lab):
    """A fresh, warmed-up lab for this test (client -- router -- server)."""
    with _a_lab() as the_lab:
        yield the_lab


@pytest.fixture
def pin_dir(need_bpf):
    """A unique pin directory path (not created); removed at teardown."""
    path = new_pin_dir()
    try:
        yield path
    finally:
        remove_pin_dir(path)
    assert not path.exists(), f"pins left behind in {path}"


@pytest.fixture
def start_tracker(lab, need_bpf):
    """start_tracker(pin_dir, ifaces=("cli0", "srv0"), extra=(), acct=True) ->
    a ready Tracker in this test's lab, acct switched on unless acct=False. pin_dir=None means the router's default
    (per network namespace) directory, which is then removed at teardown too."""
    with _trackers(lab) as start:
        yield start


@pytest.fixture
def tracker(lab, pin_dir, start_tracker):
    """A ready tracker on cli0 and srv0 of the router, with its own pin dir.
    At teardown it must stop on SIGINT with exit 0 and detach from both
    interfaces (unless the test stopped it already)."""
    tr = start_tracker(pin_dir)
    yield tr
    _stop_cleanly(tr)


@pytest.fixture(scope="module")
def shared_tracker():
    """One lab and one tracker for a whole module, for tests that only add
    their own flows (own ports) and read them back: it saves a lab and a
    BPF compile per test. ``shared_tracker.lab`` is its lab. Tests that
    change the lab (nft rules) must undo it, or use ``tracker``."""
    for reason in (lab_unavailable(), bpf_unavailable()):
        if reason:
            cannot(f"BPF unavailable: {reason}")
    path = new_pin_dir()
    try:
        with _a_lab() as the_lab, _trackers(the_lab) as start:
            tr = start(path)
            yield tr
            _stop_cleanly(tr)
    finally:
        remove_pin_dir(path)


@pytest.fixture
def run_ctbpf(lab):
    """run_ctbpf(*args, ns="router") -> CompletedProcess of `ctbpf ARGS` (ns=None: host)."""
    def run(*args: object, ns: str | None = "router", timeout: float = CLI_TIMEOUT,
            **kwargs) -> subprocess.CompletedProcess:
        return run_in(lab, ns, [*CTBPF, *args], timeout=timeout, **kwargs)
    return run


class StderrWatch:
    """Reads a running tracker's stderr without blocking (bounded waits)."""

    def __init__(self, tracker: "Tracker") -> None:
        self.fd = tracker.proc.stderr.fileno()
        self.text = ""

    def wait_for(self, needle: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"tracker stderr never said {needle!r} within "
                                     f"{timeout:g}s; it said: {self.text!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"tracker closed stderr; it said: {self.text!r}")
                self.text += chunk.decode(errors="replace")
        return self.text
