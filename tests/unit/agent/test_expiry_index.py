"""ctbpf.expiry.ExpiryIndex on crafted keys and ring-shaped buffers (the
real ring and the kernel's use of the index are tested in tests/bpf and
tests/integration)."""

import struct

import pytest

from ctbpf import abi
from ctbpf.agent.expiry import ExpiryIndex, KEY_SIZE, TIMER_EXPIRES_OFFSET, TIMER_SIZE, due_second
from ctbpf.datapath.ringbuf import DISCARD_BIT, record_size

NS = 1_000_000_000


def tk(seconds: int) -> int:
    """The tick (ct_entry's unit) that the instant `seconds` falls in: its
    due second is `seconds` (a tick is 134 ms)."""
    return abi.ticks(seconds * NS)


def key(n: int) -> bytes:
    return n.to_bytes(4, "little") + bytes(KEY_SIZE - 4)


def keys_of(buf) -> list[int]:
    return [int.from_bytes(buf[i:i + 4], "little") for i in range(0, len(buf), KEY_SIZE)]


def test_due_second_rounds_up():
    # 1,953,125 ticks of 2^27 ns are 262,144 s exactly
    assert due_second(1_953_125) == 262_144
    assert due_second(1_953_126) == 262_145
    assert due_second(tk(5)) == 5
    assert due_second(0) == 0


def test_pop_due_hands_out_what_is_due_earliest_first_and_keeps_the_rest():
    ix = ExpiryIndex()
    ix.add(key(3), tk(30))
    ix.add(key(1), tk(10) + 1)       # the tick after: due at second 11
    ix.add(key(2), tk(20))
    ix.add(key(4), tk(11))
    assert len(ix) == 4 and ix.next_due() == 11
    assert ix.pop_due(11 * NS - 1) == b""
    assert keys_of(ix.pop_due(20 * NS)) == [1, 4, 2]
    assert len(ix) == 1 and ix.next_due() == 30
    assert keys_of(ix.pop_due(10**6 * NS)) == [3]
    assert len(ix) == 0 and ix.next_due() is None


def test_add_keys_files_each_key_under_its_own_expiry():
    ix = ExpiryIndex()
    ix.add_keys(b"".join(key(i) for i in range(6)), [tk(5), tk(5), tk(9), tk(5), tk(2), tk(9)])
    assert keys_of(ix.pop_due(2 * NS)) == [4]
    assert keys_of(ix.pop_due(5 * NS)) == [0, 1, 3]
    assert keys_of(ix.pop_due(9 * NS)) == [2, 5]


def ring_chunk(records, discard=()):
    """Records laid out as the kernel's ring does: 8-byte header, payload."""
    stride = record_size(TIMER_SIZE)
    out = bytearray()
    for i, (n, expires) in enumerate(records):
        length = TIMER_SIZE | (DISCARD_BIT if i in discard else 0)
        rec = bytearray(stride)
        struct.pack_into("=II", rec, 0, length, 0)
        rec[8:8 + KEY_SIZE] = key(n)
        struct.pack_into("=I", rec, 8 + TIMER_EXPIRES_OFFSET, expires)
        out += rec
    return out, stride


def test_add_timers_reads_ring_records_and_skips_discarded_ones():
    chunk, stride = ring_chunk([(1, tk(7)), (2, tk(3)), (3, tk(7)), (4, tk(3))], discard={2})
    ix = ExpiryIndex()
    assert ix.add_timers(chunk, 4, stride, offset=8, clean=False) == 3
    assert keys_of(ix.pop_due(3 * NS)) == [2, 4]
    assert keys_of(ix.pop_due(7 * NS)) == [1]


def test_add_timers_refuses_misaligned_records():
    with pytest.raises(ValueError):
        ExpiryIndex().add_timers(bytes(60), 1, 52, offset=8)


def test_clear_empties_everything():
    ix = ExpiryIndex()
    ix.add(key(1), tk(1))
    ix.clear()
    assert len(ix) == 0 and ix.pop_due(10 * NS) == b"" and ix.memory_bytes() == 0
