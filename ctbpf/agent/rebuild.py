"""Restart without loss: adopt a running datapath, rebuild its maps (a new
size, a new layout) without a moment untracked, or discard them loudly.

The datapath outlives the daemon: XDP and TC programs attached through
netlink stay attached when the process that loaded them exits (SIGKILL
included), and the maps stay pinned. Entries hold absolute CLOCK_MONOTONIC
expiry times, so nothing about a flow depends on which daemon runs.

Adoption (same layout, same size). `ctbpf run` compiles its programs on the
pinned maps (BCC's BPF_TABLE_PINNED reuses them), then, on each interface
whose XDP program is ctbpf's (program name ctbpf_xdp) *and* uses our pinned
tables (its map ids, from BPF_OBJ_GET_INFO_BY_FD, include theirs), swaps in
the new program with netlink's compare-and-swap (IFLA_XDP_EXPECTED_FD +
XDP_FLAGS_REPLACE): one instant the old program runs, the next the new one,
on the same maps. TC egress filters are swapped the same way (a filter
replace on our priority and handle). See Datapath.attach_xdp.

Rebuild (another conntrack_max, or another layout version with a registered
migration), in `Rebuild`:
  1. prepare: compile and load a new datapath whose maps are pinned in a
     sibling directory `<pin>+rebuild-<pid>`; copy the tunables, the counters
     and every entry (converted by the migration, if any) into it; check
     that the new tables really hold them all (an LRU map evicts a little
     before it is full), else give up with nothing changed;
  2. commit: swap every program that tracks into the old tables (found on
     every interface of this network namespace) for the new ones, atomically
     per hook; wait for the old programs' last packets; reconcile the
     entries that changed in the old tables between the copy and the swap
     (below); add the counters' increments of that window; move the new
     pins over the old ones (rename(2) on bpffs replaces a pin atomically).
  Reconciling, per key, with s = the entry as first copied, o = the old
  table's final entry, n = the new table's entry now (each with its table,
  or absent): when o == s the old program did not touch it, nothing to do;
  when n != s the new program has already written (or deleted) it and its
  word is the latest, keep n; otherwise o is carried over (created,
  updated, moved between tables, or deleted). A packet that lands on a key
  between our read of n and our write could lose its update: the window is
  a few microseconds once, on a flow that changed within the few
  milliseconds of the swap. Unlike adoption (same maps), a rebuild has one
  window: a flow that changed in the old tables after the copy and sees a
  packet on the new program before the reconcile has carried it over is
  judged on its copied entry (a flow born in that window, as new: a SYN/ACK
  whose SYN only the old program saw is INVALID). The window is the copy,
  the swap and the reconcile: milliseconds for thousands of entries, about
  3 s for 375,000 here (0.5 s of copy before the swap, 1.8 s of reconcile).

Layout versions. CT_CFG_LAYOUT_VERSION in ct_config says which layout the
pinned maps have. A restart on maps of another version looks up MIGRATIONS
(from_version -> a function converting raw key/entry bytes); with one, the
maps are rebuilt through it; with none, the daemon refuses and names
`--discard-state`, which unpins the old maps, reports how many entries it
dropped and starts empty. It never starts empty silently.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ctbpf import abi, tunables
from ctbpf.agent import acctcopy, resync
from ctbpf.agent.staging import remove_stale_temp, temp_pin_dir
from ctbpf.agent.migrations import Migration
from ctbpf.datapath import bpfsys, configmap, fastpath, pins, sizing
from ctbpf.datapath.hookswap import SWAP_GRACE_S, find_hooks, swap_hooks
from ctbpf.datapath.progs import STAGE_FUNCS, SWEEP_FUNC, programs_using
from ctbpf.datapath.rawmaps import (ENTRY_SIZE, KEY_SIZE, STATS_SIZE, STAT_DELETE, STAT_SWEPT,
                                    TABLES, _u64s, expires_ns, open_pinned, read_percpu,
                                    read_table, read_tables, table_ids, update_batch, write_percpu)
from ctbpf.errors import CtbpfError, UsageError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# rebuild: new maps (size or layout), no moment untracked


@dataclass
class Report:
    """What a rebuild or a discard did, for logs and the user."""

    copied: dict[str, int] = field(default_factory=dict)
    dropped_expired: int = 0      # expired entries that did not fit (counted as swept)
    dropped_by_migration: int = 0
    reconciled: int = 0           # keys taken from the old tables after the first copy
    kept_new: int = 0             # keys the new program had already rewritten
    hooks: list = field(default_factory=list)
    old_max: int = 0
    new_max: int = 0
    from_version: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.copied.values())


class RefusedError(CtbpfError):
    """A rebuild refused before changing anything."""


class Rebuild:
    """Move a running tracker onto new maps (see the module's docstring).

    Rebuild(pin_dir, new_max, migration=None, values=None).prepare() loads
    and fills the new datapath; commit() swaps and returns it (pinned at
    pin_dir); abort() undoes prepare(). new_max is the new conntrack_max,
    new_size ct_new's part of it (None: sizing's default for new_max).
    values, if given, are tunables to apply over the carried ones (a config
    file's)."""

    def __init__(self, pin_dir: Path, new_max: int, migration: Migration | None = None,
                 values: dict[str, int] | None = None, own_programs: set[int] = frozenset(),
                 new_size: int | None = None, assured: int | None = None,
                 acct: int | None = None) -> None:
        self.pin_dir = pin_dir
        # Programs of the caller's own datapath (loaded, not necessarily
        # attached): they use the old tables and go away with it.
        self.own_programs = set(own_programs)
        self.new_max = new_max
        self.new_size = new_size
        self.assured = assured       # ct_assured's size; None: made for its flows
        self.acct = acct             # ct_acct's size; None: made for its records
        self.sizes: sizing.Sizes | None = None
        self.migration = migration
        self.values = values
        self.tmp = temp_pin_dir(pin_dir)
        self.report = Report(new_max=new_max)
        self.dp = None
        self._old: dict[str, int] = {}
        self._new: dict[str, int] = {}
        self._snap: dict[bytes, tuple[str, bytes]] = {}
        self._written: dict[bytes, tuple[str, bytes]] = {}
        self._stats1: bytearray | None = None
        self._acct: dict[bytes, bytes] = {}        # the old counters, as read last
        self._acct_snap: dict[bytes, bytes] = {}   # ... as copied
        self._old_ids: set[int] = set()
        self._t0 = time.monotonic()

    # -- helpers -------------------------------------------------------------

    def _convert(self, table: str, key: bytes, entry: bytes) -> tuple[str, bytes, bytes] | None:
        if self.migration is None:
            return table, key, entry
        out = self.migration.convert(table, key, entry)
        if out is None:
            return None
        k, e, acct = out if len(out) == 3 else (*out, None)
        if acct is not None:
            self._acct[k] = acct
        if len(k) != KEY_SIZE or len(e) != ENTRY_SIZE:
            raise CtbpfError(f"migration from layout {self.migration.from_version}: converted "
                             f"entries must be {KEY_SIZE}/{ENTRY_SIZE} bytes, got {len(k)}/{len(e)}")
        return _table_for(table, k, e), k, e

    def _read_old(self) -> dict[bytes, tuple[str, bytes]]:
        """The old tables' entries (converted), their counters in self._acct."""
        raw = read_tables(self._old)
        self._acct = acctcopy.read(self._old.get(acctcopy.MAP))
        if self.migration is None:
            return raw
        out, dropped = {}, 0
        for key, (table, entry) in raw.items():
            conv = self._convert(table, key, entry)
            if conv is None:
                dropped += 1
                continue
            t, k, e = conv
            out[k] = (t, e)
        self.report.dropped_by_migration = max(self.report.dropped_by_migration, dropped)
        return out

    def _open_old(self) -> None:
        for name in (*TABLES, "ct_config", "ct_stats"):
            self._old[name] = open_pinned(self.pin_dir, name)
        if (self.pin_dir / acctcopy.MAP).exists():     # layouts before 4 had none
            self._old[acctcopy.MAP] = open_pinned(self.pin_dir, acctcopy.MAP)
        info = bpfsys.map_info(self._old["ct_new"])
        # Before layout 4 each table had max entries; since, both share it.
        self.report.old_max = info.max_entries if self.migration is not None else \
            configmap.max_in(configmap.read_any_layout(self._old["ct_config"]))
        self._old_ids = {bpfsys.map_info(self._old[t]).id for t in TABLES}

    def _close_fds(self) -> None:
        for d in (self._old, self._new):
            while d:
                os.close(d.popitem()[1])

    # -- the steps -----------------------------------------------------------

    def prepare(self) -> "Rebuild":
        from ctbpf.datapath.loader import MAX_ENTRIES, MIN_ENTRIES, Datapath, remove_pins  # noqa: PLC0415

        if not MIN_ENTRIES <= self.new_max <= MAX_ENTRIES:
            raise UsageError(f"max: {self.new_max} is out of range [{MIN_ENTRIES}, {MAX_ENTRIES}]")
        try:
            self._open_old()
            self._plan(self._read_old())   # refuse early, before the slow compile
            self._check_users()
            remove_stale_temp(self.pin_dir)
            if self.tmp.exists():
                remove_pins(self.tmp)
            self.dp = Datapath(self.tmp, self.new_max, new_max=self.sizes.new_max,
                               assured=self.sizes.assured, acct=self.sizes.acct).load()
            for name in (*TABLES, "ct_config", "ct_stats", acctcopy.MAP):
                self._new[name] = open_pinned(self.tmp, name)
            # The copy the swap starts from: taken as late as possible, so
            # that little changes in the old tables before the swap.
            self._snap = self._plan(self._read_old())
            self._copy_config()
            self._copy_counters()
            self._copy_policy()
            fastpath.copy_slots(self.pin_dir, self.tmp)
            self._copy_entries(self._snap)
        except BaseException:
            self.abort()
            raise
        return self

    def _check_users(self) -> None:
        """Every program on the old tables must be one we swap (attached in
        this network namespace) or the caller's own: one we cannot see,
        attached in another namespace, would go on tracking into the old
        maps after they are unpinned."""
        hooked = {h.prog_id for h in find_hooks(self._old_ids)}
        # The pinned sweep program attaches nowhere: _repin replaces its pin
        # with the new one, and the old program goes with its last reference.
        # The tracker stages attach nowhere either: only the entry programs,
        # which are checked, reach them (through the old program arrays).
        unattached = {SWEEP_FUNC[:15], *(name[:15] for name, _, _ in STAGE_FUNCS)}
        strangers = [p for p in programs_using(self._old_ids)
                     if p.id not in hooked | self.own_programs and p.name not in unattached]
        if strangers:
            names = ", ".join(f"{p.name or '?'} (id {p.id})" for p in strangers[:5])
            raise RefusedError(
                f"programs that this network namespace does not attach use the tables in "
                f"{pins.display(self.pin_dir)}: {names}; run this where they are attached "
                f"(their daemon's network namespace): refused, nothing changed")

    def _plan(self, snap: dict[bytes, tuple[str, bytes]]) -> dict[bytes, tuple[str, bytes]]:
        """Refuse when the live entries do not fit; drop the expired ones
        that do not fit (counted: they are reclaimed now, as swept)."""
        now = time.monotonic_ns()
        per_table = {t: [k for k, (tt, _) in snap.items() if tt == t] for t in TABLES}
        live = {t: sum(1 for k in ks if expires_ns(snap[k][1]) > now)
                for t, ks in per_table.items()}
        if self.sizes is None:    # ct_assured made for the flows it will hold
            try:
                self.sizes = sizing.sizes(self.new_max, self.new_size, self.assured,
                                          live=live["ct_assured"], acct=self.acct,
                                          acct_live=sum(1 for k in self._acct if k in snap))
            except ValueError as e:
                raise UsageError(str(e)) from None
        room = {"ct_assured": self.sizes.assured, "ct_new": self.sizes.new_max}
        if any(live[t] > room[t] for t in TABLES):
            raise RefusedError(
                f"max {self.new_max} (new_max {self.sizes.new_max}) is smaller than the live "
                f"entries ({live['ct_assured']} assured, {live['ct_new']} new): refused, nothing "
                f"changed; use at least max {live['ct_assured'] + max(live['ct_new'], 1)} with "
                f"new_max {max(live['ct_new'], 1)}")
        self.report.dropped_expired = 0
        for t, ks in per_table.items():
            if len(ks) > room[t]:
                for k in ks:
                    if expires_ns(snap[k][1]) <= now:
                        del snap[k]
                        self.report.dropped_expired += 1
        return snap

    def _copy_policy(self) -> None:
        """The enforce-mode policy and its verdict counters go along (maps an
        older build did not have are simply absent)."""
        if not (self.pin_dir / "ct_policy").exists():
            return
        old = open_pinned(self.pin_dir, "ct_policy")
        new = open_pinned(self.tmp, "ct_policy")
        try:
            ko, vo = bpfsys.map_info(old), bpfsys.map_info(new)
            if (ko.key_size, ko.value_size) != (vo.key_size, vo.value_size):
                log.warning("the pinned policy has another layout: not carried over")
                return
            keys, values, count = bpfsys.lookup_batch(old, ko.key_size, ko.value_size,
                                                      ko.max_entries)
            for i in range(count):
                k = ctypes.create_string_buffer(keys[i * ko.key_size:(i + 1) * ko.key_size],
                                                ko.key_size)
                v = ctypes.create_string_buffer(
                    values[i * ko.value_size:(i + 1) * ko.value_size], ko.value_size)
                bpfsys.update(new, k, v)
        finally:
            os.close(old)
            os.close(new)
        if (self.pin_dir / "ct_verdicts").exists():
            old = open_pinned(self.pin_dir, "ct_verdicts")
            new = open_pinned(self.tmp, "ct_verdicts")
            try:
                size = bpfsys.map_info(new).value_size
                if bpfsys.map_info(old).value_size == size:
                    write_percpu(new, read_percpu(old, size))
            finally:
                os.close(old)
                os.close(new)

    def _copy_config(self) -> None:
        raw: bytes | None = configmap.read_any_layout(self._old[configmap.MAP])
        if self.migration is not None:
            raw = self.migration.config(raw) if self.migration.config else None
        if raw is not None:
            configmap.write_as_this_layout(self._new[configmap.MAP], raw)
        if self.values is not None:
            current = tunables.from_config(configmap.read_config(self.tmp))
            current.update(self.values)
            configmap.write_config(self.tmp, current)
        configmap.set_max(self.tmp, self.new_max)   # the old config said the old max
        configmap.set_resync_hold(self._new[configmap.MAP], True)

    def _copy_counters(self) -> None:
        """Counters as they are now; the swap window's increments are added
        at commit. Nothing writes the new counters before the swap."""
        old = read_percpu(self._old["ct_stats"], bpfsys.map_info(self._old["ct_stats"]).value_size)
        self._stats1 = old
        new = read_percpu(self._new["ct_stats"], STATS_SIZE)
        stride_old = len(old) // bpfsys.possible_cpus()
        stride_new = len(new) // bpfsys.possible_cpus()
        for cpu in range(bpfsys.possible_cpus()):
            chunk = bytes(old[cpu * stride_old:(cpu + 1) * stride_old])
            if self.migration is not None:
                chunk = self.migration.counters(chunk) if self.migration.counters else None
            if chunk is None or len(chunk) < STATS_SIZE:
                continue
            new[cpu * stride_new:cpu * stride_new + STATS_SIZE] = chunk[:STATS_SIZE]
        c = _u64s(new)
        if self.migration is not None and not self.migration.counters:
            # Counters start at zero: the carried entries count as inserted.
            c[abi.const("CT_STAT_INSERT")] += sum(
                1 for t, _ in self._snap.values())
        # Entries that are not carried over leave the books as the datapath's
        # own removals would, so that early_drop (ctbpf/datapath/stats.py) stays exact.
        c[STAT_SWEPT] += self.report.dropped_expired
        c[STAT_DELETE] += self.report.dropped_by_migration
        write_percpu(self._new["ct_stats"], new)

    def _copy_entries(self, snap: dict[bytes, tuple[str, bytes]]) -> None:
        # TCP entries go in marked for resync (ctbpf/agent/resync.py): what
        # the new tables hold until the reconcile, to compare with.
        self._written = {k: (t, resync.mark(e) if resync.is_tcp(k) else e)
                         for k, (t, e) in snap.items()}
        for t in TABLES:
            items = [(k, e) for k, (tt, e) in self._written.items() if tt == t]
            keys = b"".join(k for k, _ in items)
            values = b"".join(e for _, e in items)
            written = update_batch(self._new[t], keys, values, KEY_SIZE, ENTRY_SIZE)
            held = len(read_table(self._new[t]))
            self.report.copied[t] = held
            if written != len(items) or held != len(items):
                raise RefusedError(
                    f"max {self.new_max}: the new {t} holds {held} of its {len(items)} entries "
                    f"(an LRU table evicts a little before it is full): refused, nothing "
                    f"changed; choose a bigger max")
        self._acct_snap = {k: a for k, a in self._acct.items() if k in snap}
        acctcopy.write(self._new[acctcopy.MAP], self._acct_snap)

    def commit(self):
        """Swap every hook of the old tables to the new programs, carry over
        what changed meanwhile, pin the new maps at pin_dir. Returns the new
        Datapath (its attachments list is empty: hooks are in the report)."""
        # The hooks are swapped one interface at a time: for those moments
        # one direction of a flow goes to the new tables and the other to
        # the old ones, whose program would find the peer's ack of data it
        # never saw out of window (INVALID, dropped when enforcing). The old
        # tables are liberal until they are let go; the new ones are not.
        was = configmap.make_liberal(self._old[configmap.MAP])
        try:
            hooks = find_hooks(self._old_ids)
            self.report.hooks = swap_hooks(hooks, self.dp)
        except BaseException:
            configmap.restore(self._old[configmap.MAP], was)
            self.abort()
            raise
        # From here the new programs run: no way back, only forward.
        time.sleep(SWAP_GRACE_S)
        try:
            self._reconcile()
            self._add_window_counters()
        except (OSError, CtbpfError) as e:
            log.error("carrying over the changes of the swap window failed (%s): entries or "
                      "counts of its last milliseconds may be missing", e)
        self._repin()
        self._close_fds()
        self.dp.pin_dir = self.pin_dir
        self.dp.adoptable |= table_ids(self.pin_dir)
        self.report.seconds = time.monotonic() - self._t0
        return self.dp

    def _reconcile(self) -> None:
        final = self._read_old()
        now_new = read_tables(self._new)
        for key in set(self._snap) | set(final):
            s, o, n = self._snap.get(key), final.get(key), now_new.get(key)
            if o == s:
                continue            # the old program did not touch it after the copy
            if n != self._written.get(key):
                self.report.kept_new += 1
                continue            # the new program has the latest word
            self.report.reconciled += 1
            if o is None:
                bpfsys.delete(self._new[n[0]], ctypes.create_string_buffer(key, KEY_SIZE))
                continue
            kbuf = ctypes.create_string_buffer(key, KEY_SIZE)
            # Marked too: a packet the new program handles between this
            # listing and this write is lost, and the marks make up for it.
            vbuf = ctypes.create_string_buffer(resync.mark(o[1]) if resync.is_tcp(key) else o[1],
                                               ENTRY_SIZE)
            flags = bpfsys.BPF_NOEXIST if s is None else bpfsys.BPF_ANY
            try:
                bpfsys.update(self._new[o[0]], kbuf, vbuf, flags)
            except bpfsys.BpfError as e:
                if e.errno == errno.EEXIST:   # created by the new program just now: it wins
                    self.report.kept_new += 1
                    self.report.reconciled -= 1
                    continue
                log.warning("carrying an entry over failed: %s", e)
                continue
            if s is not None and s[0] != o[0]:
                bpfsys.delete(self._new[s[0]], kbuf)

        acctcopy.carry_window(self._new[acctcopy.MAP], self._acct_snap, self._acct,
                              set(final))
        resync.end(self._new, final, self._new[configmap.MAP])

    def _add_window_counters(self) -> None:
        old = read_percpu(self._old["ct_stats"], bpfsys.map_info(self._old["ct_stats"]).value_size)
        if self._stats1 is None or (self.migration is not None and not self.migration.counters):
            return
        ncpu = bpfsys.possible_cpus()
        so, sn = len(old) // ncpu, ((STATS_SIZE + 7) & ~7)
        new = read_percpu(self._new["ct_stats"], STATS_SIZE)
        c_new = _u64s(new)
        for cpu in range(ncpu):
            a = bytes(self._stats1[cpu * so:(cpu + 1) * so])
            b = bytes(old[cpu * so:(cpu + 1) * so])
            if self.migration is not None:
                a, b = self.migration.counters(a), self.migration.counters(b)
                if a is None or b is None:
                    continue
            ua, ub = _u64s(a[:STATS_SIZE]), _u64s(b[:STATS_SIZE])
            base = cpu * sn // 8
            for i in range(STATS_SIZE // 8):
                c_new[base + i] += ub[i] - ua[i]
        # Racy against the datapath's own increments on the new counters for
        # the microseconds between this read and this write: at worst a few
        # packets' counts, once per rebuild.
        write_percpu(self._new["ct_stats"], new)

    def _repin(self) -> None:
        for name in pins.PIN_NAMES:
            src = self.tmp / name
            if src.exists():
                os.rename(src, self.pin_dir / name)   # atomic: the old pin is replaced
        try:
            self.tmp.rmdir()
        except OSError as e:
            log.warning("cannot remove %s: %s", self.tmp, e)

    def abort(self) -> None:
        """Undo prepare(): nothing of the running datapath changes."""
        from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

        self._close_fds()
        if self.dp is not None:
            self.dp.close()
            self.dp = None
        remove_pins(self.tmp)


def _table_for(_table: str, key: bytes, entry: bytes) -> str:
    """Where a (converted) entry belongs, by the datapath's rule (ct_move)."""
    e = abi.CtEntry.from_buffer_copy(entry)
    k = abi.CtKey.from_buffer_copy(key)
    closing = k.proto == 6 and abi.const("CT_TCP_FIN_WAIT") <= e.state <= abi.const("CT_TCP_CLOSE")
    return "ct_assured" if e.flags & abi.const("CT_F_ASSURED") and not closing else "ct_new"
