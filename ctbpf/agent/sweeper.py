"""The sweeper: reclaims expired entries from both flow tables.

Correctness never waits for it (the datapath treats an expired entry as
absent); it frees table room and reports DESTROY for flows no packet
revisits. It works from an *expiry index* (ctbpf/agent/expiry.py), so that a pass
costs what is due, not what is in the tables:

- The datapath writes a record (key, expiry) into the ct_timers ring when it
  creates an entry and when an entry's expiry moves earlier (bpf/abi.h,
  struct ct_timer). The sweeper reads the ring through mmap about once a
  second (*intake*) and files each key under the second it comes due.
- An *index pass* takes the keys now due and hands them to the in-kernel
  sweep program (bpf/sweep.h, CT_SWEEP_DUE, through BPF_PROG_TEST_RUN),
  which deletes each entry only if it is *still* expired (DESTROY,
  CT_STAT_SWEPT) and otherwise returns its current expiry: the flow saw
  traffic since, and is filed again under that. Every live entry thus keeps
  a record due no later than itself.
- A *walk* reads whole tables with BPF_MAP_LOOKUP_BATCH into two reused raw
  buffers, finds the expired entries without decoding them (the values
  buffer viewed as u64 words) and hands their keys to the sweep program
  (CT_SWEEP_EXPIRED: re-check, then delete). A walk that *seeds* also files
  every live entry in the index. The sweeper seeds when it starts or the
  datapath is replaced (entries it never saw registered), and when the
  datapath counted a record the ring had no room for (CT_STAT_TIMER_LOST);
  it also walks every ``walk_interval`` as a safety net, counting in
  ``walk_found_total`` what the index had missed (0 when all is well).
  Without a ct_timers ring (an older datapath) every pass is a walk.

Slicing: one ``run_once`` handles at most ``slice_keys`` due keys or reads at
most ``slice_entries`` entries (a few ms, under the 10 ms budget of the
kernel's own conntrack GC), then asks to run again at once; the daemon's loop
serves every other due service between two slices. A walk's batch cursor (a
hash bucket index) survives between slices: entries added or removed behind
it are met on the next pass.

Interval: after a pass, if at least ``high_ratio`` of the entries it looked
at had expired the interval halves, if at most ``low_ratio`` (or it looked
at nothing) it doubles, always within [min_interval, max_interval]. The next
pass starts one interval after the previous one ended.

Longer than 500 lines because a Sweeper's passes, its intake of the expiry
ring and its full walks share one lock, one clock and one set of batch
buffers; the arithmetic that needs none of them is in sweepcore.py.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from dataclasses import dataclass, field

from ctbpf import abi
from ctbpf.agent.expiry import ExpiryIndex, TIMER_SIZE
from ctbpf.agent.sweepcore import (ENTRY_SIZE, EXPIRES_OFFSET, KEY_SIZE, SweepStats, TABLES,
                                   check_intervals, expired_indices, gather_keys, next_interval)
from ctbpf.datapath import acctorphans, bpfsys, stats as ct_stats
from ctbpf.datapath.ringbuf import RingReader, record_size
from ctbpf.errors import CtbpfError, UsageError

log = logging.getLogger(__name__)

#: (pinned map name, enum ct_table_id), in sweep order.
DEFAULT_MIN_INTERVAL = 1.0
DEFAULT_MAX_INTERVAL = 30.0
DEFAULT_SLICE_ENTRIES = 8192
#: Due keys handed to the kernel per slice (0.5-1 us each here).
DEFAULT_SLICE_KEYS = 2048
#: Seconds between two safety walks of the whole tables.
DEFAULT_WALK_INTERVAL = 600.0
#: Seconds between two reads of the ct_timers ring outside passes.
INTAKE_INTERVAL = 1.0
#: Ring records read per intake call (the loop comes back for more).
INTAKE_RECORDS = 65536
TIMERS_MAP = "ct_timers"
TIMER_LOST = abi.const("CT_STAT_TIMER_LOST")
#: A read smaller than this is not worth a syscall: the run ends instead.
MIN_READ = 1024


# --------------------------------------------------------------------------
# the service


class _BatchBuffers:
    """Reused raw buffers for one batch read, and their addresses."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.keys = bytearray(KEY_SIZE * entries)
        self.values = bytearray(ENTRY_SIZE * entries)
        self._k = (ctypes.c_char * len(self.keys)).from_buffer(self.keys)
        self._v = (ctypes.c_char * len(self.values)).from_buffer(self.values)
        self.keys_addr = ctypes.addressof(self._k)
        self.values_addr = ctypes.addressof(self._v)


