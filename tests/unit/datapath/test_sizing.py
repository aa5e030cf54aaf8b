"""How big each map is made from max and new_max (ctbpf/datapath/sizing.py)."""

import pytest

from ctbpf.datapath import sizing


@pytest.mark.parametrize("max_entries, new_max", [
    (16, 8), (1024, 512), (4096, 1024), (65536, 4096), (262144, 16384), (1 << 20, 1 << 16)])
def test_default_new_max_is_a_sixteenth_at_least_the_floor_at_most_half(max_entries, new_max):
    assert sizing.default_new_max(max_entries) == new_max


def test_assured_starts_small_and_grows_four_times_up_to_what_max_leaves():
    sz = sizing.sizes(1 << 20)
    assert (sz.new_max, sz.assured, sz.assured_max) == (65536, 16384, (1 << 20) - 65536)
    seen = []
    while sz is not None:
        seen.append(sz.assured)
        sz = sz.grown()
    assert seen == [16384, 65536, 262144, (1 << 20) - 65536]


def test_growth_at_seven_eighths_and_never_past_max():
    sz = sizing.sizes(65536)
    assert not sz.should_grow(14336) and sz.should_grow(14337)
    full = sizing.sizes(65536, assured=65536 - 4096)
    assert full.grown() is None and not full.should_grow(10**9)


def test_a_rebuild_sizes_assured_for_the_flows_it_carries():
    assert sizing.sizes(1 << 20, live=0).assured == 16384
    assert sizing.sizes(1 << 20, live=14336).assured == 16384
    assert sizing.sizes(1 << 20, live=14337).assured == 65536
    assert sizing.sizes(1 << 20, live=900_000).assured == (1 << 20) - 65536


def test_rings_follow_what_the_tables_hold_now():
    small, big = sizing.sizes(1 << 20), sizing.sizes(1 << 20, assured=(1 << 20) - 65536)
    assert small.timers_bytes < big.timers_bytes <= sizing.TIMERS_MAX
    assert sizing.RING_MIN <= small.events_bytes <= big.events_bytes <= sizing.EVENTS_MAX
    for n in (small.timers_bytes, big.timers_bytes, small.events_bytes, big.events_bytes):
        assert n & (n - 1) == 0


@pytest.mark.parametrize("args", [(100, 100), (100, 0), (100, 10, 91), (100, 10, 0)])
def test_sizes_that_leave_a_table_nothing_are_refused(args):
    with pytest.raises(ValueError):
        sizing.sizes(*args)


def test_at_least_names_a_max_that_holds_both():
    n = sizing.at_least(40_000, 3_000)
    sz = sizing.sizes(n)
    assert sz.assured_max >= 40_000 and sz.new_max >= 3_000


def test_acct_starts_small_grows_with_its_records_up_to_what_both_tables_hold():
    sz = sizing.sizes(1 << 20)
    assert sz.acct == sizing.ACCT_START and sz.holds == 16384 + 65536
    assert not sz.acct_should_grow(14336) and sz.acct_should_grow(14337)
    seen = []
    while sz is not None:
        seen.append(sz.acct)
        sz = sz.acct_grown()
    assert seen == [16384, 65536, 16384 + 65536]
    # a rebuild sizes it for the records it carries, never past what the tables hold
    assert sizing.sizes(1 << 20, acct_live=20_000).acct == 65536
    assert sizing.sizes(1 << 20, acct_live=60_000).acct == 16384 + 65536
    assert sizing.sizes(1 << 20, assured=(1 << 20) - 65536, acct_live=20_000).acct == 65536
    assert sizing.sizes(2048, acct_live=0).acct == 2048


def test_growing_one_table_keeps_the_other_ones_size():
    sz = sizing.sizes(1 << 20, acct=65536)
    assert sz.grown().acct == 65536 and sz.acct_grown().assured == sz.assured
