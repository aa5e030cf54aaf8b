"""bench/memory.py and bench/kerneltable.py: the pure parts (the flow plan,
keys, trafgen text, the BPF hash map model, slab arithmetic, the limits'
restore), on crafted inputs; no root, no kernel."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import kerneltable as kt  # noqa: E402
from bench import memory  # noqa: E402
from ctbpf.datapath.flowkey import key_from_tuple  # noqa: E402


# -- the flow plan -----------------------------------------------------------


def test_plan_round_robin_order():
    p = kt.Plan(4, kt.UDP, 130_000)
    assert (p.clients, p.ports) == (3, 62500)
    assert list(p.tuples(4)) == [("10.200.1.1", 1), ("10.200.1.2", 1), ("10.200.1.3", 1),
                                 ("10.200.1.1", 2)]


def test_plan_clients_and_nets_are_disjoint():
    a, b = kt.Plan(6, kt.TCP, 10, net=1), kt.Plan(6, kt.UDP, 10, net=101)
    assert a.client(0) == "fd00:c7b0:0:1::1" and b.client(0) == "fd00:c7b0:0:65::1"
    assert kt.Plan(4, kt.UDP, 1, net=1).client(251) == "10.200.2.2"


@pytest.mark.parametrize("kw", [dict(family=5, proto=kt.UDP, n=1),
                                dict(family=4, proto=1, n=1),
                                dict(family=4, proto=kt.UDP, n=0),
                                dict(family=4, proto=kt.UDP, n=10, count=11),
                                dict(family=4, proto=kt.UDP, n=250 * 62500 + 1, net=255)])
def test_plan_rejects_what_leaves_the_address_plan(kw):
    with pytest.raises(ValueError):
        kt.Plan(**kw)


def test_plan_count_makes_a_prefix():
    p = kt.Plan(4, kt.UDP, 1_000_000, count=200_000)
    assert (p.made, p.clients) == (200_000, 16)


def test_trafgen_lines():
    mac = "02:00:00:00:00:02"
    orig = kt.Plan(4, kt.UDP, 70_000).trafgen(mac).splitlines()
    assert len(orig) == 2
    assert orig[1] == ("{ eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01), "
                       "ipv4(saddr=10.200.1.2, daddr=10.200.0.1, ttl=64), "
                       "udp(sp=dinc(1, 62500), dp=9, csum=0) }")
    reply = kt.Plan(6, kt.UDP, 5, net=3).trafgen(mac, reply=True)
    assert "ipv6(saddr=fd00:c7b0::1, daddr=fd00:c7b0:0:3::1, hoplimit=64)" in reply
    assert "udp(sp=9, dp=dinc(1, 5), csum=0)" in reply
    syn = kt.Plan(4, kt.TCP, 5).trafgen(mac)
    assert "tcp(sp=dinc(1, 5), dp=80, seq=1000, syn, win=64240, csum=0)" in syn
    with pytest.raises(ValueError):
        kt.Plan(4, kt.TCP, 5).trafgen(mac, reply=True)


def _key_of(src, dst, proto, sport, dport):
    return bytes(key_from_tuple(src, dst, proto, sport, dport)[0])


@pytest.mark.parametrize("family,proto", [(4, kt.UDP), (4, kt.TCP), (6, kt.UDP), (6, kt.TCP)])
def test_keys_are_the_datapaths_own(family, proto):
    p = kt.Plan(family, proto, 130_000, net=7)
    keys = p.keys(_key_of)
    assert keys.shape[0] == 130_000
    want = dict(enumerate(p.tuples()))
    for i in (0, 1, 2, 3, 64_999, 129_999):
        client, sport = want[i]
        assert keys[i].tobytes() == _key_of(client, p.server, proto, sport, p.dport)
    assert len({k.tobytes() for k in keys}) == len(keys)


def test_keys_refuse_a_key_without_the_port():
    with pytest.raises(RuntimeError, match="source port"):
        kt.Plan(4, kt.UDP, 3).keys(lambda *a: bytes(8))


# -- what the kernel spends ---------------------------------------------------


SLABINFO = """slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
nf_conntrack        {ct}    {ct}    256   16    1 : tunables    0    0    0 : slabdata      3      3      0
kmalloc-128        {k128}  16416    128   32    1 : tunables    0    0    0 : slabdata    513    513      0
kmalloc-cg-4k        {k4k}    400   4096    8    8 : tunables    0    0    0 : slabdata     50     50      0
"""


def _snap(ct, k128=1000, k4k=300, slabs=3):
    return {"sysfs": {"objects": ct, "total_objects": ct, "slabs": slabs, "order": 0,
                      "slab_size": 256, "object_size": 248},
            "slabinfo": kt.parse_slabinfo(SLABINFO.format(ct=ct, k128=k128, k4k=k4k))}


def test_parse_slabinfo():
    info = kt.parse_slabinfo(SLABINFO.format(ct=48, k128=16343, k4k=300))
    assert info["nf_conntrack"] == {"active": 48, "objects": 48, "objsize": 256,
                                    "per_slab": 16, "pages_per_slab": 1, "slabs": 3}
    assert set(info) == {"nf_conntrack", "kmalloc-128", "kmalloc-cg-4k"}


def test_kernel_cost_is_one_object_per_entry_cross_checked():
    c = kt.kernel_cost(_snap(48), _snap(48 + 9_990, k4k=340), 10_000, 10_240)
    assert c["slab_bytes"] == 10_000 * 256
    assert (c["objects_delta"], c["slabinfo_objects_delta"]) == (9_990, 9_990)
    assert c["objects_delta_per_entry"] == 0.999
    assert c["extension_bytes"] == 0
    assert c["kmalloc_moved_objects"] == {"kmalloc-cg-4k": 40}   # reported, not counted
    assert c["bucket_bytes"] == 8 * 10_240
    assert c["per_flow"] == pytest.approx(256 + 8 * 10_240 / 10_000)


def test_kernel_cost_counts_an_extension_per_flow():
    c = kt.kernel_cost(_snap(0), _snap(10_000, k128=1000 + 9_500), 10_000, 16_384)
    assert c["extension_bytes"] == 9_500 * 128
    assert c["per_flow"] == pytest.approx(256 + 9_500 * 128 / 10_000 + 8 * 16_384 / 10_000)


def test_kernel_cost_refuses_disagreeing_sizes():
    after = _snap(100)
    after["sysfs"]["slab_size"] = 320
    with pytest.raises(RuntimeError, match="objsize"):
        kt.kernel_cost(_snap(0), after, 100, 1)


def test_kernel_cost_needs_flows():
    with pytest.raises(ValueError):
        kt.kernel_cost(_snap(0), _snap(0), 0, 1)


def test_limits_put_back_only_their_own(tmp_path, monkeypatch):
    ct_max = tmp_path / "nf_conntrack_max"
    ct_max.write_text("262144\n")
    buckets = tmp_path / "nf_conntrack_buckets"
    buckets.write_text("262144\n")
    monkeypatch.setattr(kt, "CT_MAX", ct_max)
    monkeypatch.setattr(kt, "CT_BUCKETS", buckets)
    lim = kt.Limits()
    assert lim.set(ct_max=100_000) == {"max": 100_000, "buckets": 262144}
    lim.restore()
    assert ct_max.read_text() == "262144\n"
    lim.at_least(300_000)
    ct_max.write_text("500000\n")     # someone else's since
    lim.restore()
    assert ct_max.read_text() == "500000\n"
    lim.at_least(1000)                # already above: nothing to put back
    assert lim._restore == []


# -- the BPF map model ----------------------------------------------------------


def _map(type_, max_entries, key=40, value=64, flags=0, present=0, memlock=0):
    return {"type": type_, "flags": flags, "key_size": key, "value_size": value,
            "max_entries": max_entries, "present": present, "memlock": memlock}


def test_model_preallocated_hash_has_one_extra_element_per_cpu():
    m = memory.htab_model(_map(1, 100_000, memlock=10**8), ncpus=2)
    assert m["elements"] == 100_002 and m["prealloc"]
    assert (m["header"], m["key"], m["value"]) == (48 * 100_002, 40 * 100_002, 64 * 100_002)
    assert m["buckets"] == 16 * 131_072 and m["llist"] == 0
    assert m["other"] == 10**8 - sum(m[k] for k in ("header", "key", "value", "buckets"))


def test_model_no_prealloc_pays_for_present_elements_and_their_llist():
    m = memory.htab_model(_map(1, 1 << 20, key=36, value=60, flags=1, present=1000), 2)
    assert not m["prealloc"] and m["elements"] == 1000
    assert (m["key"], m["value"], m["llist"]) == (40 * 1000, 64 * 1000, 8 * 1000)
    assert m["buckets"] == 16 << 20


def test_model_lru_is_preallocated_without_extras():
    m = memory.htab_model(_map(9, 50_000, flags=1), 2)
    assert m["prealloc"] and m["elements"] == 50_000 and m["buckets"] == 16 * 65_536


def test_model_leaves_other_maps_alone():
    assert memory.htab_model(_map(27, 1 << 20), 2) is None
    assert memory.htab_model(_map(2, 1), 2) is None


def test_model_matches_a_measured_map():
    # ct_new of this host's datapath at max 20,000 (lru_hash, 40 B key, 120 B value)
    m = memory.htab_model(_map(9, 20_000, key=40, value=120, memlock=4_685_184), 2)
    assert m["other"] == 896


# -- configurations -------------------------------------------------------------


def test_config_halves_and_plans():
    c = memory.Config("occupancy", 1 << 20, 100_001)
    assert (c.assured, c.unassured) == (50_000, 50_001)
    syn, streams = c.plans(6)
    assert (syn.proto, syn.n, streams.proto, streams.n) == (kt.TCP, 50_001, kt.UDP, 50_000)
    assert c.name == "10% occupancy, max 1,048,576 (100,001 flows)"


def test_breakdown_sums_small_maps():
    maps = [{"name": "ct_new", "pinned": True, "type": 9, "max_entries": 8, "memlock": 1 << 20,
             "model": {"elements": 8, "prealloc": True, "header": 1, "key": 2, "value": 3,
                       "llist": 0, "buckets": 4, "other": 5}},
            {"name": "ct_config", "pinned": True, "type": 2, "max_entries": 1, "memlock": 568,
             "model": None},
            {"name": "ct_frags", "pinned": False, "type": 9, "max_entries": 8, "memlock": 1 << 17,
             "model": None}]
    lines = memory.breakdown(maps, 1024)
    assert lines[2].startswith("| ct_new | lru_hash | 8 | 8 | 1 | 2 | 3 | 0 | 4 | 5 | 1,048,576 "
                               "| 1024.0 |")
    assert lines[3].startswith("| ct_frags (not pinned) |")
    assert lines[4].startswith("| 1 small maps (ct_config)") and "| 568 | 0.6 |" in lines[4]


def test_values_never_expire():
    import ctypes

    from ctbpf import abi
    size = ctypes.sizeof(abi.CtEntry)
    v = memory.values_for(size, 3)
    assert v.shape == (3, size)
    expiring = [n for n, _ in abi.CtEntry._fields_ if n.startswith("expires")]
    for name in expiring:
        f = getattr(abi.CtEntry, name)
        assert (v[:, f.offset:f.offset + f.size] == 0xFF).all()
    assert not memory.values_for(size + 8, 2).any()
    assert np.count_nonzero(v) == 3 * sum(getattr(abi.CtEntry, n).size for n in expiring)
