"""Enforce mode side by side with the kernel: the same policy, written by
`ctbpf.policy.nftables.to_nft` as an nft ruleset on the kernel's side, gives the
same accept/drop decision for every packet of the conformance scenarios.

ctbpf runs in observe mode with the policy applied (`policy.apply`): its
verdicts are counted in ct_verdicts (would_drop) and every packet passes,
so both trackers keep seeing the same traffic and their states stay
comparable. The kernel gets, in the router namespace, to_nft's ruleset for
the same policy in a table of its own, with every terminal ``drop``
rewritten into ``counter name "wd_CHAIN" accept`` (conf_policy_twin.py).
For every step of every scenario, ctbpf's would_drop delta per interface
(`policy.verdict_counts`) must equal the kernel's counter delta.

Each scenario runs once per policy set (ctbpf holds one policy per
interface). Steps where the two trackers give a packet different user-land
states are compared only when that difference is undocumented (then the
test fails); at documented differences (conf_scenarios.py `expected`,
docs/conformance.md) the verdicts are left out and counted apart: a
different state may well give a different verdict.
"""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import dataclass, field

import pytest

from ctbpf.lab.netns import LabError
from ctbpf.policy import mapio, model, nftables

pytest.importorskip("scapy", reason="scapy is missing (`make setup`)")

import conf_packets  # noqa: E402
from conf_harness import (  # noqa: E402
    PACKET_WAIT, STATES, HarnessError, Run, Step, diff_counts, in_netns)
from conf_packets import Ctx  # noqa: E402
from conf_policy_twin import TWIN_PREFIX, make_policy, twin_ruleset  # noqa: E402
from conf_scenarios import SCENARIOS, Scenario  # noqa: E402

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


# --------------------------------------------------------------------------
# the policies


def firewall(lab, port: int) -> model.PolicySet:
    """The spec's firewall: anything from the inside (client), only answers
    from the outside (server)."""
    return make_policy("observe",
                       cli0={"accept": ["new", "established", "related"]},
                       srv0={"accept": ["established", "related"]})


def restricted(lab, port: int) -> model.PolicySet:
    """NEW restricted to ports, prefixes and protocols, TCP NEW must be a
    bare SYN (inside); INVALID accepted and a few NEW let in (outside).
    `port` is the first port the scenario will take: the client's port of
    its first conversation, whose server port is port + 2."""
    net4 = f"{lab.client_ip.rsplit('.', 1)[0]}.0/24"
    return make_policy(
        "observe",
        cli0={"accept": ["established", "related"],
              "new": [f"tcp/{port + 2} to {lab.server_ip}/32",
                      f"tcp/{port + 6}-{port + 40}",
                      f"udp/{port + 2}-65535 from {net4}",
                      f"ipv6-icmp to {lab.server_ip6}/128",
                      "icmp",
                      "132"],
              "new_requires_syn": True},
        srv0={"accept": ["established", "related", "invalid"],
              "new": [f"udp/{port}", f"icmp from {lab.server_ip}/32", f"tcp/{port}"]})


POLICIES = {"firewall": firewall, "restricted": restricted}


# --------------------------------------------------------------------------
# records


@dataclass
class PassRecord:
    """One scenario under one policy set."""
    compared: int = 0            # packets whose verdicts were compared
    agree: int = 0
    left_out: int = 0            # packets at documented state differences
    would_drop: int = 0          # ctbpf would_drop among compared packets
    problems: list = field(default_factory=list)


#: (scenario, policy label) -> PassRecord, for the summary.
RECORDS: dict[tuple[str, str], PassRecord] = {}


class VerdictRun(Run):
    """A Run that keeps every step's full counter deltas (states and
    verdicts, both sides)."""

    def __init__(self, h, name: str) -> None:
        super().__init__(h, name)
        self.deltas: list[tuple[Step, dict, dict]] = []

    def observe(self, label: str, expect_k: int = 0, expect_c: int | None = None,
                timeout: float = PACKET_WAIT) -> Step:
        k0, c0 = self.k_last, self.c_last
        st = super().observe(label, expect_k, expect_c, timeout)
        self.deltas.append((st, diff_counts(self.k_last, k0), diff_counts(self.c_last, c0)))
        return st


