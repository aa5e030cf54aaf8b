"""Change conntrack_max (entries per table) on a running tracker without
losing an entry.

A BPF map's size is fixed when it is created, so a new size means new maps:
ctbpf/agent/rebuild.py's Rebuild loads a new datapath on maps of the new size
under a temporary pin directory, copies every entry, the counters and the
tunables, swaps the attached programs atomically, carries over what changed
during the swap and moves the new pins over the old ones. Tracking never
stops; the old maps are freed once nothing uses them.

Who does it: the process that holds the pin directory's lock. A daemon
(`ctbpf run`) holds it for its whole life, so `resize()` hands the request
to it (a file in its run directory, then SIGUSR1) and waits for the answer;
the daemon then goes on with the new maps, its services undisturbed. With
no daemon (stopped with --keep-attached, or killed), `resize()` does the
work itself.

`resize(pin_dir, new_max)` (or apply_limits(pin_dir, {"max": N}) with
`set`'s parsed pairs, `buckets` included) is the entry point for
`ctbpf set max=N`; `python -m ctbpf.agent.resize N [--pin-dir DIR]` does the same
from a shell.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from ctbpf.agent import adoption, pinlock, rebuild, runstatus
from ctbpf.datapath import pins, rawmaps, sizing
from ctbpf.errors import CtbpfError, UsageError

log = logging.getLogger(__name__)

REQUEST_GLOB = "resize-*.request"
#: Seconds `resize()` waits for a daemon to answer (it compiles a datapath).
ANSWER_TIMEOUT = 180.0
#: How often the daemon's service looks for requests without a signal.
POLL_INTERVAL = 1.0


class Refused(CtbpfError):
    """The resize was refused; nothing changed."""


def _summary(old_max: int, report: rebuild.Report) -> str:
    r = report
    line = (f"max: {old_max} -> {r.new_max} ({r.total} entries kept: "
            f"{r.copied.get('ct_assured', 0)} assured, {r.copied.get('ct_new', 0)} new")
    extra = []
    if r.reconciled or r.kept_new:
        extra.append(f"{r.reconciled} carried over from the swap window")
    if r.dropped_expired:
        extra.append(f"{r.dropped_expired} expired ones reclaimed")
    hooks = ", ".join(str(h) for h in r.hooks) or "no attached program"
    return line + (f"; {'; '.join(extra)}" if extra else "") + f"; swapped: {hooks}; " \
        f"{r.seconds:.1f} s)"


def check(pin_dir: Path, new_max: int) -> rawmaps.PinnedState:
    """What can be refused before any work: range, maps, live entries."""
    from ctbpf.datapath.loader import MAX_ENTRIES, MIN_ENTRIES  # noqa: PLC0415

    if not MIN_ENTRIES <= new_max <= MAX_ENTRIES:
        raise UsageError(f"max: {new_max} is out of range: allowed {MIN_ENTRIES} to {MAX_ENTRIES}")
    state = rawmaps.inspect(pin_dir)
    if state is None:
        raise CtbpfError(f"no ctbpf tables in {pins.display(pin_dir)}")
    if not rawmaps.compatible(state):
        raise CtbpfError(adoption.refusal(pin_dir, state))
    try:
        sz = sizing.sizes(new_max)
    except ValueError as e:
        raise UsageError(f"max: {e}") from None
    if state.live["ct_assured"] > sz.assured_max or state.live["ct_new"] > sz.new_max:
        raise Refused(f"max {new_max} (new_max {sz.new_max}) is smaller than the live entries "
                      f"({state.live['ct_assured']} assured, {state.live['ct_new']} new): "
                      f"refused, nothing changed; use at least "
                      f"{sizing.at_least(state.live['ct_assured'], state.live['ct_new'])}")
    return state


def rebuild_here(pin_dir: Path, new_max: int, datapath=None) -> str:
    """Do the resize in this process (the caller holds the lock). With a
    datapath (the daemon's), it takes over the new programs and maps."""
    state = check(pin_dir, new_max)
    if state.max_entries == new_max:
        return f"max: {new_max} (unchanged)"
    own = set()
    if datapath is not None:   # its loaded programs use the old tables too
        own = datapath.own_prog_ids()
    rb = rebuild.Rebuild(pin_dir, new_max, own_programs=own).prepare()
    new = rb.commit()
    if datapath is not None:
        datapath.take_over(new)
    else:
        new.release()
        new.close()
    line = _summary(state.max_entries, rb.report)
    log.info("%s", line)
    return line


def grow_here(pin_dir: Path, datapath, assured: int, acct: int | None = None) -> str:
    """ct_assured rebuilt `assured` entries large and ct_acct `acct` large
    (None: as it is), max and new_max as they are, in the daemon that holds
    the lock (ctbpf/agent/growth.py)."""
    before = (datapath.assured, datapath.acct)
    rb = rebuild.Rebuild(pin_dir, datapath.max_entries, new_size=datapath.new_max,
                         assured=assured, acct=datapath.acct if acct is None else acct,
                         own_programs=datapath.own_prog_ids()).prepare()
    datapath.take_over(rb.commit())
    grown = [f"{name} from {b} to {a} entries"
             for name, b, a in (("ct_assured", before[0], datapath.assured),
                                ("ct_acct", before[1], datapath.acct)) if a != b]
    line = (f"grown {', '.join(grown) or 'nothing'}, {rb.report.total} entries "
            f"kept in {rb.report.seconds:.1f} s")
    log.info("%s", line)
    return line


def resize(pin_dir: Path, new_max: int, timeout: float = ANSWER_TIMEOUT) -> list[str]:
    """Resize the tables pinned in pin_dir to new_max entries in all, keeping
    every entry and counter. Returns the lines to print; raises Refused (or
    UsageError) with one clear line when it cannot, changing nothing."""
    state = check(pin_dir, new_max)
    if state.max_entries == new_max:
        return [f"max: {new_max} (unchanged)"]
    lock = pinlock.PinLock(pin_dir)
    if lock.try_acquire():
        with lock:
            return [rebuild_here(pin_dir, new_max)]
    pid = runstatus.daemon_pid(pin_dir)
    if pid is None:
        raise CtbpfError(f"the maps in {pins.display(pin_dir)} are held by a process that is not "
                         f"this network namespace's daemon (another resize, or a daemon in "
                         f"another namespace): try again, or run this where that daemon runs")
    return [ask_daemon(pid, new_max, timeout)]


def apply_limits(pin_dir: Path, values: dict[str, int]) -> list[str]:
    """For `ctbpf set`: the table limits among already-checked NAME=VALUE
    pairs (`max`, or `buckets` meaning max = 8 x buckets unless max is given
    too, as the kernel's nf_conntrack_max) applied with resize(). Returns
    the lines to print; [] when neither is given."""
    from ctbpf.tunables import ENTRIES_PER_BUCKET  # noqa: PLC0415

    if "max" in values:
        wanted = values["max"]
    elif "buckets" in values:
        wanted = values["buckets"] * ENTRIES_PER_BUCKET
    else:
        return []
    return resize(pin_dir, wanted)


def ask_daemon(pid: int, new_max: int, timeout: float) -> str:
    from ctbpf.agent.runstatus import run_dir  # noqa: PLC0415

    where = run_dir()
    token = secrets.token_hex(6)
    request, answer = where / f"resize-{token}.request", where / f"resize-{token}.result"
    tmp = where / f".resize-{token}.tmp"
    tmp.write_text(json.dumps({"max": new_max, "pid": os.getpid()}))
    tmp.replace(request)
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        request.unlink(missing_ok=True)
        raise CtbpfError(f"the daemon (pid {pid}) is gone; try again") from None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if answer.exists():
                result = json.loads(answer.read_text())
                break
            time.sleep(0.05)
        else:
            raise CtbpfError(f"the daemon (pid {pid}) did not answer the resize within "
                             f"{timeout:g} s; it may still do it: check `ctbpf stats`")
    finally:
        request.unlink(missing_ok=True)
        answer.unlink(missing_ok=True)
    if not result.get("ok"):
        cls = UsageError if result.get("usage") else Refused
        raise cls(result.get("error", "the daemon refused the resize"))
    return result["line"]


class ResizeService:
    """Daemon service: resize requests (files in the run directory, SIGUSR1
    to wake up) are carried out in the daemon, which holds the lock and
    the datapath its other services use."""

    name = "resize"

    def __init__(self) -> None:
        self._daemon = None
        self._due = 0.0
        self._previous = None

    def start(self, daemon) -> None:
        self._daemon = daemon
        self._due = time.monotonic()
        self._previous = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, _signum, _frame) -> None:
        self._due = 0.0
        wakeup = getattr(self._daemon, "stop_event_wakeup", None)
        if wakeup is not None:
            wakeup.set()

    def due(self) -> float:
        return self._due

    def run_once(self, now: float) -> None:
        self._due = now + POLL_INTERVAL
        where = Path(self._daemon.run_dir)
        try:
            requests = sorted(where.glob(REQUEST_GLOB))[:16]
        except OSError:
            return
        for req in requests:
            self._serve(req)
        if requests:
            self._due = time.monotonic() + POLL_INTERVAL

    def _serve(self, req: Path) -> None:
        answer = req.with_suffix(".result")
        try:
            asked = json.loads(req.read_text())
            new_max, requester = int(asked["max"]), int(asked["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            req.unlink(missing_ok=True)
            return
        req.unlink(missing_ok=True)
        try:
            os.kill(requester, 0)
        except ProcessLookupError:   # nobody waits for it any more (a dead daemon's leftover)
            log.info("dropping a resize request of gone process %d", requester)
            return
        except PermissionError:
            pass
        d = self._daemon
        try:
            line = rebuild_here(d.pin_dir, new_max, datapath=d.datapath)
            result = {"ok": True, "line": line}
            if hasattr(d, "args"):
                d.args.max = new_max
            for hook in getattr(d, "reload_hooks", []):   # config.Reloader compares with it
                if hasattr(hook, "running_max"):
                    hook.running_max = new_max
            if hasattr(d, "write_status") and getattr(d, "status", None):
                d.write_status(max=new_max)
            print(f"ctbpf: {line}", file=sys.stderr, flush=True)
        except CtbpfError as e:
            result = {"ok": False, "error": str(e), "usage": isinstance(e, UsageError)}
            log.warning("resize to %d refused: %s", new_max, e)
        except OSError as e:
            result = {"ok": False, "error": f"resize failed: {e}"}
            log.error("resize to %d failed: %s", new_max, e, exc_info=True)
        tmp = answer.with_name("." + answer.name + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(answer)

    def stop(self) -> None:
        if self._previous is not None:
            # SIGUSR1's default action kills: a late request must not stop a
            # daemon while it detaches.
            keep = self._previous if self._previous != signal.SIG_DFL else signal.SIG_IGN
            signal.signal(signal.SIGUSR1, keep)
            self._previous = None


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python3 -m ctbpf.agent.resize",
                                 description="change conntrack_max of a running tracker, "
                                             "keeping every entry")
    ap.add_argument("max", type=int, help="new entries per table")
    ap.add_argument("--pin-dir", metavar="DIR")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="ctbpf: %(message)s")
    try:
        from ctbpf.agent import readiness  # noqa: PLC0415

        pin_dir = readiness.wait_ready(pins.resolve(args.pin_dir))
        for line in resize(pin_dir, args.max):
            print(line)
    except CtbpfError as e:
        print(f"ctbpf: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
