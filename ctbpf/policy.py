"""Enforce mode: stateful filtering by user-land state, per interface and
direction, decided at XDP (packets arriving) or TC egress (packets the host
sends).

A policy says which user-land states an interface accepts (new,
established, related, invalid, untracked), optionally restricts NEW to
listed protocols, ports and prefixes, optionally refuses TCP NEW packets
that are not a bare SYN (the spec's "NEW not SYN"), and gives the verdict of
everything else (`default`, normally drop). In the TOML config::

    mode = "enforce"            # or "observe" (default): verdicts counted only

    [policy.in.wan]             # packets arriving on wan
    accept = ["established", "related"]
    new = ["tcp/22", "tcp/443"] # NEW is accepted only towards these
    new_requires_syn = true
    default = "drop"

    [policy.in.lan]
    accept = ["new", "established", "related"]

    [policy.out.wan]            # packets the host itself sends out of wan
    accept = ["new", "established", "related"]

A NEW rule is ``PROTO[/PORT[-PORT]] [from PREFIX] [to PREFIX]``: tcp/22,
udp/1000-2000, icmp, ipv6-icmp, any from 10.0.0.0/8, tcp/443 to 192.0.2.0/24.

The policy is written into the pinned ct_policy map (struct ct_policy,
bpf/abi.h), one element per interface and direction, each replaced
atomically; a bad policy is refused whole, before anything is written.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from . import abi, bpfsys
from .errors import UsageError

STATES = tuple(abi.PKT_STATE_NAMES[i] for i in range(abi.const("CT_PKT_STATES")))
HOOKS = {"in": abi.const("CT_HOOK_IN"), "out": abi.const("CT_HOOK_OUT")}
HOOK_NAMES = {v: k for k, v in HOOKS.items()}
MODES = ("observe", "enforce")
VERDICTS = {"accept": abi.const("CT_VERDICT_ACCEPT"), "drop": abi.const("CT_VERDICT_DROP")}
VERDICT_NAMES = {abi.const("CT_VERDICT_ACCEPT"): "accept", abi.const("CT_VERDICT_DROP"): "drop",
                 abi.const("CT_VERDICT_WOULD_DROP"): "would_drop"}
MAX_RULES = abi.const("CT_POLICY_RULES")
MAX_SLOTS = abi.const("CT_POLICY_SLOTS")
F_ENFORCE = abi.const("CT_POL_ENFORCE")
F_SYN_ONLY = abi.const("CT_POL_NEW_SYN_ONLY")
F_RULES = abi.const("CT_POL_NEW_RULES")
FAMILY_V4, FAMILY_V6 = abi.const("CT_FAMILY_IPV4"), abi.const("CT_FAMILY_IPV6")
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132,
          "gre": 47, "udplite": 136, "esp": 50, "ah": 51, "any": 0}
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp", 47: "gre",
               136: "udplite", 50: "esp", 51: "ah"}
#: ctbpf passes IPv6 neighbour discovery and MLD whatever the policy (IPv6's ARP).
ND_ACCEPT = ("icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, "
             "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, "
             "nd-redirect, mld2-listener-report } accept")
POLICY_KEYS = ("accept", "new", "new_requires_syn", "default", "force")
MAP = "ct_policy"
COUNTS_MAP = "ct_verdicts"


# --------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class NewRule:
    proto: int = 0                       # 0: any
    dport_lo: int = 0
    dport_hi: int = 0xFFFF
    src: ipaddress._BaseNetwork | None = None
    dst: ipaddress._BaseNetwork | None = None

    @property
    def family(self) -> int:
        nets = [n for n in (self.src, self.dst) if n is not None]
        if nets:
            return FAMILY_V4 if nets[0].version == 4 else FAMILY_V6
        if self.proto == 1:
            return FAMILY_V4
        if self.proto == 58:
            return FAMILY_V6
        return 0

    @property
    def has_ports(self) -> bool:
        return (self.dport_lo, self.dport_hi) != (0, 0xFFFF)

    def __str__(self) -> str:
        out = PROTO_NAMES.get(self.proto, str(self.proto)) if self.proto else "any"
        if self.has_ports:
            out += f"/{self.dport_lo}" if self.dport_lo == self.dport_hi else \
                f"/{self.dport_lo}-{self.dport_hi}"
        if self.src is not None:
            out += f" from {self.src}"
        if self.dst is not None:
            out += f" to {self.dst}"
        return out


@dataclass
class InterfacePolicy:
    interface: str
    hook: str = "in"                      # "in" (XDP) or "out" (TC egress)
    accept: frozenset = frozenset(STATES)
    new: tuple = ()                       # NewRule; empty: any NEW the states allow
    new_requires_syn: bool = False
    default: str = "drop"

    @property
    def name(self) -> str:
        return f"{self.hook}.{self.interface}"

    def cuts_off(self) -> bool:
        """True when established traffic would be dropped: the host could
        lose the very session that set the policy."""
        return "established" not in self.accept and self.default == "drop"


@dataclass
class PolicySet:
    mode: str = "observe"
    policies: list = field(default_factory=list)   # InterfacePolicy

    def get(self, hook: str, interface: str) -> InterfacePolicy | None:
        return next((p for p in self.policies
                     if p.hook == hook and p.interface == interface), None)


# --------------------------------------------------------------------------
# parsing and checking


def _network(text: str, where: str) -> ipaddress._BaseNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not an address or prefix "
                         f"(10.0.0.0/8, 2001:db8::/32, 192.0.2.1)") from None


def _port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{where}: port {text!r} must be a number from 1 to 65535")
    return int(text)


def parse_rule(text: str, where: str = "new") -> NewRule:
    """``PROTO[/PORT[-PORT]] [from PREFIX] [to PREFIX]``."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: {text!r} is not a rule; write PROTO[/PORT[-PORT]] "
                         f"[from PREFIX] [to PREFIX], e.g. tcp/22 or udp/53 from 10.0.0.0/8")
    words = text.split()
    head, rest = words[0].lower(), words[1:]
    proto_text, _, ports = head.partition("/")
    if proto_text in PROTOS:
        proto = PROTOS[proto_text]
    elif proto_text.isdigit() and 0 < int(proto_text) < 256:
        proto = int(proto_text)
    else:
        raise UsageError(f"{where}: unknown protocol {proto_text!r} in {text!r}; allowed: "
                         f"{', '.join(sorted(PROTOS))} or a number 1-255")
    lo, hi = 0, 0xFFFF
    if ports:
        if proto not in (6, 17):
            raise UsageError(f"{where}: {text!r}: only tcp and udp rules take a port")
        a, dash, b = ports.partition("-")
        lo = _port(a, where)
        hi = _port(b, where) if dash else lo
        if hi < lo:
            raise UsageError(f"{where}: {text!r}: port range {lo}-{hi} is backwards")
    src = dst = None
    while rest:
        if len(rest) < 2 or rest[0] not in ("from", "to"):
            raise UsageError(f"{where}: {text!r}: after the protocol come 'from PREFIX' "
                             f"and/or 'to PREFIX'")
        net = _network(rest[1], where)
        if rest[0] == "from":
            src = net
        else:
            dst = net
        rest = rest[2:]
    rule = NewRule(proto, lo, hi, src, dst)
    if src is not None and dst is not None and src.version != dst.version:
        raise UsageError(f"{where}: {text!r} mixes IPv4 and IPv6 prefixes")
    fam = [n.version for n in (src, dst) if n is not None]
    if fam and ((proto == 1 and fam[0] == 6) or (proto == 58 and fam[0] == 4)):
        raise UsageError(f"{where}: {text!r}: {PROTO_NAMES[proto]} with an "
                         f"IPv{fam[0]} prefix never matches")
    return rule


