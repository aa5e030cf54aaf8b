"""Pieces of restart/resize/early_drop that need no kernel: the books behind
early_drop, where a migrated entry belongs, the migration registry, the
rebuild's temporary pin name, the rtnetlink attribute walker."""

from __future__ import annotations

import struct

import pytest

from ctbpf import abi
from ctbpf.agent import migrations, rebuild, staging
from ctbpf.datapath import hookswap, stats


def counters(**named: int) -> list[int]:
    c = [0] * abi.const("CT_STAT_MAX")
    for name, v in named.items():
        c[abi.const(f"CT_STAT_{name.upper()}")] = v
    return c


@pytest.mark.parametrize("named, present, want", [
    ({"insert": 100}, 100, 0),                                         # nothing left
    ({"insert": 100}, 40, 60),                                         # 60 evicted
    ({"insert": 100, "expired_seen": 5, "delete": 10, "swept": 20}, 40, 25),
    ({"insert": 100, "promote": 30, "demote": 7}, 100, 0),             # moves cancel out
    ({"insert": 10}, 12, 0),                                           # a torn read: never < 0
], ids=["all-present", "evicted", "every-door", "moves", "torn-read"])
def test_early_drop_is_what_no_counted_door_explains(named, present, want):
    assert stats.early_drop(counters(**named), present) == want


def entry(state: int = 0, flags: int = 0) -> bytes:
    e = abi.CtEntry()
    e.state, e.flags = state, flags
    return bytes(e)


def key(proto: int) -> bytes:
    k = abi.CtKey()
    k.proto, k.family = proto, 4
    return bytes(k)


ASSURED = abi.const("CT_F_ASSURED")


@pytest.mark.parametrize("proto, state, flags, want", [
    (6, abi.const("CT_TCP_ESTABLISHED"), ASSURED, "ct_assured"),
    (6, abi.const("CT_TCP_TIME_WAIT"), ASSURED, "ct_new"),      # closing: evictable again
    (6, abi.const("CT_TCP_SYN_SENT"), 0, "ct_new"),
    (17, 0, ASSURED, "ct_assured"),
    (17, 0, 0, "ct_new"),
])
def test_a_migrated_entry_goes_where_the_datapath_would_keep_it(proto, state, flags, want):
    assert rebuild._table_for("ct_new", key(proto), entry(state, flags)) == want
    assert rebuild._table_for("ct_assured", key(proto), entry(state, flags)) == want


def test_registry():
    with pytest.raises(ValueError):
        migrations.register(abi.LAYOUT_VERSION)(lambda t, k, e: (k, e))
    fake = abi.LAYOUT_VERSION + 4242
    try:
        migrations.register(fake)(lambda t, k, e: None)
        assert migrations.MIGRATIONS[fake].from_version == fake
        assert migrations.MIGRATIONS[fake].convert("ct_new", b"", b"") is None
    finally:
        migrations.MIGRATIONS.pop(fake, None)


def test_rebuild_pin_dir_is_a_legal_bpffs_name(tmp_path):
    # bpffs refuses names with dots ("reserved for future use").
    name = staging.temp_pin_dir(tmp_path / "ctbpf@ns1").name
    assert "." not in name and name.startswith("ctbpf@ns1+rebuild-")


def test_netlink_attribute_walk():
    def nla(kind: int, payload: bytes) -> bytes:
        raw = struct.pack("HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)

    buf = nla(7, b"ctbpf_tc_egress\0") + nla(11, struct.pack("I", 1234)) + nla(3, b"\x01")
    got = dict(hookswap._attrs(buf, 0, len(buf)))
    assert got[7].rstrip(b"\0") == b"ctbpf_tc_egress"
    assert struct.unpack("I", got[11])[0] == 1234
    assert got[3] == b"\x01"