def _token_buffer() -> ctypes.Array:
    return ctypes.create_string_buffer(max(KEY_SIZE, 8))


@dataclass
class _Pass:
    datapath: object
    fds: list
    started: float
    kind: str = "walk"             # "index", "walk" or "seed"
    due: bytearray | None = None   # index pass: the due keys
    due_at: int = 0                # ... and how far the pass got, in bytes
    table: int = 0                 # index in TABLES
    first: bool = True             # the next read starts the table
    # the batch cursor (a bucket index for hash maps), in and out
    token: ctypes.Array = field(default_factory=lambda: _token_buffer())
    next_token: ctypes.Array = field(default_factory=lambda: _token_buffer())
    scanned: int = 0
    expired: int = 0
    deleted: int = 0
    busy: float = 0.0
    cpu: float = 0.0
    max_slice: float = 0.0
    phases: list = field(default_factory=lambda: [0.0, 0.0, 0.0])   # read, scan, delete

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class Sweeper:
    """A daemon service (see ctbpf/agent/daemon.py) that sweeps expired entries.

    start(owner) takes any object with ``pin_dir`` (where the maps are
    pinned) and ``datapath`` (a loaded Datapath, for its sweep program):
    the Daemon, or a plain namespace in benchmarks and tests. Both are read
    again at every pass, so a reloaded datapath is picked up.
    """

    name = "sweeper"

    def __init__(self, min_interval: float = DEFAULT_MIN_INTERVAL,
                 max_interval: float = DEFAULT_MAX_INTERVAL, *,
                 slice_entries: int = DEFAULT_SLICE_ENTRIES,
                 slice_keys: int = DEFAULT_SLICE_KEYS,
                 walk_interval: float = DEFAULT_WALK_INTERVAL,
                 use_index: bool = True,
                 high_ratio: float = 0.25, low_ratio: float = 0.05) -> None:
        check_intervals(min_interval, max_interval)
        if slice_entries < MIN_READ:
            raise UsageError(f"sweep slice: {slice_entries} entries is below {MIN_READ}")
        if slice_keys < 1:
            raise UsageError(f"sweep slice: {slice_keys} keys is below 1")
        if not walk_interval > 0:
            raise UsageError(f"sweep walk interval: {walk_interval:g} must be a positive "
                             f"number of seconds")
        self.min_interval = float(min_interval)
        self.max_interval = float(max_interval)
        self.slice_entries = int(slice_entries)
        self.slice_keys = int(slice_keys)
        self.walk_interval = float(walk_interval)
        self.use_index = use_index
        self.high_ratio = high_ratio
        self.low_ratio = low_ratio
        self.interval = self.min_interval
        self.stats = SweepStats(interval=self.interval)
        self.index = ExpiryIndex()
        self._owner = None
        self._pass: _Pass | None = None
        self._buffers: _BatchBuffers | None = None
        self._due = 0.0
        self._ring: RingReader | None = None
        self._ring_datapath = None     # the datapath whose ring _ring reads
        self._need_seed = True         # the index misses entries: walk and file them
        self._next_walk = 0.0          # time.monotonic() of the next safety walk
        self._next_intake = 0.0

    # -- the service protocol ------------------------------------------------

    def start(self, owner) -> None:
        self._owner = owner
        self._due = time.monotonic()   # a first pass right away

    def due(self) -> float:
        if self._pass is not None or self._ring is None:
            return self._due
        return min(self._due, self._next_intake)

    def run_once(self, now: float) -> None:
        """Read the ring, then one slice of the current pass if one is due
        (starting a pass if none runs)."""
        try:
            self._sync_ring()
            if self._ring is not None:
                self.intake()
            if self._pass is None and time.monotonic() < self._due:
                return                  # only the ring was due
            finished = self.step()
        except Exception as e:  # noqa: BLE001 - a failed pass must not stop the tracker
            self.stats.errors += 1
            self.stats.last_error = str(e) or type(e).__name__
            if isinstance(e, (OSError, CtbpfError, ValueError)):
                log.warning("sweep pass abandoned: %s", e)
            else:
                log.exception("sweep pass abandoned")
            self._abandon()
            self._due = time.monotonic() + self.interval
            return
        if finished:
            self._due = self.stats.last_finished + self.interval
        else:
            self._due = time.monotonic()   # the next slice as soon as the loop comes back

    def stop(self) -> None:
        self._abandon()
        self._close_ring()

    # -- for benchmarks, tests and commands ----------------------------------

    def sweep_now(self, kind: str | None = None) -> dict:
        """Run one whole pass now (abandoning a pass in progress); returns
        the stats snapshot after it. `kind` forces "walk" (a safety walk),
        "seed" or "index"; by default the sweeper picks, as in the daemon.
        Errors propagate."""
        if self._owner is None:
            raise CtbpfError("sweeper not started")
        self._abandon()
        self._sync_ring()
        if self._ring is not None:
            self.intake()
        while not self.step(kind):
            kind = None
            if self._ring is not None:
                self.intake()
        self._due = self.stats.last_finished + self.interval
        return self.stats.snapshot()

    @property
    def in_pass(self) -> bool:
        return self._pass is not None

    @property
    def indexed(self) -> bool:
        """Whether passes can work from the expiry index."""
        return self._ring is not None and not self._need_seed

    def intake(self) -> int:
        """File the ct_timers ring's records in the index; returns how many."""
        if self._ring is None:
            return 0
        c0 = time.thread_time()
        total = 0
        stride = record_size(TIMER_SIZE)

        def handle(chunk, n, clean):
            nonlocal total
            total += self.index.add_timers(chunk, n, stride, offset=8, clean=clean)

        for _ in range(64):   # bounded: a flood keeps the producer ahead
            if not self._ring.consume_fixed(TIMER_SIZE, INTAKE_RECORDS, handle):
                break
        self.stats.intake_total += total
        self.stats.index_keys = self.index.keys
        self.stats.intake_cpu += time.thread_time() - c0
        self._next_intake = time.monotonic() + INTAKE_INTERVAL
        return total

    # -- the work ------------------------------------------------------------

    def _abandon(self) -> None:
        if self._pass is not None:
            self._pass.close()
            self._pass = None

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()
        self._ring = None
        self._ring_datapath = None

    def _sync_ring(self) -> None:
        """Open the ring of the owner's datapath (again, after a reload: its
        entries were never seen, so the next pass seeds)."""
        datapath = getattr(self._owner, "datapath", None)
        if datapath is self._ring_datapath:
            return
        self._close_ring()
        self._ring_datapath = datapath
        self._need_seed = True
        if datapath is None or not self.use_index:
            return
        try:
            fd = bpfsys.obj_get(str(self._owner.pin_dir / TIMERS_MAP))
        except OSError as e:
            log.warning("no expiry index (%s): every sweep walks the tables", e)
            return
        try:
            self._ring = RingReader(fd)
        except (OSError, ValueError) as e:
            log.warning("no expiry index (%s): every sweep walks the tables", e)
        finally:
            os.close(fd)

    def _timer_lost(self) -> int:
        return ct_stats.read_counters(self._owner.pin_dir)[TIMER_LOST]

    def _begin(self, kind: str | None = None) -> _Pass | None:
        datapath = getattr(self._owner, "datapath", None)
        if datapath is None:
            return None
        if self._ring is not None:
            lost = self._timer_lost()
            if lost != self.stats.timer_lost_seen:
                if self.stats.timer_lost_seen or lost:
                    log.info("expiry index: %d registrations lost, rebuilding it",
                             lost - self.stats.timer_lost_seen)
                self.stats.timer_lost_seen = lost
                self._need_seed = True
        if kind is None:
            now = time.monotonic()
            if self._ring is None:
                kind = "walk"
            elif self._need_seed:
                kind = "seed"
            elif now >= self._next_walk:
                kind = "walk"
            else:
                kind = "index"
        if kind == "index":
            if self._ring is None:
                raise CtbpfError("no expiry index: this datapath has no ct_timers ring")
            return _Pass(datapath=datapath, fds=[], started=time.monotonic(), kind="index",
                         due=self.index.pop_due(time.monotonic_ns()))
        if kind == "seed":
            # Everything is about to be filed afresh from the tables: what
            # the index held is dropped (records still in the ring are
            # newer than the walk's start and go in on top).
            self.index.clear()
            self._need_seed = False
        pin_dir = self._owner.pin_dir
        fds: list[int] = []
        try:
            for name, _ in TABLES:
                fds.append(bpfsys.obj_get(str(pin_dir / name)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            if kind == "seed":
                self._need_seed = True
            raise
        if self._buffers is None:
            self._buffers = _BatchBuffers(self.slice_entries)
        return _Pass(datapath=datapath, fds=fds, started=time.monotonic(), kind=kind)

    def step(self, kind: str | None = None) -> bool:
        """One slice, starting a pass (of `kind`, or the sweeper's choice) if
        none runs; True when the pass is over. Errors propagate."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if self._pass is not None and getattr(self._owner, "datapath", None) is not \
                self._pass.datapath:
            # Reloaded (a resize, a restart of the datapath): the cursor and the
            # map fds belong to the old maps. Start over on the new ones.
            log.info("datapath reloaded: sweep pass restarted")
            self._abandon()
            self._sync_ring()
        if self._pass is None:
            self._pass = self._begin(kind)
            if self._pass is None:  # no datapath (yet): nothing to sweep
                self.stats.last_finished = time.monotonic()
                return True
        p = self._pass
        if p.kind == "index":
            self._index_slice(p)
        else:
            self._walk_slice(p)
        self.stats.slices += 1
        elapsed = time.perf_counter() - t0
        p.busy += elapsed
        p.cpu += time.thread_time() - c0
        p.max_slice = max(p.max_slice, elapsed)
        if p.kind == "index" and p.due_at < len(p.due):
            return False
        if p.kind != "index" and p.table < len(TABLES):
            return False
        self._finish(p)
        return True

    def _index_slice(self, p: _Pass) -> None:
        """Hand the next slice_keys due keys to the kernel; file again the
        ones that saw traffic since they were filed."""
        r0 = time.perf_counter()
        end = min(len(p.due), p.due_at + self.slice_keys * KEY_SIZE)
        keys = memoryview(p.due)[p.due_at:end]
        p.due_at = end
        found = len(keys) // KEY_SIZE
        res = p.datapath.sweep_due(keys)
        keys.release()
        r1 = time.perf_counter()
        if res.kept_expiries:
            self.index.add_keys(res.kept_keys, res.kept_expiries)
        self.stats.index_keys = self.index.keys
        p.phases[2] += r1 - r0
        p.phases[1] += time.perf_counter() - r1
        p.scanned += found
        p.expired += res.deleted
        p.deleted += res.deleted
        self.stats.scanned_total += found
        self.stats.expired_total += res.deleted
        self.stats.deleted_total += res.deleted
        self.stats.kept_total += len(res.kept_expiries)

    def _walk_slice(self, p: _Pass) -> None:
        budget = self.slice_entries
        seed = p.kind == "seed"
        while p.table < len(TABLES) and budget >= MIN_READ:
            name, table_id = TABLES[p.table]
            r0 = time.perf_counter()
            count, done = self._read(p, p.fds[p.table], budget)
            budget -= count
            now_ns = time.monotonic_ns()   # after the read: nothing is judged early
            r1 = time.perf_counter()
            b = self._buffers
            expired = expired_indices(b.values, count, now_ns)
            keys = gather_keys(b.keys, expired)
            found = len(expired)
            if seed and found < count:
                self._file_live(b, count, expired)
            elif found and p.kind == "walk" and self._ring is not None:
                self.stats.walk_found_total += self._overdue(b, expired, now_ns)
            r2 = time.perf_counter()
            deleted = p.datapath.sweep(table_id, keys) if found else 0
            p.phases[0] += r1 - r0
            p.phases[1] += r2 - r1
            p.phases[2] += time.perf_counter() - r2
            p.scanned += count
            p.expired += found
            p.deleted += deleted
            self.stats.scanned_total += count
            self.stats.expired_total += found
            self.stats.deleted_total += deleted
            self.stats.kept_total += found - deleted
            self.stats.deleted_by_table[name] += deleted
            if done:
                p.table += 1
                p.first = True

    def _overdue(self, b: _BatchBuffers, expired: list[int], now_ns: int) -> int:
        """How many of these expired entries the index should have swept
        already: expired for longer than the longest interval and a slot."""
        words = memoryview(b.values).cast("I")
        step, at = ENTRY_SIZE // 4, EXPIRES_OFFSET // 4
        limit = abi.ticks(now_ns - int((self.max_interval + 2) * 1e9))
        return sum(1 for i in expired if words[i * step + at] < limit)

    def _file_live(self, b: _BatchBuffers, count: int, expired: list[int]) -> None:
        """File the live entries of a batch read in the index."""
        words = memoryview(b.values)[:count * ENTRY_SIZE].cast("I")
        expiries = words[EXPIRES_OFFSET // 4::ENTRY_SIZE // 4].tolist()
        if not expired:
            self.index.add_keys(memoryview(b.keys)[:count * KEY_SIZE], expiries)
            return
        dead = set(expired)
        live = [i for i in range(count) if i not in dead]
        self.index.add_keys(gather_keys(b.keys, live), [expiries[i] for i in live])

    def _read(self, p: _Pass, fd: int, want: int) -> tuple[int, bool]:
        """One batch read from the pass's cursor into the buffers; returns
        (entries read, whether the table is done)."""
        while True:
            b = self._buffers
            want = min(want, b.entries)
            try:
                count, done = bpfsys.lookup_batch_at(
                    fd, 0 if p.first else ctypes.addressof(p.token),
                    ctypes.addressof(p.next_token), b.keys_addr, b.values_addr, want)
            except bpfsys.BpfError as e:
                if e.errno != errno.ENOSPC:
                    raise
                # One hash bucket holds more than `want` entries: read more.
                if want < b.entries:
                    want = b.entries
                else:
                    self._buffers = _BatchBuffers(b.entries * 2)
                    want = self._buffers.entries
                continue
            if done:   # the last batch (count may be > 0)
                return count, True
            ctypes.memmove(p.token, p.next_token, len(p.token))
            p.first = False
            return count, False

    def _finish(self, p: _Pass) -> None:
        p.close()
        self._pass = None
        s = self.stats
        s.passes += 1
        s.last_kind = p.kind
        if p.kind == "index":
            s.index_passes += 1
        else:
            s.walks += 1
            if p.kind == "seed":
                s.seeds += 1
            self._next_walk = time.monotonic() + self.walk_interval
            try:
                s.acct_orphans_total += acctorphans.remove_orphans(self._owner.pin_dir)
            except OSError as e:
                log.warning("removing counter records of evicted flows failed: %s", e)
        s.index_keys = self.index.keys
        s.last_scanned, s.last_expired, s.last_deleted = p.scanned, p.expired, p.deleted
        s.last_duration, s.last_cpu, s.last_max_slice = p.busy, p.cpu, p.max_slice
        s.last_read, s.last_scan, s.last_delete = p.phases
        s.last_finished = time.monotonic()
        s.last_wall = s.last_finished - p.started
        s.observe(p.busy)
        self.interval = next_interval(self.interval, p.scanned, p.expired, self.min_interval,
                                      self.max_interval, self.high_ratio, self.low_ratio)
        s.interval = self.interval
        log.debug("sweep (%s): %d scanned, %d expired, %d deleted in %.1f ms; next in %gs",
                  p.kind, p.scanned, p.expired, p.deleted, p.busy * 1e3, self.interval)