def _states(raw, where: str) -> frozenset:
    if isinstance(raw, str):
        raw = [s for s in raw.replace(",", " ").split() if s]
    if not isinstance(raw, (list, tuple)):
        raise UsageError(f"{where}: must be a list of states, allowed: {', '.join(STATES)}")
    out = set()
    for s in raw:
        name = str(s).lower()
        if name not in STATES:
            raise UsageError(f"{where}: unknown state {s!r}; allowed: {', '.join(STATES)}")
        out.add(name)
    return frozenset(out)


def _bool(raw, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no",
                                                "off"):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise UsageError(f"{where}: {raw!r} must be true or false")


def parse_mode(raw, where: str = "mode") -> str:
    if not isinstance(raw, str) or raw.lower() not in MODES:
        raise UsageError(f"{where}: {raw!r} is not a mode; allowed: {', '.join(MODES)}")
    return raw.lower()


def parse_interface_policy(hook: str, interface: str, table: dict,
                           where: str) -> tuple[InterfacePolicy, bool]:
    """One [policy.HOOK.IFACE] table; returns the policy and its `force`."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}: must be a table of {', '.join(POLICY_KEYS)}")
    for key in table:
        if key not in POLICY_KEYS:
            raise UsageError(f"{where}: unknown key {key!r}; allowed: {', '.join(POLICY_KEYS)}")
    if not interface or len(interface) >= 16 or "/" in interface or interface.strip() != interface:
        raise UsageError(f"{where}: {interface!r} is not an interface name")
    pol = InterfacePolicy(interface, hook)
    if "accept" in table:
        pol.accept = _states(table["accept"], f"{where}.accept")
    if "new" in table:
        rules = table["new"]
        if isinstance(rules, str):
            rules = [r.strip() for r in rules.split(",") if r.strip()]
        if not isinstance(rules, list):
            raise UsageError(f"{where}.new: must be a list of rules such as [\"tcp/22\"]")
        if len(rules) > MAX_RULES:
            raise UsageError(f"{where}.new: {len(rules)} rules, at most {MAX_RULES} allowed")
        pol.new = tuple(parse_rule(r, f"{where}.new") for r in rules)
        if pol.new:
            # Listing what NEW may reach accepts NEW there.
            pol.accept = pol.accept | {"new"}
    if "new_requires_syn" in table:
        pol.new_requires_syn = _bool(table["new_requires_syn"], f"{where}.new_requires_syn")
    if "default" in table:
        d = str(table["default"]).lower()
        if d not in VERDICTS:
            raise UsageError(f"{where}.default: {table['default']!r}; allowed: accept, drop")
        pol.default = d
    force = _bool(table.get("force", False), f"{where}.force")
    return pol, force


def parse_policy_table(doc: dict, where: str) -> tuple[list, set]:
    """The [policy] table of a config: {"in": {IFACE: {...}}, "out": {...}}.
    Returns (policies, names of those with force)."""
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: [policy] must hold [policy.in.IFACE] / [policy.out.IFACE] "
                         f"tables")
    policies, forced = [], set()
    for hook, ifaces in doc.items():
        if hook not in HOOKS:
            raise UsageError(f"{where}: [policy.{hook}]: unknown direction; allowed: in, out "
                             f"([policy.in.IFACE] for packets arriving, [policy.out.IFACE] "
                             f"for packets the host sends)")
        if not isinstance(ifaces, dict):
            raise UsageError(f"{where}: [policy.{hook}] must hold one table per interface")
        for iface, table in ifaces.items():
            pol, force = parse_interface_policy(hook, iface, table,
                                                f"{where}: [policy.{hook}.{iface}]")
            policies.append(pol)
            if force:
                forced.add(pol.name)
    return policies, forced


def check(ps: PolicySet, forced: set | None = None) -> None:
    """Refuse (UsageError) what cannot or must not be applied: more
    interfaces than slots, or cutting established traffic off without force."""
    forced = forced or set()
    if len(ps.policies) > MAX_SLOTS:
        raise UsageError(f"policy: {len(ps.policies)} interface policies, at most "
                         f"{MAX_SLOTS} allowed")
    seen = set()
    for p in ps.policies:
        if p.name in seen:
            raise UsageError(f"policy {p.name}: given twice")
        seen.add(p.name)
        if p.cuts_off() and p.name not in forced:
            raise UsageError(f"policy {p.name}: established is not accepted and the default "
                             f"is drop, which cuts off every connection through {p.interface} "
                             f"(this session's too); add force = true (or --force) if you "
                             f"mean it")


# --------------------------------------------------------------------------
# the map


def _mask(prefixlen: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1) if prefixlen else 0


def _addr_words(net, arr_addr, arr_mask) -> None:
    """An address and mask as the datapath compares them: the raw bytes of
    the header (network order), IPv4 in the first word."""
    if net is None:
        return
    bits = 32 if net.version == 4 else 128
    raw = net.network_address.packed
    mask = _mask(net.prefixlen, bits).to_bytes(bits // 8, "big")
    for i in range(len(raw) // 4):
        arr_addr[i] = int.from_bytes(raw[4 * i:4 * i + 4], "little")
        arr_mask[i] = int.from_bytes(mask[4 * i:4 * i + 4], "little")


def encode(p: InterfacePolicy, mode: str, slot: int) -> abi.CtPolicy:
    v = abi.CtPolicy()
    for s in p.accept:
        v.accept |= 1 << STATES.index(s)
    if mode == "enforce":
        v.flags |= F_ENFORCE
    if p.new_requires_syn:
        v.flags |= F_SYN_ONLY
    if p.new:
        v.flags |= F_RULES
    v.default_verdict = VERDICTS[p.default]
    v.nrules = len(p.new)
    v.slot = slot
    for i, r in enumerate(p.new):
        rule = v.rules[i]
        rule.family, rule.proto = r.family, r.proto
        rule.family_mask = 0xFF if r.family else 0
        rule.proto_mask = 0xFF if r.proto else 0
        rule.dport_lo, rule.dport_hi = r.dport_lo, r.dport_hi
        _addr_words(r.src, rule.src, rule.src_mask)
        _addr_words(r.dst, rule.dst, rule.dst_mask)
    return v


def _network_from(words, mask_words, family: int):
    mask = b"".join(int(w).to_bytes(4, "little") for w in mask_words)
    if not any(mask):
        return None
    addr = b"".join(int(w).to_bytes(4, "little") for w in words)
    size = 4 if family == FAMILY_V4 else 16
    plen = int.from_bytes(mask[:size], "big").bit_count()
    return ipaddress.ip_network((addr[:size], plen))


def decode(interface: str, hook: str, v) -> tuple[InterfacePolicy, str]:
    """A ct_policy element back to (policy, mode)."""
    rules = []
    for i in range(min(v.nrules, MAX_RULES)):
        r = v.rules[i]
        fam = r.family or FAMILY_V4
        rules.append(NewRule(r.proto, r.dport_lo, r.dport_hi,
                             _network_from(r.src, r.src_mask, fam),
                             _network_from(r.dst, r.dst_mask, fam)))
    pol = InterfacePolicy(interface, hook,
                          frozenset(s for i, s in enumerate(STATES) if v.accept & (1 << i)),
                          tuple(rules), bool(v.flags & F_SYN_ONLY),
                          VERDICT_NAMES.get(v.default_verdict, "drop"))
    return pol, "enforce" if v.flags & F_ENFORCE else "observe"


def _ifname(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise UsageError(f"policy: no interface {name!r} in this network namespace") from None


def read(pin_dir: Path) -> tuple[PolicySet, dict]:
    """The policies in force: (PolicySet, {policy name: (ifindex, slot)})."""
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        keys, values, count = bpfsys.lookup_batch(fd, ctypes.sizeof(abi.CtPolicyKey),
                                                  ctypes.sizeof(abi.CtPolicy), 2 * MAX_SLOTS)
    finally:
        os.close(fd)
    ps, where = PolicySet(), {}
    modes = set()
    for i in range(count):
        k = abi.CtPolicyKey.from_buffer_copy(keys, i * ctypes.sizeof(abi.CtPolicyKey))
        v = abi.CtPolicy.from_buffer_copy(values, i * ctypes.sizeof(abi.CtPolicy))
        pol, mode = decode(_ifname(k.ifindex), HOOK_NAMES.get(k.hook, "in"), v)
        ps.policies.append(pol)
        modes.add(mode)
        where[pol.name] = (k.ifindex, v.slot)
    ps.policies.sort(key=lambda p: (p.hook, p.interface))
    ps.mode = "enforce" if "enforce" in modes else "observe"
    return ps, where


def apply(pin_dir: Path, ps: PolicySet, forced: set | None = None) -> list[str]:
    """Make `ps` the policy in force: check it whole, then write each
    interface's element (an atomic replace each) and remove the elements of
    interfaces it no longer names. Returns what changed, one line each."""
    check(ps, forced)
    wanted = {}
    for p in ps.policies:
        wanted[(_ifindex(p.interface), HOOKS[p.hook])] = p
    current, where = read(pin_dir)
    old_slots = {(idx, HOOKS[name.split(".", 1)[0]]): slot for name, (idx, slot) in where.items()}
    used = {old_slots[k] for k in wanted if k in old_slots}
    free = iter(_free_slots(pin_dir, used))
    lines = []
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        # Removed first: their slots are then no longer counted into, should
        # a new policy have to take one of them.
        for (ifindex, hook), slot in old_slots.items():
            if (ifindex, hook) not in wanted:
                bpfsys.delete(fd, abi.CtPolicyKey(ifindex=ifindex, hook=hook))
                lines.append(f"policy {HOOK_NAMES[hook]}.{_ifname(ifindex)}: removed "
                             f"(everything passes)")
        for (ifindex, hook), p in wanted.items():
            slot = old_slots.get((ifindex, hook))
            if slot is None:
                slot = next(free)
            key = abi.CtPolicyKey(ifindex=ifindex, hook=hook)
            bpfsys.update(fd, key, encode(p, ps.mode, slot))
            before = current.get(p.hook, p.interface)
            if before != p or current.mode != ps.mode:
                lines.append(f"policy {p.name}: {describe(p)} ({ps.mode})")
    finally:
        os.close(fd)
    _set_count(pin_dir, len(wanted))
    return lines


def _free_slots(pin_dir: Path, used: set) -> list[int]:
    """Slots (rows of ct_verdicts) for new policies, those that never
    counted a packet first: a new policy must not start with the counts of
    a removed one (ctbpf policy, ctbpf_policy_packets_total). A row that
    counted already is taken only when no clean one is left."""
    try:
        counts = read_counts(pin_dir)
    except OSError:
        counts = []
    row = len(STATES) * abi.const("CT_VERDICT_MAX")

    def dirty(s: int) -> bool:
        return any(counts[s * row:(s + 1) * row])

    return sorted((s for s in range(MAX_SLOTS) if s not in used), key=lambda s: (dirty(s), s))


def _set_count(pin_dir: Path, count: int) -> None:
    """Tell the datapath how many policies there are (0: no lookup at all)."""
    from .loader import read_config, write_raw_config  # noqa: PLC0415

    cfg = read_config(pin_dir)
    slot = abi.const("CT_CFG_POLICIES")
    if cfg.value[slot] != count:
        cfg.value[slot] = count
        write_raw_config(pin_dir, cfg)


def describe(p: InterfacePolicy) -> str:
    states = [s for s in STATES if s in p.accept]
    out = f"accept {','.join(states) or 'nothing'}"
    if p.new:
        out += f"; new only {', '.join(map(str, p.new))}"
    if p.new_requires_syn:
        out += "; new tcp must be SYN"
    return out + f"; else {p.default}"


def read_counts(pin_dir: Path) -> list[int]:
    """ct_verdicts summed over CPUs, indexed as in bpf/abi.h."""
    fd = bpfsys.obj_get(str(pin_dir / COUNTS_MAP))
    try:
        ncpu = bpfsys.possible_cpus()
        size = ctypes.sizeof(abi.CtVerdictCounts)
        buf = ctypes.create_string_buffer(size * ncpu)
        bpfsys.lookup(fd, ctypes.c_uint32(0), buf)
    finally:
        os.close(fd)
    n = abi.const("CT_VERDICT_COUNTS")
    totals = [0] * n
    for cpu in range(ncpu):
        words = memoryview(buf.raw)[cpu * size:(cpu + 1) * size].cast("Q")
        for i in range(n):
            totals[i] += words[i]
    return totals


def verdict_counts(pin_dir: Path) -> list[tuple[str, str, str, int]]:
    """(policy name, state, verdict, packets) for every policy in force."""
    ps, where = read(pin_dir)
    counts = read_counts(pin_dir)
    nv = abi.const("CT_VERDICT_MAX")
    out = []
    for p in ps.policies:
        _, slot = where[p.name]
        for si, state in enumerate(STATES):
            for verdict, vname in VERDICT_NAMES.items():
                out.append((p.name, state, vname, counts[(slot * len(STATES) + si) * nv +
                                                         verdict]))
    return out


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