# --------------------------------------------------------------------------
# the twin tables and ctbpf's verdict counters


class Twins:
    def __init__(self, h) -> None:
        self.h = h
        self.tables = {label: f"{TWIN_PREFIX}{label}" for label in POLICIES}
        self.counters: dict[str, dict[str, str]] = {}

    def ctbpf_verdicts(self) -> dict[str, int]:
        with in_netns(self.h.lab.router):
            rows = mapio.verdict_counts(self.h.pin_dir)
        out: dict[str, int] = {}
        for name, state, verdict, n in rows:
            key = f"pol:{name}:{verdict}"
            out[key] = out.get(key, 0) + n
            out[f"pol:{name}:{state}:{verdict}"] = n
        return out

    def load(self, label: str, ps: model.PolicySet) -> None:
        """Apply `ps` to ctbpf (observe) and (re)load its twin table."""
        assert ps.mode == "observe"
        table = self.tables[label]
        ruleset, counters = twin_ruleset(ps, table)
        self.h.lab.exec("router", ["nft", "delete", "table", "inet", table])
        self.h.lab.nft("router", ruleset)
        self.counters[label] = counters
        with in_netns(self.h.lab.router):
            mapio.apply(self.h.pin_dir, ps)

    def close(self) -> None:
        if self.ctbpf_verdicts in self.h.extra_ctbpf_counters:
            self.h.extra_ctbpf_counters.remove(self.ctbpf_verdicts)
        if self.h.lab is None:
            return
        for table in self.tables.values():
            self.h.lab.exec("router", ["nft", "delete", "table", "inet", table])
        with in_netns(self.h.lab.router):
            mapio.apply(self.h.pin_dir, model.PolicySet())


@pytest.fixture(scope="module")
def twins(harness, request):
    t = Twins(harness)
    harness.extra_ctbpf_counters.append(t.ctbpf_verdicts)
    request.config.pluginmanager.register(_Summary(), "ctbpf-policy-verdicts-summary")
    try:
        yield t
    finally:
        t.close()


# --------------------------------------------------------------------------
# running and comparing


def _run(h, sc: Scenario) -> VerdictRun:
    h.flush()
    h.set_tunables(**sc.tunables)
    run = VerdictRun(h, sc.name)
    try:
        sc.fn(Ctx(h, run))
    except (HarnessError, LabError, OSError, subprocess.SubprocessError) as e:
        run.result.error = f"{type(e).__name__}: {e}"
    finally:
        run.finish()
        if sc.tunables:
            h.reset_tunables()
    return run


def _compare(sc: Scenario, run: VerdictRun, ps: model.PolicySet, table: str,
             counters: dict[str, str]) -> PassRecord:
    rec = PassRecord()
    documented = sc.expected.signature() if sc.expected else set()
    for n, (st, kd, cd) in enumerate(run.deltas, 1):
        judged = sum(cd.get(f"pol:{p.name}:{v}", 0) for p in ps.policies
                     for v in ("accept", "would_drop", "drop"))
        packets = max(judged - kd.get("noise", 0), 0)
        state_differs = any(f == "verdict" for f, _ in st.diffs)
        if state_differs and (n, "verdict") in documented:
            rec.left_out += packets
            continue
        ours = {p.name: cd.get(f"pol:{p.name}:would_drop", 0) for p in ps.policies}
        kernel = {p.name: kd.get(f"{table}:{counters[p.name]}", 0) if p.name in counters else 0
                  for p in ps.policies}
        applied = {p.name: cd.get(f"pol:{p.name}:drop", 0) for p in ps.policies}
        rec.compared += packets
        rec.would_drop += sum(ours.values())
        where = f"step {n} '{st.label}' [{st.sides()}]"
        if state_differs:
            rec.problems.append(f"{where}: undocumented user-land state difference "
                                f"(kernel {st.kernel_verdict}, ctbpf {st.ctbpf_verdict})")
        elif any(applied.values()):
            rec.problems.append(f"{where}: ctbpf dropped packets in observe mode: {applied}")
        elif ours != kernel:
            detail = {p.name: {s: cd.get(f"pol:{p.name}:{s}:would_drop", 0) for s in STATES
                               if cd.get(f"pol:{p.name}:{s}:would_drop", 0)}
                      for p in ps.policies}
            rec.problems.append(f"{where}: would_drop ctbpf {ours} {detail}, kernel {kernel}")
        else:
            rec.agree += packets
    if run.result.error:
        rec.problems.append(f"error: {run.result.error}")
    return rec


