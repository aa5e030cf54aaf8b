"""Policies compiled into the datapath's maps and read back: ct_policy
(one slot per interface and hook), the policy count in ct_config, and the
per-slot verdict counters (ct_verdicts). A slot is reused only when its
counters are clean, so a new policy never inherits another's counts.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys, configmap
from ctbpf.errors import UsageError
from ctbpf.policy.model import (COUNTS_MAP, FAMILY_V4, F_ENFORCE, F_RULES, F_SYN_ONLY, HOOKS,
                                HOOK_NAMES, InterfacePolicy, MAP, MAX_RULES, MAX_SLOTS, NewRule,
                                PolicySet, STATES, VERDICTS, VERDICT_NAMES, check)
from ctbpf.policy.nftables import describe

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
    configmap.set_policy_count(pin_dir, len(wanted))
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
