"""Starting on what is pinned: adopt a running datapath of the same layout
and size, rebuild it (another size, a registered migration), refuse (no
migration), or discard it loudly with --discard-state. It never starts
empty silently. See ctbpf.agent.rebuild for how a rebuild keeps tracking.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from ctbpf import abi
from ctbpf.agent.migrations import MIGRATIONS
from ctbpf.agent.rebuild import Rebuild
from ctbpf.agent.staging import START_SUFFIX, remove_stale_temp
from ctbpf.datapath import pins
from ctbpf.datapath.hookswap import find_hooks
from ctbpf.datapath.rawmaps import ENTRY_SIZE, KEY_SIZE, PinnedState, compatible, inspect
from ctbpf.errors import CtbpfError, UsageError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# discarding


def discard(pin_dir: Path, state: PinnedState, why: str) -> str:
    """Unpin the maps in pin_dir (programs still using them keep them alive
    until replaced) and return the line reporting what was dropped. The
    directory itself stays: the daemon's lock is on it."""
    for name in pins.PIN_NAMES:
        try:
            (pin_dir / name).unlink()
        except FileNotFoundError:
            pass
    line = (f"discarded the pinned state in {pins.display(pin_dir)} ({why}): "
            f"{state.total} entries dropped ({state.entries['ct_assured']} assured, "
            f"{state.entries['ct_new']} new; {sum(state.live.values())} of them live); "
            f"counters restart at zero")
    log.info("%s", line)
    return line


# --------------------------------------------------------------------------
# `ctbpf run`: what to do with what is pinned


def refusal(pin_dir: Path, state: PinnedState) -> str:
    where = pins.display(pin_dir)
    if state.version != abi.LAYOUT_VERSION:
        what = (f"have layout version {state.version}, this build uses {abi.LAYOUT_VERSION}, "
                f"and no migration from version {state.version} is registered")
    else:
        what = (f"hold {state.key_size}/{state.value_size}-byte keys/entries, this build "
                f"needs {KEY_SIZE}/{ENTRY_SIZE}")
    n = state.total
    return (f"the maps pinned in {where} {what}: their {n} entr{'y' if n == 1 else 'ies'} "
            f"cannot be kept. "
            f"Nothing was changed (a datapath still attached keeps running on them). Run the "
            f"ctbpf version that made them, or start with --discard-state to drop them and "
            f"start empty")


def open_datapath(pin_dir: Path, max_entries: int, *, max_given: bool = True,
                  values: dict[str, int] | None = None, discard_state: bool = False,
                  say: Callable[[str], None] | None = None, new_max: int | None = None):
    """A loaded Datapath on pin_dir for `ctbpf run`, keeping what is pinned:
    reused as is (same layout and size), resized (max given and different),
    migrated (another layout with a registered migration), or, only with
    discard_state, dropped with a report; otherwise CtbpfError. The caller
    holds the pin dir's lock. say() prints a line for the user. new_max is
    ct_new's part of max (None: keep the pinned one, or the default)."""
    from ctbpf.datapath.loader import Datapath, MAX_ENTRIES, MIN_ENTRIES  # noqa: PLC0415

    say = say or (lambda line: print(f"ctbpf: {line}", file=sys.stderr, flush=True))
    if not MIN_ENTRIES <= max_entries <= MAX_ENTRIES:
        raise UsageError(f"max: {max_entries} is out of range [{MIN_ENTRIES}, {MAX_ENTRIES}]")
    remove_stale_temp(pin_dir)
    state = inspect(pin_dir)
    if state is None:
        return start_fresh(pin_dir, max_entries, values, new_max)
    if not compatible(state):
        migration = MIGRATIONS.get(state.version)
        if migration is not None and state.version != abi.LAYOUT_VERSION:
            total = max_entries if max_given else state.max_entries
            rb = Rebuild(pin_dir, total, migration, values, new_size=new_max).prepare()
            dp = rb.commit()
            r = rb.report
            say(f"migrated {r.total} entries of the pinned maps from layout version "
                f"{state.version} to {abi.LAYOUT_VERSION} ({r.dropped_by_migration} dropped by "
                f"the migration, {r.dropped_expired} expired ones reclaimed)")
            return dp
        if not discard_state:
            raise CtbpfError(refusal(pin_dir, state))
        why = (f"layout version {state.version}, this build uses {abi.LAYOUT_VERSION}"
               if state.version != abi.LAYOUT_VERSION else "entry layout differs")
        say(discard(pin_dir, state, why))
        dp = Datapath(pin_dir, max_entries, new_max=new_max).load(values=values)
        dp.adoptable |= set(state.table_ids)   # programs still running on the old maps
        return dp
    if discard_state:
        say(f"the pinned maps in {pins.display(pin_dir)} are compatible: their "
            f"{state.total} entries are kept (--discard-state has nothing to do)")
    resized = max_given and max_entries != state.max_entries
    if resized or (new_max is not None and new_max != state.new_max):
        total = max_entries if max_given else state.max_entries
        keep = new_max if new_max is not None or resized else state.new_max
        rb = Rebuild(pin_dir, total, values=values, new_size=keep).prepare()
        dp = rb.commit()
        say(f"resized the tables from {state.max_entries} (new_max {state.new_max}) to {total} "
            f"(new_max {dp.new_max}) entries: {rb.report.total} entries kept")
        return dp
    dp = Datapath(pin_dir, state.max_entries, new_max=state.new_max).load(values=values)
    say(f"kept {state.total} entries of the pinned maps in {pins.display(pin_dir)}")
    return dp


