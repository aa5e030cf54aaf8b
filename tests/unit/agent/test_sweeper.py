"""The sweeper's pure parts, on crafted buffers: finding expired entries in
raw batch-read buffers, gathering their keys, adapting the interval, and
the service's scheduling over a fake table (no BPF needed)."""

from __future__ import annotations

import ctypes
import os

import pytest

from ctbpf import abi
from ctbpf.agent import sweepcore, sweeper
from ctbpf.agent.sweepcore import (DURATION_BUCKETS, ENTRY_SIZE, KEY_SIZE, SweepStats,
                                   expired_indices, expired_keys, gather_keys, next_interval)
from ctbpf.agent.sweeper import Sweeper, TABLES
from ctbpf.cli import main as cli
from ctbpf.errors import UsageError

# A tick's first instant: an entry "expiring at x ns" then holds the tick
# x falls in, rounded up, and is expired at NOW exactly when x <= NOW.
NOW = abi.tick_ns(abi.ticks(5_000_000_000_000))


def tick_of(expires_ns: int) -> int:
    return min(-(-expires_ns >> abi.TICK_SHIFT) if expires_ns > 0 else 0, 2**32 - 1)


def entry(expires_ns: int, **fields) -> bytes:
    t = tick_of(expires_ns)
    e = abi.CtEntry(expires=t, created=max(t - 8, 0), **fields)
    return bytes(e)


def key(n: int) -> bytes:
    k = abi.CtKey(port_lo=n & 0xFFFF, port_hi=(n >> 16) & 0xFFFF, proto=17,
                  family=abi.const("CT_FAMILY_IPV4"))
    k.addr_lo[0] = n
    return bytes(k)


def records(expiries: list[int]) -> tuple[bytes, bytes]:
    keys = b"".join(key(i + 1) for i in range(len(expiries)))
    values = b"".join(entry(x, last_seq=i, last_ack=i + 1, state=3, flags=0xFF)
                      for i, x in enumerate(expiries))
    return keys, values


# --------------------------------------------------------------------------
# layout assumptions, derived, not hard-coded


def test_layout_is_what_the_fast_path_expects():
    assert ENTRY_SIZE == ctypes.sizeof(abi.CtEntry) and ENTRY_SIZE % 4 == 0
    assert sweepcore.EXPIRES_OFFSET == abi.CtEntry.expires.offset
    assert KEY_SIZE == ctypes.sizeof(abi.CtKey)
    assert [t for _, t in TABLES] == [abi.const("CT_TABLE_NEW"), abi.const("CT_TABLE_ASSURED")]


# --------------------------------------------------------------------------
# expired entries in raw buffers


def test_expired_is_at_or_before_now_like_the_datapath():
    _, values = records([NOW - 1, NOW, NOW + 1, 0, 2**64 - 1, NOW - 10**12])
    assert expired_indices(values, 6, NOW) == [0, 1, 3, 5]


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview,
                                  lambda b: ctypes.create_string_buffer(b, len(b))])
def test_any_buffer_type(wrap):
    keys, values = records([NOW + 5, NOW - 5, NOW + 5, NOW - 5])
    assert expired_indices(wrap(values), 4, NOW) == [1, 3]
    assert expired_keys(wrap(keys), wrap(values), 4, NOW) == key(2) + key(4)


def test_only_the_first_count_records_are_read():
    # a reused buffer: stale records after `count` must be ignored
    _, values = records([NOW + 1, NOW - 1, NOW - 1, NOW - 1])
    assert expired_indices(values, 2, NOW) == [1]
    assert expired_indices(values, 0, NOW) == []
    assert expired_indices(b"", 0, NOW) == []


def test_short_buffer_is_an_error():
    _, values = records([NOW - 1, NOW - 1])
    with pytest.raises(ValueError):
        expired_indices(values[:-1], 2, NOW)


def test_other_fields_never_mistaken_for_the_expiry():
    # every other u32 of the entry is "expired"-looking (small), the expiry is not
    e = abi.CtEntry(expires=tick_of(NOW + 1), created=1, last_seq=1, last_ack=1, last_end=1)
    values = bytes(e) * 3
    assert expired_indices(values, 3, NOW) == []


