"""Policies as data: per interface and hook, which user-land states are
accepted, which NEW flows are allowed (rules on protocol, addresses and
ports; SYN only), and the observe/enforce mode. Parsed from the config
file's [policy.*] tables and checked before anything reaches a map.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ctbpf import abi
from ctbpf.errors import UsageError

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
