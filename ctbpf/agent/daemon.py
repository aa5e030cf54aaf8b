"""`ctbpf run`: load, attach, pin, then run the control plane in the
foreground until told to stop, and detach cleanly whatever stops it.

The control plane is a set of services (sweeper, event relay, ...), each a
small object with start(daemon), a due() time, run_once(now) and stop().
The daemon's loop runs whichever is due and sleeps until the next one; a
signal only sets a flag, so handlers never race the services.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ctbpf import tunables
from ctbpf.agent import adoption, configfile, pinlock, reloader
from ctbpf.agent.events import EventRelay
from ctbpf.agent.growth import GrowthService
from ctbpf.agent.linkwatch import LinkWatch
from ctbpf.agent.resize import ResizeService
from ctbpf.agent.runstatus import run_dir
from ctbpf.agent.sweeper import Sweeper
from ctbpf.datapath import pins, rawmaps
from ctbpf.datapath.loader import Datapath, ifindex, require_root
from ctbpf.errors import CtbpfError, UsageError

log = logging.getLogger(__name__)

class Service(Protocol):
    name: str

    def start(self, daemon: "Daemon") -> None: ...

    def due(self) -> float:
        """Monotonic time at which run_once wants to be called next."""

    def run_once(self, now: float) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Daemon:
    args: object
    pin_dir: Path
    datapath: Datapath | None = None
    services: list = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    reload_requested: threading.Event = field(default_factory=threading.Event)
    stop_event_wakeup: threading.Event = field(default_factory=threading.Event)
    reload_hooks: list = field(default_factory=list)   # callables run on SIGHUP
    status: dict = field(default_factory=dict)
    # set by the signal handler, which may run in the middle of write_status:
    # it must not change the dict that json.dumps is walking
    stopped_by: str = ""
    features: object = None   # features.KernelFeatures, probed once at start
    started: list = field(default_factory=list)   # services started, in order

    @property
    def run_dir(self) -> Path:
        return run_dir()

    def add_service(self, service: Service) -> None:
        self.services.append(service)

    def write_status(self, **fields) -> None:
        """daemon.json: what other ctbpf commands need to find this daemon."""
        self.status.update(fields)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "daemon.json.tmp"
        tmp.write_text(json.dumps(dict(self.status), indent=1))
        tmp.replace(self.run_dir / "daemon.json")

    def _on_signal(self, signum, _frame) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested.set()
        else:
            self.stopped_by = signal.Signals(signum).name
            self.stop_event.set()
        self.stop_event_wakeup.set()

    def loop(self) -> None:
        while not self.stop_event.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                for hook in self.reload_hooks:
                    try:
                        hook()
                    except CtbpfError as e:  # a bad reload keeps what runs
                        print(f"ctbpf: reload refused: {e}", file=sys.stderr, flush=True)
            now = time.monotonic()
            for s in self.services:
                if self.stop_event.is_set():
                    break   # stopping: no service starts work on what is about to close
                if s.due() <= now:
                    s.run_once(now)
            next_due = min((s.due() for s in self.services), default=now + 1.0)
            self.stop_event_wakeup.wait(max(0.0, min(next_due - time.monotonic(), 1.0)))
            self.stop_event_wakeup.clear()


def _check_ifaces(names: list[str]) -> None:
    for name in names:  # fail before loading anything
        ifindex(name)
    if len(set(names)) != len(names):
        raise UsageError("an interface is given twice with --iface")


def _check_sizes(args) -> int | None:
    """--max, or 8 x --buckets, checked against the table limits with the
    option the user gave named in the message; None when neither is given."""
    from ctbpf.datapath.loader import MAX_ENTRIES, MIN_ENTRIES  # noqa: PLC0415

    if args.max is not None:
        if not MIN_ENTRIES <= args.max <= MAX_ENTRIES:
            raise UsageError(f"--max {args.max} is out of range [{MIN_ENTRIES}, {MAX_ENTRIES}]")
        return args.max
    buckets = getattr(args, "buckets", None)
    if buckets is None:
        return None
    lo = -(-MIN_ENTRIES // tunables.ENTRIES_PER_BUCKET)
    hi = MAX_ENTRIES // tunables.ENTRIES_PER_BUCKET
    if not lo <= buckets <= hi:
        raise UsageError(f"--buckets {buckets} is out of range [{lo}, {hi}] "
                         f"(max is {tunables.ENTRIES_PER_BUCKET} x buckets)")
    return buckets * tunables.ENTRIES_PER_BUCKET   # the kernel's max = 8 x buckets


def _remove_failed_start(pin_dir: Path, lock, fresh: bool) -> None:
    """What a start that failed made: the pins of new maps, and the pin
    directory if this start created it. Pins that were there before (an
    earlier run's state) stay."""
    from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

    if fresh:
        remove_pins(pin_dir)
    if lock.created:
        try:
            pin_dir.rmdir()
        except OSError:
            pass


def _xdp_mode_for(dp, args) -> str:
    """--xdp-mode, except that with the fast path on, `auto` takes generic
    mode everywhere when a NIC among the interfaces cannot send XDP frames
    (no ndo_xdp_xmit): native programs could not forward to it, generic
    ones can. Said in one line."""
    from ctbpf.datapath import xdpfeatures  # noqa: PLC0415
    from ctbpf.datapath.loader import link_kind  # noqa: PLC0415

    if args.xdp_mode != "auto" or not dp.fast_path_on():
        return args.xdp_mode
    indexes = {n: ifindex(n) for n in args.iface}
    lacking = [n for n, i in indexes.items() if link_kind(i) != "veth"
               and not xdpfeatures.takes_xdp_frames(i)]
    if not lacking:
        return "auto"
    print(f"ctbpf: fast path: {', '.join(lacking)} cannot send XDP frames (no ndo_xdp_xmit): "
          f"using generic XDP on every interface, so that it forwards to them too",
          file=sys.stderr, flush=True)
    return "generic"


def _start(daemon: Daemon, dp, cfg, cli_mode) -> None:
    """From a loaded datapath to the ready line: policy, probes, attach,
    services, status file. Services started are listed in daemon.started,
    for a failed start to stop them."""
    args, pin_dir = daemon.args, daemon.pin_dir
    args.max = dp.max_entries
    for hook in daemon.reload_hooks:   # the size the tables really have
        if hasattr(hook, "running_max"):
            hook.running_max = dp.max_entries
    daemon.datapath = dp
    # The policy is in force before the first packet is judged.
    for line in reloader.apply_policy(pin_dir, cfg, cli_mode):
        # stderr: stdout's first line is the ready line scripts wait for.
        print(f"ctbpf: {line}", file=sys.stderr, flush=True)
    # What this kernel refuses, found out once (ctbpf/datapath/features.py).
    from ctbpf.datapath.features import KernelFeatures  # noqa: PLC0415

    serving = any(s.name == "metrics" for s in daemon.services)
    daemon.features = KernelFeatures(with_iterator=serving)
    print(f"ctbpf: {daemon.features.line()}", file=sys.stderr, flush=True)
    for service in daemon.services:
        if service.name == "sweeper" and not daemon.features.ring_mmap.ok:
            service.use_index = False
    modes, xdp_mode = [], _xdp_mode_for(dp, args)
    for name in args.iface:
        modes.append(f"{name} ({dp.attach_xdp(name, xdp_mode)})")
        if args.egress:
            dp.attach_tc_egress(name)
    no_xmit = dp.set_fast_path_ifaces(args.iface)
    if dp.fast_path_on():
        print(f"ctbpf: fast path on: ESTABLISHED, ASSURED flows are forwarded at XDP between "
              f"{', '.join(args.iface)}, skipping the kernel's forward hooks",
              file=sys.stderr, flush=True)
        if no_xmit:
            print(f"ctbpf: fast path: {', '.join(no_xmit)} cannot send XDP frames (no "
                  f"ndo_xdp_xmit; a veth needs GRO or an XDP program on its peer): what "
                  f"native XDP would forward there goes up the stack", file=sys.stderr, flush=True)
    adoption.report_adoption(dp)
    for service in daemon.services:
        service.start(daemon)
        daemon.started.append(service)
    daemon.write_status(pid=os.getpid(), pin_dir=str(pin_dir), ifaces=args.iface,
                        egress=bool(args.egress), started=time.time(),
                        features=daemon.features.status(), **reloader.status_fields(cfg))
    print(f"ctbpf: tracking on {', '.join(modes)}{' with egress' if args.egress else ''}; "
          f"maps in {pins.display(pin_dir)}", flush=True)


def _serve(daemon: Daemon, dp, args):
    """The loop until a signal stops it; then every service is stopped
    before anything they use is closed. Returns what --keep-attached left
    attached, or None."""
    kept = None
    try:
        daemon.loop()
    finally:
        for service in reversed(daemon.services):
            try:
                service.stop()
            except Exception as e:  # noqa: BLE001 - the others must stop too
                log.warning("stopping %s: %s", service.name, e)
        try:
            (daemon.run_dir / "daemon.json").unlink()
        except OSError:
            pass
        try:
            daemon.run_dir.rmdir()   # only when nothing else is left in it
        except OSError:
            pass
        if getattr(args, "keep_attached", False):
            kept = dp.release()   # programs stay attached, maps pinned
    log.info("%s: %s", daemon.stopped_by or "stop",
             "leaving the datapath attached" if kept is not None else "detaching")
    return kept


def run(args) -> int:
    require_root("ctbpf run")
    _check_ifaces(args.iface)
    # The config file (ctbpf/agent/configfile.py) is checked before anything is loaded.
    cfg_path = getattr(args, "config", None)
    cfg = configfile.load_file(os.path.abspath(cfg_path)) if cfg_path else None
    cli_max = _check_sizes(args)
    args.max = configfile.effective_max(cli_max, cfg)
    # Without an explicit size, a restart keeps the pinned tables' size.
    max_given = cli_max is not None or (cfg is not None and cfg.effective_max() is not None)
    pin_dir = pins.resolve(args.pin_dir, mount=True)
    daemon = Daemon(args, pin_dir)
    # Expired entries reclaimed in batches, DESTROY reported (ctbpf/agent/sweeper.py).
    daemon.add_service(Sweeper(getattr(args, "sweep_min_interval", 1.0),
                               getattr(args, "sweep_max_interval", 30.0),
                               walk_interval=getattr(args, "sweep_walk_interval", 600.0)))
    # NEW/UPDATE/DESTROY from the ring buffer to `ctbpf events` clients (ctbpf/agent/events.py).
    daemon.add_service(EventRelay())
    # /metrics, read from the maps at scrape time (ctbpf/agent/metrics.py).
    metrics_addr = getattr(args, "metrics_addr", "none")
    if metrics_addr and metrics_addr != "none":
        try:
            from ctbpf.agent.metrics import MetricsService  # noqa: PLC0415 - only when serving
        except ImportError:
            raise CtbpfError("prometheus-client is missing: `make setup` installs it, or run "
                             "with --metrics-addr none") from None
        daemon.add_service(MetricsService(metrics_addr))
    # `ctbpf set max=N` asks the daemon to rebuild its tables (ctbpf/agent/resize.py).
    daemon.add_service(ResizeService())
    # ct_assured made small and grown with the flows it holds (ctbpf/agent/growth.py).
    daemon.add_service(GrowthService())
    # An attached interface that disappears is let go of, with one line.
    daemon.add_service(LinkWatch())
    cli_mode = getattr(args, "mode", None)
    if cfg is not None:
        daemon.reload_hooks.append(reloader.Reloader(daemon, cfg.path, cli_max, args.max,
                                                   cli_mode))

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, daemon._on_signal) for s in handled}
    kept = None   # with --keep-attached: what stays attached after we exit
    try:
        values = cfg.datapath_values() if cfg is not None else None
        if getattr(args, "fast_path", None) is not None:   # the command line wins
            values = dict(values or {}, fast_path=int(args.fast_path))
        # One daemon per pin dir; what is pinned is kept, resized, migrated
        # or (--discard-state) dropped loudly (ctbpf/agent/adoption.py).
        with pinlock.lock_for_daemon(pin_dir) as lock:
            fresh = rawmaps.inspect(pin_dir) is None
            try:
                dp = adoption.open_datapath(pin_dir, args.max, max_given=max_given, values=values,
                                           discard_state=getattr(args, "discard_state", False),
                                           new_max=getattr(args, "new_max", None))
            except BaseException:
                _remove_failed_start(pin_dir, lock, fresh)
                raise
            with dp:
                try:
                    _start(daemon, dp, cfg, cli_mode)
                except BaseException:
                    for service in reversed(daemon.started):
                        service.stop()
                    dp.close()
                    _remove_failed_start(pin_dir, lock, fresh)
                    raise
                kept = _serve(daemon, dp, args)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if daemon.features is not None:
            daemon.features.close()
    if kept is not None:
        print(f"ctbpf: {adoption.kept_message(kept, pin_dir)}", file=sys.stderr, flush=True)
    else:
        print("ctbpf: detached", file=sys.stderr, flush=True)
    return 0