def test_unaligned_layout_uses_the_slow_path_with_the_same_answer():
    # a made-up 10-byte record with its expiry at offset 3
    exp = [NOW - 1, NOW + 1, NOW, NOW + 7]
    values = b"".join(b"\xAA" * 3 + tick_of(x).to_bytes(4, "little") + b"\xBB" * 3 for x in exp)
    assert expired_indices(values, 4, NOW, entry_size=10, expires_offset=3) == [0, 2]


def test_large_buffer_matches_a_plain_decode():
    rnd = [int.from_bytes(os.urandom(5), "little") for _ in range(5000)]
    exp = [NOW + r - 2**39 for r in rnd]
    keys, values = records(exp)
    want = [i for i, x in enumerate(exp) if x <= NOW]
    assert expired_indices(values, len(exp), NOW) == want
    assert gather_keys(keys, want) == b"".join(key(i + 1) for i in want)


def test_gather_keys_in_order_and_empty():
    keys, _ = records([0] * 5)
    assert gather_keys(keys, [4, 0]) == key(5) + key(1)
    assert gather_keys(keys, []) == b""


# --------------------------------------------------------------------------
# the interval


@pytest.mark.parametrize("scanned, expired, want", [
    (1000, 500, 5.0),    # 50% expired: halve
    (1000, 250, 5.0),    # at the high ratio: halve
    (1000, 100, 10.0),   # in between: keep
    (1000, 50, 20.0),    # at the low ratio: double
    (1000, 0, 20.0),     # nothing expired: double
    (0, 0, 20.0),        # empty tables: double
])
def test_interval_adapts(scanned, expired, want):
    assert next_interval(10.0, scanned, expired, 1.0, 30.0, 0.25, 0.05) == want


def test_interval_stays_within_bounds():
    assert next_interval(1.0, 10, 10, 1.0, 30.0) == 1.0
    assert next_interval(0.1, 10, 0, 1.0, 30.0) == 1.0    # below min comes back up
    assert next_interval(20.0, 10, 0, 1.0, 30.0) == 30.0
    assert next_interval(300.0, 10, 10, 1.0, 30.0) == 30.0


def test_interval_converges_both_ways():
    i = 1.0
    for _ in range(10):
        i = next_interval(i, 100, 0, 1.0, 30.0)
    assert i == 30.0
    for _ in range(10):
        i = next_interval(i, 100, 90, 1.0, 30.0)
    assert i == 1.0


@pytest.mark.parametrize("lo, hi", [(0, 30), (-1, 30), (5, 4), (float("nan"), 30)])
def test_bad_intervals_are_usage_errors(lo, hi):
    with pytest.raises(UsageError) as e:
        Sweeper(lo, hi)
    assert "\n" not in str(e.value) and "sweep-" in str(e.value)


def test_run_options_parse():
    args = cli.build_parser().parse_args(["run", "--iface", "x", "--sweep-min-interval", "0.5",
                                          "--sweep-max-interval", "60"])
    assert (args.sweep_min_interval, args.sweep_max_interval) == (0.5, 60.0)
    args = cli.build_parser().parse_args(["run", "--iface", "x"])
    Sweeper(args.sweep_min_interval, args.sweep_max_interval)   # the defaults are valid


# --------------------------------------------------------------------------
# statistics


def test_duration_histogram():
    s = SweepStats()
    for d in (0.0005, 0.003, 0.003, 20.0):
        s.observe(d)
    cum = dict(s.cumulative_buckets())
    assert cum[0.001] == 1 and cum[0.005] == 3 and cum[10.0] == 3 and cum[float("inf")] == 4
    snap = s.snapshot()
    assert snap["duration_count"] == 4 and len(snap["duration_buckets"]) == len(DURATION_BUCKETS)
    assert snap["duration_sum"] == pytest.approx(20.0065)


# --------------------------------------------------------------------------
# the service over a fake table


class FakeDatapath:
    """Records what the sweeper hands to the kernel; `keep` keys survive, as
    entries refreshed by traffic between the read and the delete would."""

    def __init__(self, keep=()):
        self.calls: list[tuple[int, bytes]] = []
        self.keep = set(keep)
        self.fail = False

    def sweep(self, table_id: int, keys: bytes) -> int:
        if self.fail:
            raise OSError(5, "test run: Input/output error")
        self.calls.append((table_id, keys))
        ks = [keys[i:i + KEY_SIZE] for i in range(0, len(keys), KEY_SIZE)]
        return sum(k not in self.keep for k in ks)


