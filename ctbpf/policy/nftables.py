"""Policies explained: a one-line summary per interface, and the nftables
ruleset that would do the same with netfilter (`ctbpf policy --nft`).
"""

from __future__ import annotations


from ctbpf.policy.model import FAMILY_V4, InterfacePolicy, NewRule, PROTO_NAMES, PolicySet, STATES

#: ctbpf passes IPv6 neighbour discovery and MLD whatever the policy (IPv6's ARP).
ND_ACCEPT = ("icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, "
             "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, "
             "nd-redirect, mld2-listener-report } accept")


def describe(p: InterfacePolicy) -> str:
    states = [s for s in STATES if s in p.accept]
    out = f"accept {','.join(states) or 'nothing'}"
    if p.new:
        out += f"; new only {', '.join(map(str, p.new))}"
    if p.new_requires_syn:
        out += "; new tcp must be SYN"
    return out + f"; else {p.default}"


# --------------------------------------------------------------------------
# the equivalent nft ruleset


def _nft_rule(r: NewRule, syn: bool) -> list[str]:
    """nft match expressions for one NEW rule (one line each: a rule with
    'any' protocol and SYN-only splits into TCP and the rest)."""
    parts = []
    fam = r.family
    ip = "ip" if fam == FAMILY_V4 else "ip6"
    if fam == 0 and r.proto in (0, 6, 17, 132, 47, 136, 50, 51):
        ip = None
    if r.src is not None:
        parts.append(f"{ip} saddr {r.src}")
    if r.dst is not None:
        parts.append(f"{ip} daddr {r.dst}")
    if r.proto == 1:
        parts.append("meta nfproto ipv4 meta l4proto icmp")
    elif r.proto == 58:
        parts.append("meta nfproto ipv6 meta l4proto ipv6-icmp")
    elif r.proto:
        parts.append(f"meta l4proto {PROTO_NAMES.get(r.proto, r.proto)}")
    if r.has_ports:
        port = str(r.dport_lo) if r.dport_lo == r.dport_hi else f"{r.dport_lo}-{r.dport_hi}"
        parts.append(f"th dport {port}")
    synx = "tcp flags & (fin|syn|rst|ack) == syn"
    if syn and r.proto == 6:
        parts.append(synx)
    elif syn and r.proto == 0:
        return [" ".join(parts + ["meta l4proto tcp", synx]),
                " ".join(parts + ["meta l4proto != tcp"])]
    return [" ".join(parts)]


def chain_rules(p: InterfacePolicy) -> list[str]:
    """The body of the chain that judges one interface's packets, in the
    order ctbpf decides (bpf/policy.h): accepted states, then NEW, then the
    default."""
    lines = []
    plain = [s for s in STATES if s in p.accept and s != "new"]
    if plain:
        lines.append(f"ct state {{ {', '.join(plain)} }} accept")
    if "new" in p.accept:
        rules = p.new or (NewRule(),)
        for r in rules:
            for match in _nft_rule(r, p.new_requires_syn):
                lines.append(f"ct state new {match} accept".replace("  ", " ").strip())
    lines.append(p.default)
    return [" ".join(line.split()) for line in lines]


def to_nft(ps: PolicySet, table: str = "ctbpf") -> str:
    """The policy as an nft ruleset (`nft -f`) doing the same on a kernel
    router with nf_conntrack: a prerouting chain for [policy.in.*] (every
    packet arriving, as XDP sees it), an output chain for [policy.out.*]
    (what the host sends)."""
    out = [f"# ctbpf policy, mode {ps.mode}" +
           ("" if ps.mode == "enforce" else
            ": ctbpf counts these verdicts (would_drop) but applies none"),
           f"table inet {table} {{"]
    hooks = {"in": ("prerouting", "iifname"), "out": ("output", "oifname")}
    for hook, (nft_hook, match) in hooks.items():
        pols = [p for p in ps.policies if p.hook == hook]
        if not pols:
            continue
        out.append(f"\tchain {nft_hook} {{")
        out.append(f"\t\ttype filter hook {nft_hook} priority filter; policy accept;")
        for p in pols:
            out.append(f'\t\t{match} "{p.interface}" jump {hook}_{_chain_id(p.interface)}')
        out.append("\t}")
        for p in pols:
            out.append(f"\tchain {hook}_{_chain_id(p.interface)} {{")
            out.append(f"\t\t{ND_ACCEPT}")
            for line in chain_rules(p):
                out.append(f"\t\t{line}")
            out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def _chain_id(interface: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in interface)
