"""A flow made while acct is on and ct_acct is full (the agent grows it,
ctbpf/agent/growth.py) is tracked all the same, without counters, as if
made while acct was off: no flow ever carries CT_F_ACCT without a record,
and the loss is counted (acct_lost)."""

import ctypes
import os

import packets as P
from ctbpf import abi
from ctbpf.datapath import bpfsys, table

ACCT_LOST = abi.const("CT_STAT_ACCT_LOST")


def _fill_acct(pin_dir) -> int:
    """Fill ct_acct to its max_entries with records of no flow."""
    fd = bpfsys.obj_get(str(pin_dir / table.ACCT_MAP))
    try:
        n = bpfsys.map_info(fd).max_entries
        keys = (abi.CtKey * n)()
        for i, k in enumerate(keys):
            k.proto, k.family = 17, abi.const("CT_FAMILY_IPV4")
            k.port_lo, k.port_hi = 1 + i % 60000, 2 + i // 60000
            k.addr_lo[0], k.addr_hi[0] = 0x0100000A, 0x0300000A
        values = (abi.CtAcct * n)()
        done = bpfsys.update_batch(fd, ctypes.addressof(keys), ctypes.addressof(values), n)
    finally:
        os.close(fd)
    assert done == n and table.read_raw(pin_dir, table.ACCT_MAP)[2] == n
    return n


def test_a_full_ct_acct_leaves_new_flows_uncounted_and_counts_the_loss(tracker):
    tracker.set(acct=1)
    _fill_acct(tracker.pin_dir)
    lost = tracker.counters()[ACCT_LOST]
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    tracker.send(P.frame(P.udp(P.B4, P.A4, 53, 40000)))
    flow = tracker.flow()
    assert not flow.unreplied                          # tracked all the same
    assert (flow.packets, flow.bytes) == (None, None)  # no counters, none half-made
    assert not tracker.entry().entry.flags & abi.const("CT_F_ACCT")
    assert tracker.counters()[ACCT_LOST] == lost + 1


def test_with_acct_off_a_flow_has_no_record(tracker):
    tracker.set(acct=0)
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40000, 53)))
    assert tracker.flow().packets is None
    assert table.read_raw(tracker.pin_dir, table.ACCT_MAP)[2] == 0

