"""Frames that are not IPv4/IPv6 pass untracked: no user-land state, only
the non_ip counter moves, nothing is created."""

from __future__ import annotations

import pytest

import packets as P

NON_IP = {
    "arp": lambda: P.arp(),
    "arp-802.1q": lambda: P.arp(P.DOT1Q),
    "arp-qinq": lambda: P.arp(P.QINQ),
    "lldp": lambda: P.ether(b"\x02\x07\x04" + b"\0" * 43, 0x88CC, dst="01:80:c2:00:00:0e"),
    "ipx": lambda: P.ether(b"\xff\xff" + b"\0" * 44, 0x8137),
    "length-field": lambda: P.ether(b"\xaa\xaa\x03" + b"\0" * 43, 46),
    "bare-ethernet": lambda: P.ether(b"", 0x9000),
}


@pytest.mark.parametrize("build", list(NON_IP.values()), ids=list(NON_IP))
def test_non_ip_frames_move_only_non_ip(tracker, build):
    out = tracker.send(build())
    assert out.state is None and out.reason is None
    assert out.events == {"non_ip": 1}, out
    assert tracker.flows() == []
