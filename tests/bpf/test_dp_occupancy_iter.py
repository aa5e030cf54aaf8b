"""The in-kernel occupancy count (a BPF map iterator, ctbpf/occupancy_iter.py)
against the batch-read count it replaces at scrape time, on the real tables."""

import pytest

from ctbpf import occupancy

import packets as P


@pytest.fixture(scope="module")
def counter():
    from ctbpf.occupancy_iter import IterCounter

    c = IterCounter()
    yield c
    c.close()


def test_the_iterator_counts_what_the_batch_reads_count(tracker, counter):
    d = P.TcpDialog(P.A4, P.B4, 40000, 80)
    for direction, flags in ((P.ORIG, "S"), (P.REPLY, "SA"), (P.ORIG, "A")):
        tracker.send(d.frame(direction, flags))                    # ESTABLISHED, ASSURED
    tracker.send(P.frame(P.tcp("S", P.A6, P.B6, 40001, 443)))      # SYN_SENT
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40002, 53)))
    tracker.send(P.frame(P.udp(P.A4, P.B4, 40003, 53)))
    tracker.send(P.frame(P.icmp_echo(P.A4, P.B4)))
    tracker.expire(lambda f: f.orig.sport == 40003)                # expired: not counted
    live, present = counter.count(tracker.pin_dir)
    assert (live, present) == occupancy.occupancy(tracker.pin_dir)
    assert present == 5
    assert live["assured"] == {(6, 3): 1}                          # 3: ESTABLISHED
    assert live["new"] == {(6, 1): 1, (17, None): 1, (1, None): 1}  # 1: SYN_SENT


def test_empty_tables(tracker, counter):
    assert counter.count(tracker.pin_dir) == ({"assured": {}, "new": {}}, 0)
