"""How big each map of the datapath is, from the two numbers a user sets.

`max` keeps the kernel's meaning (nf_conntrack_max): the flows tracked in
all, ASSURED or not. `new_max` is the part of it that unassured flows may
hold: ct_new, the LRU pool that a flood of new flows churns. The rest,
`max - new_max`, is what ct_assured may hold, a hash that nothing evicts
and whose elements are allocated as flows come (BPF_F_NO_PREALLOC). Its
bucket array, 16 bytes for each of max_entries rounded up to a power of
two, is allocated whole when the map is made, so ct_assured is made for the
flows it holds and grown (ctbpf/agent/growth.py: four times larger when it
is seven eighths full, by the live rebuild) up to `max - new_max`. An LRU
hash is always preallocated, so ct_new's size is memory spent whether flows
come or not: it is sized apart, and smaller by default. The rings follow
what the two tables can hold now. ct_acct, the counters of flows made
while acct was on (off by default, as nf_conntrack_acct), is a hash like
ct_assured and grows the same way with the records it holds, up to what
the two tables hold: with acct off its buckets cost 256 KiB, not 16 B for
every flow the tables could hold.

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
#: ct_assured's first size, and how it grows: x4 when seven eighths full.
ASSURED_START, GROWTH, GROW_AT = 16384, 4, 0.875
#: ct_acct's first size (it grows as ct_assured does).
ACCT_START = 16384
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

    max_entries: int          # conntrack_max: what ct_assured may grow to + ct_new
    new_max: int              # ct_new
    assured: int              # ct_assured now
    acct: int                 # ct_acct now

    @property
    def assured_max(self) -> int:
        return self.max_entries - self.new_max

    @property
    def holds(self) -> int:
        """The flows both tables hold now."""
        return self.assured + self.new_max

    @property
    def timers_bytes(self) -> int:
        return _ring(self.holds * TIMERS_PER_FLOW, TIMER_RECORD, TIMERS_MAX)

    @property
    def events_bytes(self) -> int:
        return _ring(self.holds * EVENTS_PER_FLOW, EVENT_RECORD, EVENTS_MAX)

    def grown(self) -> "Sizes | None":
        """The next size of ct_assured, None when it is at max already."""
        if self.assured >= self.assured_max:
            return None
        return Sizes(self.max_entries, self.new_max,
                     min(self.assured * GROWTH, self.assured_max), self.acct)

    def should_grow(self, assured_count: int) -> bool:
        return self.assured < self.assured_max and assured_count > self.assured * GROW_AT

    def acct_grown(self) -> "Sizes | None":
        """The next size of ct_acct, None when it holds every flow already."""
        if self.acct >= self.holds:
            return None
        return Sizes(self.max_entries, self.new_max, self.assured,
                     min(self.acct * GROWTH, self.holds))

    def acct_should_grow(self, records: int) -> bool:
        return self.acct < self.holds and records > self.acct * GROW_AT


def assured_for(assured_max: int, live: int = 0, start: int = ASSURED_START) -> int:
    """ct_assured's size for `live` ASSURED flows: ASSURED_START grown until
    they fill at most seven eighths of it, at most assured_max. (ct_acct's
    for `live` records, from ACCT_START, the same way.)"""
    cap = start
    while cap < assured_max and live > cap * GROW_AT:
        cap *= GROWTH
    return min(cap, assured_max)


def sizes(max_entries: int, new_max: int | None = None, assured: int | None = None,
          live: int = 0, acct: int | None = None, acct_live: int = 0) -> Sizes:
    """The sizes for `max` and `new_max` (None: the default for that max),
    with ct_assured `assured` large (None: sized for `live` ASSURED flows)
    and ct_acct `acct` large (None: sized for `acct_live` records; never
    more than the two tables hold). Raises ValueError when new_max does not
    leave both tables a flow."""
    nm = default_new_max(max_entries) if new_max is None else int(new_max)
    if not 1 <= nm < max_entries:
        raise ValueError(f"new_max {nm} must be at least 1 and below max {max_entries}")
    cap = assured_for(max_entries - nm, live) if assured is None else int(assured)
    if not 1 <= cap <= max_entries - nm:
        raise ValueError(f"ct_assured of {cap} entries does not fit max {max_entries} "
                         f"with new_max {nm}")
    holds = cap + nm
    acct_cap = assured_for(holds, acct_live, ACCT_START) if acct is None else min(int(acct), holds)
    if acct_cap < 1:
        raise ValueError(f"ct_acct of {acct_cap} entries is too small")
    return Sizes(max_entries, nm, cap, acct_cap)


def at_least(assured: int, new: int) -> int:
    """The smallest max whose default sizes hold this many flows in each table."""
    n = max(assured + new, 2 * new, 16)
    while True:
        sz = sizes(n)
        if sz.assured_max >= assured and sz.new_max >= new:
            return n
        n += max(1, n // 64)