def start_fresh(pin_dir: Path, max_entries: int, values: dict[str, int] | None = None,
                new_max: int | None = None):
    """A datapath on new maps that appear in pin_dir complete: loaded and
    pinned in a staging directory, its config written there, then moved in
    by rename with ct_config last. A reader that finds ct_config finds every
    other map, and never a config of layout version 0."""
    from ctbpf.datapath.loader import Datapath, remove_pins  # noqa: PLC0415

    staging = pin_dir.parent / f"{pin_dir.name}{START_SUFFIX}{os.getpid()}"
    remove_pins(staging)
    try:
        staging.mkdir()
    except OSError as e:
        raise CtbpfError(f"pin dir {pins.display(staging)}: {e.strerror}") from None
    dp = Datapath(staging, max_entries, new_max=new_max)
    try:
        dp.load(values=values)
        last = "ct_config"
        for name in [n for n in pins.PIN_NAMES if n != last] + [last]:
            if (staging / name).exists():
                os.rename(staging / name, pin_dir / name)
        dp.pin_dir = pin_dir
    except BaseException:
        dp.close()
        remove_pins(staging)
        for name in pins.PIN_NAMES:   # what was moved before the failure
            try:
                (pin_dir / name).unlink()
            except OSError:
                pass
        raise
    try:
        staging.rmdir()
    except OSError as e:
        log.warning("cannot remove %s: %s", pins.display(staging), e.strerror)
    return dp


def report_adoption(dp, say: Callable[[str], None] | None = None) -> None:
    """After attaching: tell what was adopted, and warn about our programs
    still running on these tables where this daemon did not attach (an
    earlier run's interfaces or --egress that this run does not have)."""
    say = say or (lambda line: print(f"ctbpf: {line}", file=sys.stderr, flush=True))
    if dp.adopted:
        taken = ", ".join(f"{'XDP' if kind == 'xdp' else 'TC egress'} on {ifname} (program {pid})"
                          for ifname, kind, pid in dp.adopted)
        say(f"adopted the running datapath: {taken} replaced atomically; tracking never stopped")
    mine = set(dp.attachments())
    try:
        others = [h for h in find_hooks(dp.adoptable) if (h.ifname, h.kind) not in mine]
    except (OSError, CtbpfError) as e:
        log.info("cannot look for other hooks: %s", e)
        return
    from ctbpf.datapath.progs import TC_PRIO  # noqa: PLC0415

    for h in others:
        how = (f"ip link set dev {h.ifname} xdp off" if h.kind == "xdp" else
               f"tc filter del dev {h.ifname} egress prio {TC_PRIO}")
        say(f"warning: {h} (program {h.prog_id}) still tracks into these maps from an earlier "
            f"run and is not managed by this daemon; add it to this run, or remove it: {how}")


def kept_message(kept: list[tuple[str, str]], pin_dir: Path) -> str:
    where = ", ".join(f"{'XDP' if kind == 'xdp' else 'TC egress'} on {ifname}"
                      for ifname, kind in kept) or "nothing was attached"
    return (f"stopped, datapath left running (--keep-attached): {where}; maps pinned in "
            f"{pins.display(pin_dir)}; the next `ctbpf run` adopts them")
