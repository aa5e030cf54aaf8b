"""A ctbpf policy and its kernel twin, for the policy verdicts test.

ctbpf judges every packet by its policy in observe mode (the verdict is
counted in ct_verdicts, the packet passes). The kernel judges the same
packet with the ruleset `ctbpf.policy.nftables.to_nft` writes for that policy, made
count-only: every terminal ``drop`` becomes ``counter name "wd_CHAIN"
accept`` and nothing else changes, so what is compared is to_nft's own
translation (table, hooks, iifname jumps, state sets, NEW matches, SYN
test, neighbour discovery exception, default).
"""

from __future__ import annotations

import re

from ctbpf.policy import model, nftables

#: Prefix of the twin tables' names (one table per policy set).
TWIN_PREFIX = "ctbpf_polv_"

_CHAIN_RE = re.compile(r"^\s*chain\s+(\S+)\s*\{")
_TABLE_RE = re.compile(r"^\s*table\s+inet\s+(\S+)\s*\{\s*$")
_DROP_RE = re.compile(r"(^|\s)drop\s*$")


def counter_name(chain: str) -> str:
    return f"wd_{chain}"


def twin_ruleset(ps: model.PolicySet, table: str) -> tuple[str, dict[str, str]]:
    """(nft ruleset, {policy name "in.IFACE": counter name}) of to_nft's
    ruleset for `ps` with only its terminal drops rewritten. A chain with no
    drop (default accept) gets no counter: it can never would-drop."""
    text = nftables.to_nft(ps, table=table)
    out, chain, counters = [], None, {}
    seen_table = False
    for line in text.splitlines():
        m = _TABLE_RE.match(line)
        if m:
            assert m.group(1) == table, f"to_nft named its table {m.group(1)!r}, not {table!r}"
            seen_table = True
            out.append(line)
            out.append("\t@COUNTERS@")
            continue
        m = _CHAIN_RE.match(line)
        if m:
            chain = m.group(1)
            out.append(line)
            continue
        if _DROP_RE.search(line) and not line.lstrip().startswith("#"):
            assert chain is not None, f"a drop outside any chain: {line!r}"
            name = counter_name(chain)
            counters[chain] = name
            line = _DROP_RE.sub(lambda mm: f'{mm.group(1)}counter name "{name}" accept', line)
        out.append(line)
    assert seen_table, f"no 'table inet {table}' in to_nft's output:\n{text}"
    decl = "\n".join(f"\tcounter {n} {{ }}" for n in counters.values())
    ruleset = "\n".join(out).replace("\t@COUNTERS@", decl) + "\n"
    # The per-interface chains are named HOOK_IFACE (to_nft's jump targets).
    by_policy = {}
    for p in ps.policies:
        chain = f"{p.hook}_{nftables._chain_id(p.interface)}"
        if chain in counters:
            by_policy[p.name] = counters[chain]
        else:
            assert p.default == "accept", f"to_nft wrote no drop for {p.name}:\n{text}"
    return ruleset, by_policy


def make_policy(mode: str, **ifaces: dict) -> model.PolicySet:
    """PolicySet(mode, [policy.in.IFACE] tables as the TOML config gives them)."""
    pols = []
    for iface, table in ifaces.items():
        pol, _ = model.parse_interface_policy("in", iface, table, f"[policy.in.{iface}]")
        pols.append(pol)
    return model.PolicySet(mode, pols)
