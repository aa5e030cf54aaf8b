"""Counter records of flows ct_new's LRU evicted (no DESTROY path runs
then) are removed by the sweeper's walks (ctbpf/datapath/acctorphans.py),
and a live flow's record never is."""

import ctypes
import os

import packets as P
from ctbpf import abi
from ctbpf.datapath import acctorphans, bpfsys, table


def test_records_without_a_flow_go_and_live_ones_stay(tracker):
    tracker.set(acct=1)
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    live = bytes(tracker.entry().key)
    orphan = abi.CtKey(proto=17, family=abi.const("CT_FAMILY_IPV4"), port_lo=7, port_hi=8)
    orphan.addr_lo[0], orphan.addr_hi[0] = 0x0100000A, 0x0200000A
    fd = bpfsys.obj_get(str(tracker.pin_dir / "ct_acct"))
    try:
        bpfsys.update(fd, orphan, abi.CtAcct(packets=(5, 5), bytes=(500, 500)))
    finally:
        os.close(fd)
    assert set(table.read_acct(tracker.pin_dir)) == {live, bytes(orphan)}
    assert acctorphans.remove_orphans(tracker.pin_dir) == 1
    assert set(table.read_acct(tracker.pin_dir)) == {live}
    assert tracker.flow().packets == (1, 0)
    assert acctorphans.remove_orphans(tracker.pin_dir) == 0
    assert ctypes.sizeof(abi.CtAcct) == 32
