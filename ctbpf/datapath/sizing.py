"""How big each map of the datapath is, from the two numbers a user sets.

`max` keeps the kernel's meaning (nf_conntrack_max): the flows tracked in
all, ASSURED or not. `new_max` is the part of it that unassured flows may
hold: ct_new, the LRU pool that a flood of new flows churns. The rest,
`max - new_max`, is ct_assured, a hash that nothing evicts and whose
memory follows the flows it holds (BPF_F_NO_PREALLOC). An LRU hash is
always preallocated, so ct_new's size is memory spent whether flows come or
not: it is sized apart, and smaller by default.

The default new_max is max/16, at least NEW_FLOOR and at most max/2. A
SYN flood of any rate then churns a sixteenth of the table while the
ASSURED flows keep the rest; the flows that legitimately wait for an answer
(SYN_SENT for 120 s, UDP for 30 s) need max/16 only when more than one in
sixteen tracked flows is unanswered at any time, which is a scan, a flood or
a DNS resolver (which should raise new_max). The floor keeps small tables
from getting a pool so small that a burst of connects evicts its own flows.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The smallest default ct_new.
NEW_FLOOR = 1024
#: Entries of the expiry index's ring per tracked flow (1/16: a burst of new
#: flows as large as a sixteenth of the table between two sweeper reads; a
#: burst larger still loses records, counted, and the sweeper then walks the
#: tables instead).
TIMERS_PER_FLOW = 1 / 16
#: Bytes of one ct_timers record: a struct ct_timer (44) plus the ring's
#: 8-byte header, rounded up to 8.
TIMER_RECORD = 56
#: Events ring: one event (a 152-byte struct ct_event plus its 8-byte
#: header) per 128 tracked flows, between 64 KiB and 2 MiB (the relay reads
#: it continuously; a lost event is counted).
EVENT_RECORD = 160
EVENTS_PER_FLOW = 1 / 128
RING_MIN, TIMERS_MAX, EVENTS_MAX = 1 << 16, 1 << 23, 1 << 21


def default_new_max(max_entries: int) -> int:
    """max/16, at least NEW_FLOOR, at most max/2."""
    return min(max(max_entries // 16, NEW_FLOOR), max(max_entries // 2, 1))


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _ring(records: float, record: int, top: int) -> int:
    return min(max(_pow2_at_least(int(records) * record), RING_MIN), top)


@dataclass(frozen=True)
class Sizes:
    """The sizes of one datapath's maps (entries, or bytes for the rings)."""

    max_entries: int          # conntrack_max: ct_assured + ct_new
    new_max: int              # ct_new

    @property
    def assured(self) -> int:
        return self.max_entries - self.new_max

    @property
    def timers_bytes(self) -> int:
        return _ring(self.max_entries * TIMERS_PER_FLOW, TIMER_RECORD, TIMERS_MAX)

    @property
    def events_bytes(self) -> int:
        return _ring(self.max_entries * EVENTS_PER_FLOW, EVENT_RECORD, EVENTS_MAX)


def sizes(max_entries: int, new_max: int | None = None) -> Sizes:
    """The sizes for `max` and `new_max` (None: the default for that max).
    Raises ValueError when new_max does not leave both tables a flow."""
    nm = default_new_max(max_entries) if new_max is None else int(new_max)
    if not 1 <= nm < max_entries:
        raise ValueError(f"new_max {nm} must be at least 1 and below max {max_entries}")
    return Sizes(max_entries, nm)


def at_least(assured: int, new: int) -> int:
    """The smallest max whose default sizes hold this many flows in each table."""
    n = max(assured + new, 2 * new, 16)
    while True:
        sz = sizes(n)
        if sz.assured >= assured and sz.new_max >= new:
            return n
        n += max(1, n // 64)
