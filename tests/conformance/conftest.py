"""Conformance suite: the kernel's nf_conntrack is the oracle for ctbpf.

One harness (lab, kernel conntrack observed by nft counters, ctbpf in observe
mode) serves every scenario of the session. At the end of the run the
terminal summary prints one line per scenario and the agreement ratio.

Needs root, network namespaces, nft, conntrack-tools and BCC; without them
the suite skips (under CI=true it fails with the reason instead, like the
rest of the tests).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the conf_* helper modules
    sys.path.insert(0, str(HERE))

from conf_harness import OUTCOMES, RESULTS, Harness  # noqa: E402  (no scapy needed)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, BPF)"
    for tool in ("ip", "nft", "conntrack", "ping", "sysctl", "ss"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command"
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError:
        return "BCC is missing (Debian python3-bpfcc; `make setup`)"
    try:
        import scapy  # noqa: F401, PLC0415
    except ImportError:
        return "scapy is missing (`make setup`)"
    if not os.path.isdir("/sys/fs/bpf"):
        return "/sys/fs/bpf does not exist (no BPF filesystem)"
    if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_max"):
        return "the kernel has no nf_conntrack"
    return None


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


_state: dict = {}


@pytest.fixture(scope="session")
def harness():
    reason = _unavailable()
    if reason:
        _cannot(reason)
    if "error" in _state:
        pytest.fail(_state["error"], pytrace=False)
    h = Harness()
    try:
        h.start()
    except Exception as e:  # noqa: BLE001 - reported once, every scenario fails with it
        _state["error"] = f"conformance lab could not start: {e}"
        pytest.fail(_state["error"], pytrace=False)
    try:
        yield h
    finally:
        h.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After pytest's own summary (so the agreement line comes last)."""
    yield
    if RESULTS:
        _write_summary(terminalreporter)


def _write_summary(tr) -> None:
    tr.section("conformance: kernel nf_conntrack vs ctbpf")
    labels = {"agree": "agree", "differ": "DIFFER", "expected": "expected",
              "changed": "CHANGED", "error": "ERROR"}
    for name, res in RESULTS.items():
        outcome = OUTCOMES.get(name, "?")
        line = f"{labels.get(outcome, outcome):<9}{name}"
        if outcome != "agree":
            line += f": {res.first_difference()}"
            if outcome == "expected":
                line = f"{line}  [documented in docs/conformance.md]"
            elif outcome == "changed":
                line = f"{line}  [documented difference changed: update docs/conformance.md]"
        tr.write_line(line)
    n = len(RESULTS)
    agree = sum(1 for o in OUTCOMES.values() if o == "agree")
    expected = sum(1 for o in OUTCOMES.values() if o == "expected")
    differ = n - agree - expected
    outside = n - expected
    pct = 100.0 * agree / n
    pct_out = 100.0 * agree / outside if outside else 100.0
    tr.write_line(f"conformance: {agree}/{n} scenarios agree ({pct:.1f}%); "
                  f"{expected} documented differences; {differ} disagreements; "
                  f"agreement outside documented differences {agree}/{outside} "
                  f"({pct_out:.1f}%)")


def pytest_addoption(parser):
    parser.addoption("--conformance-report", action="store", default=None, metavar="FILE",
                     help="write every scenario's step-by-step comparison to FILE")


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--conformance-report", default=None)
    if path and RESULTS:
        from conf_scenarios import SCENARIOS  # noqa: PLC0415

        with open(path, "w") as f:
            for name, res in RESULTS.items():
                f.write(f"[{OUTCOMES.get(name, '?')}] {SCENARIOS[name].doc}\n{res.report()}\n\n")
