"""Entries of a non-preallocated hash counted from the kernel's memlock
(ctbpf/datapath/mapmem.py), on the loaded datapath's ct_assured."""

import ctypes
import os

from ctbpf import abi
from ctbpf.datapath import bpfsys, mapmem


def _put(fd, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        key = abi.CtKey(proto=17, family=abi.const("CT_FAMILY_IPV4"), port_lo=i & 0xFFFF)
        key.addr_lo[0] = i
        bpfsys.update(fd, key, abi.CtEntry(expires=2**31))


def test_the_count_follows_inserts_and_deletes(tracker):
    fd = bpfsys.obj_get(str(tracker.pin_dir / "ct_assured"))
    try:
        counter = mapmem.HashCount()
        assert counter.calibrate(fd) == 0
        _put(fd, 300)
        assert counter.count(fd) == 300
        for i in range(100):
            key = abi.CtKey(proto=17, family=abi.const("CT_FAMILY_IPV4"), port_lo=i)
            key.addr_lo[0] = i
            bpfsys.delete(fd, ctypes.create_string_buffer(bytes(key), len(bytes(key))))
        assert counter.count(fd) == 200
        # calibrated on a table that holds entries already
        again = mapmem.HashCount()
        assert again.calibrate(fd) == 200
        _put(fd, 50, first=1000)
        assert again.count(fd) == counter.count(fd) == 250
    finally:
        os.close(fd)
