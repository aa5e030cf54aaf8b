"""Each scenario of conf_scenarios.py is one test: it passes when the
kernel and ctbpf agree after every packet. A scenario with a documented
difference is an expected failure (strict): it must show exactly the
documented differences, no more, no fewer."""

from __future__ import annotations

import subprocess

import pytest

from ctbpf.lab.netns import LabError

pytest.importorskip("scapy", reason="scapy is missing (`make setup`)")

from conf_harness import OUTCOMES, RESULTS, HarnessError, Result, Run  # noqa: E402
from conf_packets import Ctx  # noqa: E402
from conf_scenarios import SCENARIOS, Scenario  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class ExpectedDifference(Exception):
    """The scenario shows exactly its documented difference."""


def run_scenario(h, sc: Scenario) -> Result:
    h.flush()
    h.set_tunables(**sc.tunables)
    run = Run(h, sc.name)
    try:
        sc.fn(Ctx(h, run))
    except (HarnessError, LabError, OSError, subprocess.SubprocessError) as e:
        run.result.error = f"{type(e).__name__}: {e}"
    finally:
        result = run.finish()
        if sc.tunables:
            h.reset_tunables()
    return result


def _params():
    for name, sc in SCENARIOS.items():
        marks = []
        if sc.expected is not None:
            marks.append(pytest.mark.xfail(strict=True, raises=ExpectedDifference,
                                           reason="documented difference, "
                                                  "see docs/conformance.md"))
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_scenario(harness, name):
    sc = SCENARIOS[name]
    res = run_scenario(harness, sc)
    RESULTS[name] = res
    sig = res.signature()
    if res.error:
        OUTCOMES[name] = "error"
        pytest.fail(f"{sc.doc}\n{res.error}\n{res.report()}", pytrace=False)
    if sc.expected is None:
        OUTCOMES[name] = "differ" if sig else "agree"
        assert not sig, f"{sc.doc}\nfirst difference: {res.first_difference()}\n{res.report()}"
        return
    want = sc.expected.signature()
    if sig == want:
        OUTCOMES[name] = "expected"
        raise ExpectedDifference(res.first_difference())
    OUTCOMES[name] = "changed"
    missing = sorted(want - sig, key=str)
    extra = sorted(sig - want, key=str)
    pytest.fail(f"{sc.doc}\nthe documented difference changed: no longer seen {missing}, "
                f"newly seen {extra}\n{res.report()}", pytrace=False)


def test_enough_scenarios():
    """The issue asked for at least 40 scenarios; window tracking brought
    them to 156 (docs/conformance.md), and none may get lost."""
    assert len(SCENARIOS) >= 156