@pytest.mark.parametrize("name", list(SCENARIOS), ids=list(SCENARIOS))
def test_policy_verdicts(twins, name):
    sc = SCENARIOS[name]
    failures = []
    for label, make in POLICIES.items():
        # The scenario's ports start at `first`; the restricted policy
        # names some of them.
        first = next(conf_packets._ports)
        conf_packets._ports = itertools.count(first, 2)
        ps = make(twins.h.lab, first)
        twins.load(label, ps)
        run = _run(twins.h, sc)
        rec = _compare(sc, run, ps, twins.tables[label], twins.counters[label])
        RECORDS[(name, label)] = rec
        if rec.problems:
            what = "; ".join(f"{p.name}: {nftables.describe(p)}" for p in ps.policies)
            failures.append(f"policy {label} ({what}):\n  " + "\n  ".join(rec.problems))
    if failures:
        pytest.fail(f"{sc.doc}\n" + "\n".join(failures) + "\n" + run.result.report(),
                    pytrace=False)


def test_twin_keeps_to_nft_structure():
    """The twin is to_nft's ruleset with only its terminal drops changed."""
    class FakeLab:
        client_ip, server_ip = "10.9.1.2", "10.9.2.2"
        client_ip6, server_ip6 = "fd00:9:1::2", "fd00:9:2::2"
    for label, make in POLICIES.items():
        ps = make(FakeLab, 50000)
        original = nftables.to_nft(ps, table="t").splitlines()
        twin, counters = twin_ruleset(ps, "t")
        lines = [ln for ln in twin.splitlines() if not ln.strip().startswith("counter wd_")]
        assert len(lines) == len(original), label
        changed = [(a, b) for a, b in zip(original, lines) if a != b]
        assert len(changed) == len(counters) == sum(p.default == "drop" for p in ps.policies)
        for a, b in changed:
            assert a.strip() == "drop" and b.strip().startswith("counter name \"wd_") \
                and b.strip().endswith(" accept"), (a, b)


class _Summary:
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        if not RECORDS:
            return
        tr = terminalreporter
        tr.section("policy verdicts: ctbpf (observe) vs to_nft's ruleset on the kernel")
        for label in POLICIES:
            recs = [r for (s, lab), r in RECORDS.items() if lab == label]
            tr.write_line(f"{label:<11} {sum(r.agree for r in recs)}/"
                          f"{sum(r.compared for r in recs)} packets agree, "
                          f"{sum(r.would_drop for r in recs)} would_drop; "
                          f"{sum(r.left_out for r in recs)} left out at documented state "
                          f"differences")
        for (s, label), r in RECORDS.items():
            for p in r.problems:
                tr.write_line(f"DIFFER   {s} [{label}]: {p}")
        scen = {s for s, _ in RECORDS}
        agree = sum(r.agree for r in RECORDS.values())
        compared = sum(r.compared for r in RECORDS.values())
        left = sum(r.left_out for r in RECORDS.values())
        tr.write_line(f"policy verdicts: {agree}/{compared} packets agree over {len(scen)} "
                      f"scenarios and {len(POLICIES)} policies ({2 * len(POLICIES)} interface "
                      f"policies); {left} packets at documented state differences not compared")
