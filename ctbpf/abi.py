"""The datapath ABI, read from bpf/abi.h: the one source of every struct,
enum and counter index that C and Python share.

The header keeps to a restricted syntax (see its opening comment); this
module parses it at import time into integer constants and ctypes
structures, so Python never re-declares a layout by hand.
tests/unit/test_abi.py checks the result against clang's own layout.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

from ctbpf.paths import BPF_DIR

ABI_HEADER = BPF_DIR / "abi.h"

_CTYPES = {
    "__u8": ctypes.c_uint8,
    "__u16": ctypes.c_uint16,
    "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^\s*#define\s+([A-Z_][A-Z0-9_]*)\s+(\(?-?(?:0x[0-9a-fA-F]+|\d+)\)?)\s*$", re.M)
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", re.S)
_FIELD = re.compile(r"^(__u8|__u16|__u32|__u64|struct\s+\w+)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?$")


class AbiError(Exception):
    """bpf/abi.h left the syntax this parser understands."""


def _parse(text: str) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, type]]:
    text = _COMMENT.sub("", text)
    consts: dict[str, int] = {}
    for name, value in _DEFINE.findall(text):
        consts[name] = int(value.strip("()"), 0)

    enums: dict[str, dict[str, int]] = {}
    for enum_name, body in _ENUM.findall(text):
        members: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in body.split(","))):
            name, sep, value = (s.strip() for s in item.partition("="))
            if not sep:
                raise AbiError(f"enum {enum_name}: {name} needs an explicit value")
            members[name] = int(value, 0)
        enums[enum_name] = members
        consts.update(members)

    structs: dict[str, type] = {}
    for struct_name, body in _STRUCT.findall(text):
        fields = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            m = _FIELD.match(" ".join(decl.split()))
            if not m:
                raise AbiError(f"struct {struct_name}: cannot parse field {decl!r}")
            ctype, fname, count = m.groups()
            if ctype.startswith("struct"):
                inner = ctype.split()[1]
                if inner not in structs:
                    raise AbiError(f"struct {struct_name}: struct {inner} is not defined before it")
                ftype = structs[inner]
            else:
                ftype = _CTYPES[ctype]
            if count is not None:
                n = int(count, 0) if count[0].isdigit() else consts[count]
                ftype = ftype * n
            fields.append((fname, ftype))
        structs[struct_name] = type(struct_name, (ctypes.Structure,), {"_fields_": fields})
    return consts, enums, structs


def load(path: Path = ABI_HEADER):
    """Parse an ABI header; returns (constants, enums, structs)."""
    return _parse(path.read_text())


CONSTS, ENUMS, STRUCTS = load()

LAYOUT_VERSION: int = CONSTS["CT_LAYOUT_VERSION"]
CtKey = STRUCTS["ct_key"]
CtEntry = STRUCTS["ct_entry"]
CtAcct = STRUCTS["ct_acct"]
CtConfig = STRUCTS["ct_config"]
CtCounters = STRUCTS["ct_counters"]
CtEvent = STRUCTS["ct_event"]
CtSweepHeader = STRUCTS["ct_sweep_header"]
CtTimer = STRUCTS["ct_timer"]
CtPolicyKey = STRUCTS["ct_policy_key"]
CtNewRule = STRUCTS["ct_new_rule"]
CtPolicy = STRUCTS["ct_policy"]
CtVerdictCounts = STRUCTS["ct_verdict_counts"]
CtFwdCounters = STRUCTS["ct_fwd_counters"]


def members(enum: str, prefix: str) -> dict[int, str]:
    """value -> short name for an enum, its prefix stripped."""
    return {v: k[len(prefix):] for k, v in ENUMS[enum].items() if k.startswith(prefix)}


def const(name: str) -> int:
    return CONSTS[name]


# Names users see, derived from the header's enums.
TCP_STATE_NAMES = {v: n for v, n in members("ct_tcp_state", "CT_TCP_").items()
                   if v <= CONSTS["CT_TCP_SYN_SENT2"]}
PKT_STATE_NAMES = {v: n.lower() for v, n in members("ct_pkt_state", "CT_PKT_").items()}
INVALID_REASON_NAMES = {v: n.lower() for v, n in members("ct_invalid_reason", "CT_INV_").items()
                        if v < CONSTS["CT_INV_REASON_MAX"]}
STAT_NAMES = {v: n.lower() for v, n in members("ct_stat", "CT_STAT_").items()
              if v < CONSTS["CT_STAT_INVALID_BASE"]}


# ct_entry's clock: ticks of 2^CT_TICK_SHIFT ns of CLOCK_MONOTONIC.
TICK_SHIFT: int = CONSTS["CT_TICK_SHIFT"]


def ticks(ns: int) -> int:
    """The tick a CLOCK_MONOTONIC instant (ns) falls in."""
    return ns >> TICK_SHIFT


def tick_ns(tick: int) -> int:
    """The instant (ns) a tick begins."""
    return tick << TICK_SHIFT