class FakeSweeper(Sweeper):
    """Reads crafted tables instead of pinned maps (same buffers, same cursor)."""

    def __init__(self, tables: dict, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tables = tables    # name -> (keys, values, count)
        self.reads: list[tuple[str, int]] = []

    def _begin(self, kind=None):
        p = super()._begin(kind)
        if p is not None:
            p.pos = 0
        return p

    def _read(self, p, fd, want):
        name = TABLES[p.table][0]
        keys, values, count = self.tables[name]
        b = self._buffers
        n = min(want, b.entries, count - p.pos)
        b.keys[:n * KEY_SIZE] = keys[p.pos * KEY_SIZE:(p.pos + n) * KEY_SIZE]
        b.values[:n * ENTRY_SIZE] = values[p.pos * ENTRY_SIZE:(p.pos + n) * ENTRY_SIZE]
        self.reads.append((name, n))
        p.pos += n
        done = p.pos >= count
        if done:
            p.pos = 0
        return n, done


@pytest.fixture
def owner(monkeypatch, tmp_path):
    opened = []

    def obj_get(path):
        fd = os.open(os.devnull, os.O_RDONLY)
        opened.append(fd)
        return fd

    monkeypatch.setattr(sweeper.bpfsys, "obj_get", obj_get)

    class Owner:
        pin_dir = tmp_path
        datapath = FakeDatapath()
        fds = opened

    return Owner()


def _table(expiries):
    keys, values = records(expiries)
    return keys, values, len(expiries)


def _open_fds(fds):
    out = []
    for fd in fds:
        try:
            os.fstat(fd)
            out.append(fd)
        except OSError:
            pass
    return out


def test_a_pass_in_slices_hands_only_expired_keys(owner, monkeypatch):
    import time as real_time
    monkeypatch.setattr(sweeper.time, "monotonic_ns", lambda: NOW)
    n = 5000
    new = [NOW - 1 if i % 10 == 0 else NOW + 10**9 for i in range(n)]
    assured = [NOW - 1 if i % 2 else NOW + 10**9 for i in range(1500)]
    tables = {"ct_new": _table(new), "ct_assured": _table(assured)}
    sw = FakeSweeper(tables, 1.0, 30.0, slice_entries=2048)
    sw.start(owner)
    assert sw.due() <= real_time.monotonic()
    steps = 0
    while True:
        sw.run_once(real_time.monotonic())
        steps += 1
        if not sw.in_pass:
            break
        assert sw.due() <= real_time.monotonic()       # the next slice right away
        assert steps < 100
    # no read went beyond the slice budget, and the pass took several runs
    assert steps == 4 and all(r <= 2048 for _, r in sw.reads)
    handed = {t: b"".join(k for tid, k in owner.datapath.calls if tid == t) for t in (0, 1)}
    assert handed[0] == b"".join(key(i + 1) for i in range(n) if new[i] <= NOW)
    assert handed[1] == b"".join(key(i + 1) for i in range(1500) if assured[i] <= NOW)
    s = sw.stats
    assert (s.passes, s.last_scanned, s.last_expired) == (1, 6500, 500 + 750)
    assert s.last_deleted == s.deleted_total == 1250 and s.kept_total == 0
    assert s.deleted_by_table == {"ct_new": 500, "ct_assured": 750}
    assert s.last_max_slice <= s.last_duration and s.last_read + s.last_scan <= s.last_duration
    # 1250 / 6500 = 19%: the interval stays
    assert sw.interval == 1.0 and sw.due() == pytest.approx(s.last_finished + 1.0)
    assert _open_fds(owner.fds) == []          # the pass closed its map fds


def test_entries_refreshed_before_the_delete_are_counted_as_kept(owner, monkeypatch):
    monkeypatch.setattr(sweeper.time, "monotonic_ns", lambda: NOW)
    owner.datapath = FakeDatapath(keep={key(1), key(3)})
    sw = FakeSweeper({"ct_new": _table([NOW - 1] * 4), "ct_assured": _table([])}, 1.0, 8.0)
    sw.start(owner)
    sw.sweep_now()
    assert (sw.stats.last_expired, sw.stats.last_deleted, sw.stats.kept_total) == (4, 2, 2)
    assert sw.interval == 1.0    # 100% expired: halved, but never below the minimum


def test_empty_tables_back_off_to_the_max_interval(owner):
    sw = FakeSweeper({"ct_new": _table([]), "ct_assured": _table([])}, 1.0, 8.0)
    sw.start(owner)
    for want in (2.0, 4.0, 8.0, 8.0):
        sw.sweep_now()
        assert sw.interval == want
    assert owner.datapath.calls == []          # nothing handed to the kernel
    assert sw.stats.passes == 4 and sw.stats.scanned_total == 0


def test_busy_tables_come_back_sooner(owner, monkeypatch):
    monkeypatch.setattr(sweeper.time, "monotonic_ns", lambda: NOW)
    tables = {"ct_new": _table([NOW + 1] * 100), "ct_assured": _table([])}
    sw = FakeSweeper(tables, 1.0, 16.0)
    sw.start(owner)
    sw.sweep_now()
    sw.sweep_now()
    assert sw.interval == 4.0
    tables["ct_new"] = _table([NOW - 1] * 60 + [NOW + 1] * 40)
    sw.sweep_now()
    assert sw.interval == 2.0


def test_an_error_abandons_the_pass_and_keeps_the_daemon_alive(owner, monkeypatch):
    import time as real_time
    monkeypatch.setattr(sweeper.time, "monotonic_ns", lambda: NOW)
    owner.datapath.fail = True
    sw = FakeSweeper({"ct_new": _table([NOW - 1] * 10), "ct_assured": _table([])}, 2.0, 8.0)
    sw.start(owner)
    before = real_time.monotonic()
    sw.run_once(before)
    assert sw.stats.errors == 1 and "Input/output" in sw.stats.last_error
    assert not sw.in_pass and sw.due() >= before + 2.0
    assert _open_fds(owner.fds) == []
    owner.datapath.fail = False
    sw.sweep_now()
    assert sw.stats.last_deleted == 10


def test_a_reloaded_datapath_restarts_the_pass(owner, monkeypatch):
    import time as real_time
    monkeypatch.setattr(sweeper.time, "monotonic_ns", lambda: NOW)
    sw = FakeSweeper({"ct_new": _table([NOW - 1] * 3000), "ct_assured": _table([])}, 1.0, 8.0,
                     slice_entries=1024)
    sw.start(owner)
    sw.run_once(real_time.monotonic())
    assert sw.in_pass
    old = owner.datapath
    owner.datapath = FakeDatapath()
    while sw.in_pass or sw.stats.passes == 0:
        sw.run_once(real_time.monotonic())
    # the pass started over on the new datapath: every entry read again, no error
    assert sw.stats.errors == 0 and sw.stats.passes == 1
    assert sw.stats.last_scanned == 3000 and sw.stats.last_deleted == 3000
    assert len(b"".join(k for _, k in owner.datapath.calls)) == 3000 * KEY_SIZE
    assert len(old.calls) == 1


def test_no_datapath_yet_is_a_quiet_no_op(monkeypatch, tmp_path):
    class Owner:
        pin_dir = tmp_path
        datapath = None

    sw = Sweeper(1.0, 4.0)
    sw.start(Owner())
    sw.run_once(0.0)
    assert sw.stats.errors == 0 and sw.stats.passes == 0 and not sw.in_pass


def test_stop_closes_the_maps_of_a_pass_in_progress(owner, monkeypatch):
    import time as real_time
    monkeypatch.setattr(sweeper.time, "monotonic_ns", lambda: NOW)
    sw = FakeSweeper({"ct_new": _table([NOW + 1] * 3000), "ct_assured": _table([])}, 1.0, 8.0,
                     slice_entries=1024)
    sw.start(owner)
    sw.run_once(real_time.monotonic())
    assert sw.in_pass and _open_fds(owner.fds)
    sw.stop()
    assert not sw.in_pass and _open_fds(owner.fds) == []
