"""Tunables of the datapath: the kernel's sysctl names without the
`nf_conntrack_` prefix, their slot in ct_config and their defaults.

Timeout defaults are the spec's table 7-2 (Iptables Tutorial), which is
where ctbpf differs from today's kernel only for CLOSE_WAIT (12 h there,
60 s in the kernel); UDP, ICMP and generic defaults are the kernel's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctbpf import abi


@dataclass(frozen=True)
class Tunable:
    name: str
    slot: int          # index into ct_config.value
    default: int
    minimum: int
    maximum: int
    unit: str          # "s" for timeouts, "bool", "count"
    doc: str


_DAY = 86400


def _timeout(name: str, slot: str, default: int, doc: str) -> Tunable:
    return Tunable(name, abi.const(slot), default, 1, 30 * _DAY, "s", doc)


TUNABLES: tuple[Tunable, ...] = (
    _timeout("tcp_timeout_syn_sent", "CT_CFG_TCP_TIMEOUT_SYN_SENT", 120, "SYN seen, no answer yet"),
    _timeout("tcp_timeout_syn_recv", "CT_CFG_TCP_TIMEOUT_SYN_RECV", 60, "SYN/ACK seen"),
    _timeout("tcp_timeout_established", "CT_CFG_TCP_TIMEOUT_ESTABLISHED", 432000, "handshake done"),
    _timeout("tcp_timeout_fin_wait", "CT_CFG_TCP_TIMEOUT_FIN_WAIT", 120, "first FIN seen"),
    _timeout("tcp_timeout_close_wait", "CT_CFG_TCP_TIMEOUT_CLOSE_WAIT", 43200, "first FIN acknowledged"),
    _timeout("tcp_timeout_last_ack", "CT_CFG_TCP_TIMEOUT_LAST_ACK", 30, "FIN seen both ways"),
    _timeout("tcp_timeout_time_wait", "CT_CFG_TCP_TIMEOUT_TIME_WAIT", 120, "last ACK seen"),
    _timeout("tcp_timeout_close", "CT_CFG_TCP_TIMEOUT_CLOSE", 10, "RST seen"),
    _timeout("tcp_timeout_syn_sent2", "CT_CFG_TCP_TIMEOUT_SYN_SENT2", 120,
             "simultaneous open (the spec's LISTEN)"),
    _timeout("tcp_timeout_max_retrans", "CT_CFG_TCP_TIMEOUT_MAX_RETRANS", 300,
             "cap after tcp_max_retrans retransmissions"),
    _timeout("tcp_timeout_unacknowledged", "CT_CFG_TCP_TIMEOUT_UNACKNOWLEDGED", 300,
             "cap while data is unacknowledged or a picked-up flow is unanswered"),
    _timeout("udp_timeout", "CT_CFG_UDP_TIMEOUT", 30, "UDP before it is a stream"),
    _timeout("udp_timeout_stream", "CT_CFG_UDP_TIMEOUT_STREAM", 180, "UDP stream (ASSURED)"),
    _timeout("icmp_timeout", "CT_CFG_ICMP_TIMEOUT", 30, "ICMP queries"),
    _timeout("icmpv6_timeout", "CT_CFG_ICMPV6_TIMEOUT", 30, "ICMPv6 queries"),
    _timeout("generic_timeout", "CT_CFG_GENERIC_TIMEOUT", 600, "other protocols"),
    Tunable("tcp_loose", abi.const("CT_CFG_TCP_LOOSE"), 1, 0, 1, "bool",
            "pick up TCP flows mid-stream (0: a new non-SYN packet is INVALID)"),
    Tunable("tcp_be_liberal", abi.const("CT_CFG_TCP_BE_LIBERAL"), 0, 0, 1, "bool",
            "accept out-of-window packets: only RSTs are window-checked"),
    Tunable("tcp_max_retrans", abi.const("CT_CFG_TCP_MAX_RETRANS"), 3, 0, 255, "count",
            "retransmissions before tcp_timeout_max_retrans applies"),
    Tunable("tcp_ignore_invalid_rst", abi.const("CT_CFG_TCP_IGNORE_INVALID_RST"), 0, 0, 1, "bool",
            "accept a RST below the window (0: it is INVALID)"),
    Tunable("acct", abi.const("CT_CFG_ACCT"), 0, 0, 1, "bool",
            "count packets and bytes per flow, as conntrack -L shows them (0, the kernel's "
            "default, spares every packet two atomic adds on the shared entry)"),
)

TUNABLES += (Tunable("events", abi.const("CT_CFG_EVENTS"), 1, 0, 1, "bool",
                     "emit NEW/UPDATE/DESTROY events from the datapath (nf_conntrack_events)"),
             Tunable("fast_path", abi.const("CT_CFG_FAST_PATH"), 0, 0, 1, "bool",
                     "forward ESTABLISHED, ASSURED flows at XDP: they skip the kernel's "
                     "routing and its forward hooks (docs/fastpath.md)"),)

BY_NAME = {t.name: t for t in TUNABLES}

# Table limits: not ct_config slots but the size of the maps, fixed when they
# are created (slot -1). `max` is nf_conntrack_max (entries per table);
# `buckets` is nf_conntrack_buckets (hashsize), informational here since a BPF
# hash map sizes its own buckets: as in the kernel, max defaults to
# 8 x buckets when only buckets is given. The bounds are the loader's
# MIN_ENTRIES and MAX_ENTRIES (tests/unit/test_config.py checks they agree).
DEFAULT_MAX = 65536
ENTRIES_PER_BUCKET = 8
MIN_MAX, MAX_MAX = 16, 1 << 26
LIMITS: tuple[Tunable, ...] = (
    Tunable("max", -1, DEFAULT_MAX, MIN_MAX, MAX_MAX, "entries",
            "conntrack_max: flows tracked in all, ASSURED or not (changing it reloads the "
            "tables, keeping every entry)"),
    Tunable("buckets", -1, DEFAULT_MAX // ENTRIES_PER_BUCKET, MIN_MAX // ENTRIES_PER_BUCKET,
            MAX_MAX // ENTRIES_PER_BUCKET, "buckets",
            "hashsize: informational; max defaults to 8 x buckets"),
)
ALL: tuple[Tunable, ...] = TUNABLES + LIMITS
#: What `ctbpf config` shows of the table sizes the start chose (`ctbpf run
#: --new-max`; ctbpf/datapath/sizing.py), not a tunable: its default follows max.
NEW_MAX = Tunable("new_max", -1, DEFAULT_MAX // 16, 1, MAX_MAX // 2, "entries",
                  "the part of max unassured flows may hold: the pool a flood of new flows "
                  "churns (default max/16, at least 1024, at most max/2)")
ASSURED_NOW = Tunable("assured_size", -1, DEFAULT_MAX // 4, 1, MAX_MAX, "entries",
                      "ct_assured's size now: made small, grown four times when seven "
                      "eighths full, up to max - new_max")
ACCT_NOW = Tunable("acct_size", -1, 16384, 1, MAX_MAX, "entries",
                   "ct_acct's size now (the counters of flows made while acct was on): "
                   "grown as ct_assured, up to what both tables hold")
ALL_BY_NAME = {t.name: t for t in ALL}

# The spec's NONE row (30 minutes): no entry ever rests in NONE, the value
# only keeps ct_config complete.
NONE_TIMEOUT = 1800


def defaults() -> dict[str, int]:
    return {t.name: t.default for t in TUNABLES}


def to_config(values: dict[str, int], base=None):
    """A ct_config value holding these tunables and the layout version; the
    other slots (state kept there by other writers) come from `base`."""
    cfg = abi.CtConfig.from_buffer_copy(base) if base is not None else abi.CtConfig()
    cfg.value[abi.const("CT_CFG_TCP_TIMEOUT_NONE")] = NONE_TIMEOUT
    for t in TUNABLES:
        cfg.value[t.slot] = values.get(t.name, t.default)
    cfg.value[abi.const("CT_CFG_LAYOUT_VERSION")] = abi.LAYOUT_VERSION
    return cfg


def from_config(cfg) -> dict[str, int]:
    return {t.name: int(cfg.value[t.slot]) for t in TUNABLES}
