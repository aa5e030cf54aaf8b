"""Batch map operations and their fallback (one element per syscall), on the
real tables: the probe finds out whether this kernel does BPF_MAP_*_BATCH,
and whichever it answers, the fallback gives the same records."""

import ctypes
import os

import pytest

from ctbpf.datapath import bpfsys, features, table

import packets as P


@pytest.fixture
def element_wise():
    """bpfsys with the batch commands off, as on a kernel that refuses them."""
    before = bpfsys.batch_in_use()
    bpfsys.use_batch(False)
    try:
        yield
    finally:
        bpfsys.use_batch(before)


def _flows(tracker, n: int) -> None:
    for i in range(n):
        tracker.send(P.frame(P.udp(P.A4, P.B4, 20000 + i, 53)))


def test_the_probe_answers_for_this_kernel():
    f = features.probe_batch()
    # The datapath itself needs ring buffers (5.8), which came after batch
    # operations on hash maps (5.6): a kernel that runs the tests does them,
    # unless a security policy refuses the command.
    assert f.ok or f.errno is not None, f
    assert bpfsys.batch_in_use() == f.ok


def test_the_probe_can_be_told_batch_is_refused(monkeypatch):
    monkeypatch.setenv(features.DISABLE_ENV, "batch")
    f = features.probe_batch()
    assert not f.ok and "disabled by CTBPF_DISABLE" in f.refusal


def _read_both(pin_dir):
    return {name: table.read_raw(pin_dir, name) for name in table.TABLES}


def _records(raw) -> dict:
    keys, values, count = raw
    ks, vs = table.KEY_SIZE, table.ENTRY_SIZE
    return {keys[i * ks:(i + 1) * ks]: values[i * vs:(i + 1) * vs] for i in range(count)}


def test_whole_table_reads_agree(tracker):
    _flows(tracker, 300)
    batch = {n: _records(r) for n, r in _read_both(tracker.pin_dir).items()}
    bpfsys.use_batch(False)
    try:
        single = {n: _records(r) for n, r in _read_both(tracker.pin_dir).items()}
    finally:
        bpfsys.use_batch(True)
    assert len(batch["ct_new"]) == 300
    # The coarse clock may have moved a timestamp between the two reads; the keys may not.
    assert {n: set(r) for n, r in single.items()} == {n: set(r) for n, r in batch.items()}


def test_cursor_reads_survive_deleting_what_was_read(tracker, element_wise):
    """The sweeper's way: read a slice, delete some of it, read on."""
    _flows(tracker, 100)
    fd = bpfsys.obj_get(str(tracker.pin_dir / "ct_new"))
    try:
        ks, vs, per = table.KEY_SIZE, table.ENTRY_SIZE, 16
        keys = ctypes.create_string_buffer(ks * per)
        values = ctypes.create_string_buffer(vs * per)
        token, next_token = (ctypes.create_string_buffer(max(ks, 8)) for _ in range(2))
        seen, first = set(), True
        for _ in range(100):
            n, done = bpfsys.lookup_batch_at(fd, 0 if first else ctypes.addressof(token),
                                             ctypes.addressof(next_token),
                                             ctypes.addressof(keys), ctypes.addressof(values), per)
            got = [keys.raw[i * ks:(i + 1) * ks] for i in range(n)]
            assert not seen & set(got), "a record came back twice"
            seen |= set(got)
            bpfsys.delete_batch(fd, b"".join(got[::2]), ks)   # as a sweep deletes what expired
            if done:
                break
            ctypes.memmove(token, next_token, len(token))
            first = False
        assert len(seen) == 100
        assert table.read_raw(tracker.pin_dir, "ct_new")[2] == 50
    finally:
        os.close(fd)


def test_element_wise_writes(tracker, element_wise):
    _flows(tracker, 10)
    keys, values, count = table.read_raw(tracker.pin_dir, "ct_new")
    fd = bpfsys.obj_get(str(tracker.pin_dir / "ct_new"))
    try:
        assert bpfsys.delete_batch(fd, keys, table.KEY_SIZE) == 10
        assert table.read_raw(tracker.pin_dir, "ct_new")[2] == 0
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(values, len(values))
        assert bpfsys.update_batch(fd, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 10) == 10
        assert _records(table.read_raw(tracker.pin_dir, "ct_new")) == _records((keys, values, 10))
    finally:
        os.close(fd)
