"""ctbpf.datapath.ringbuf's memory ordering: which fences it found, and what it does
without them (the consumer on real records is tested in
tests/bpf/test_dp_expiry_index.py)."""

import ctypes
import logging
import os

import pytest

from ctbpf.agent import sweeper
from ctbpf.datapath import ringbuf
from ctbpf.datapath.ringbuf import RingReader


def test_libatomic_fences_are_found_here():
    # scripts/setup.sh installs libatomic1: the ordering every architecture gets.
    assert ringbuf.ORDERING == "libatomic fences"
    assert ringbuf.NO_ORDERING is None
    ringbuf._fence(ringbuf._ACQUIRE)
    ringbuf._fence(ringbuf._RELEASE)


def test_positions_are_the_kernels_unsigned_long():
    assert ringbuf._POS_SIZE == ctypes.sizeof(ctypes.c_ulong)
    assert memoryview(bytes(ringbuf._POS_SIZE)).cast(ringbuf._POS).itemsize == ringbuf._POS_SIZE


def test_without_libatomic_x86_relies_on_tso():
    assert ringbuf._ordering("x86_64", names=("libctbpf-none.so.1",)) == (None, "x86 TSO", None)


@pytest.mark.parametrize("machine", ["aarch64", "ppc64le", "s390x"])
def test_without_libatomic_other_architectures_get_no_reader(machine):
    fence, ordering, why = ringbuf._ordering(machine, names=("libctbpf-none.so.1",))
    assert (fence, ordering) == (None, None)
    assert "\n" not in why and machine in why and "install libatomic1" in why
    assert len(why) < 120      # ctbpf.datapath.features cuts a probe's detail there


def test_a_library_without_the_fence_is_named():
    _, ordering, why = ringbuf._ordering("aarch64", names=("libc.so.6",))
    assert ordering is None and "libc.so.6 has no atomic_thread_fence" in why


def test_reader_refuses_and_the_sweeper_walks_the_tables(monkeypatch, tmp_path, caplog):
    _, ordering, why = ringbuf._ordering("aarch64", names=("libctbpf-none.so.1",))
    monkeypatch.setattr(ringbuf, "ORDERING", ordering)
    monkeypatch.setattr(ringbuf, "NO_ORDERING", why)
    with pytest.raises(OSError) as e:
        RingReader(-1)             # refused before the fd is touched
    assert str(e.value) == why

    fds = []

    def obj_get(path):
        fds.append(os.open(os.devnull, os.O_RDONLY))
        return fds[-1]

    monkeypatch.setattr(sweeper.bpfsys, "obj_get", obj_get)

    class Owner:
        pin_dir = tmp_path
        datapath = object()

    s = sweeper.Sweeper()
    s.start(Owner())
    with caplog.at_level(logging.WARNING, logger="ctbpf.agent.sweeper"):
        s._sync_ring()
    assert not s.indexed
    assert caplog.messages == [
        "no expiry index (the ring consumer needs memory fences on aarch64: "
        "libatomic.so.1 not found; install libatomic1): every sweep walks the tables"]
    with pytest.raises(OSError):
        os.fstat(fds[0])           # the sweeper closed the map's fd
