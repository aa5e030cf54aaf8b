"""Compile, load, pin, attach and detach the datapath.

`Datapath` is a context manager: whatever it attached is detached on exit,
whatever the exit (BCC's own cleanup detaches neither XDP nor TC). Maps are
pinned in the pin directory; a tracker started again on the same directory
reuses them, after checking their layout version and sizes.

Longer than 500 lines because Datapath is one object that the daemon's
services share for the life of the agent: loading, attaching and adopting
hooks, and carrying them through a rebuild (take_over) belong together;
what each map holds lives in its own module (sizing, fastpath, sweepprog).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ctbpf import abi, tunables
from ctbpf.datapath import bpfsys, configmap, pincheck, sizing
from ctbpf.datapath.configmap import read_config, write_config
from ctbpf.datapath.features import captured_stderr
from ctbpf.datapath.pins import PIN_NAMES, PROG_SWEEP, display, is_bpffs
from ctbpf.datapath.progs import (STAGE_FUNCS, SWEEP_FUNC, TC_EGRESS_FUNC, TC_EGRESS_PARENT,
                                  TC_PRIO, TC_STAGE_NAMES, XDP_FUNC)
from ctbpf.datapath.sweepprog import DueResult, due_runner, sweep_due_keys, sweep_keys
from ctbpf.errors import CtbpfError, UsageError
from ctbpf.paths import BPF_DIR

log = logging.getLogger(__name__)

MAIN_SOURCE = BPF_DIR / "ctbpf.c"

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

MIN_ENTRIES, MAX_ENTRIES = 16, 1 << 26

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def program_source(path: Path = MAIN_SOURCE) -> str:
    """The program as one text: BCC rewrites map calls (`ct_new.lookup()`)
    only in the main file, so our own headers are inlined into it."""
    out = []
    for line in path.read_text().splitlines(keepends=True):
        m = _INCLUDE.match(line)
        out.append(program_source(path.parent / m.group(1)) if m else line)
    return "".join(out)


def _attach_error(exc: Exception, said: str) -> str:
    """Why an attach failed, in a few words: the errno's text BCC printed
    ("bpf: Attaching prog to lo: Operation not supported"), else its
    exception's first line."""
    for line in said.splitlines():
        if ":" in line:
            return line.rsplit(":", 1)[1].strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _import_bcc():
    try:
        import bcc  # noqa: PLC0415 - optional at import time of the package
    except ImportError as e:
        raise CtbpfError("BCC is missing: install Debian's python3-bpfcc and use a venv made "
                         "with --system-site-packages (make setup does both)") from e
    return bcc


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CtbpfError(f"{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")


def ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise UsageError(f"unknown interface {name!r} in this network namespace") from None


def link_kind(index: int) -> str:
    """The link's kind (veth, bridge, vlan, ...), "" for a plain device."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    try:
        with IPRoute() as ipr:
            (link,) = ipr.link("get", index=index)
        info = link.get_attr("IFLA_LINKINFO")
        return (info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
    except Exception:  # noqa: BLE001 - unknown kind: the NIC order is right
        return ""


def pin_program(fd: int, pin_dir: Path, name: str) -> None:
    """Pin a program, replacing an older pin atomically (rename on bpffs)."""
    tmp = pin_dir / f"{name}_new"  # bpffs refuses names with a dot
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    bpfsys.obj_pin(fd, str(tmp))
    os.rename(tmp, pin_dir / name)


@dataclass
class _Attachment:
    ifname: str
    index: int
    kind: str            # "xdp" or "tc-egress"
    flags: int = 0
    created_clsact: bool = False

    @property
    def native(self) -> bool:
        return self.kind == "xdp" and bool(self.flags & XDP_MODES["native"])


@dataclass
class Datapath:
    """The loaded programs and their pinned maps."""

    pin_dir: Path
    max_entries: int = 65536      # conntrack_max: both tables together
    # ct_new's part of max (ctbpf/datapath/sizing.py); None: its default.
    new_max: int | None = None
    # ct_assured's size now (it grows up to max - new_max); None: what is
    # pinned, else sized for an empty table.
    assured: int | None = None
    # ct_acct's size now (it grows up to what both tables hold); None: what
    # is pinned, else its first size.
    acct: int | None = None
    # Bytes of the expiry index's ring (a power of two, at least a page);
    # None sizes it from the table. Tests make it small.
    timers_bytes: int | None = None
    _bpf: object = None
    _funcs: dict = field(default_factory=dict)
    _attached: list = field(default_factory=list)
    reused: bool = False
    _on_event: object = None
    _due_runner: object = None
    # Map ids of flow tables whose ctbpf programs this datapath may replace
    # where it attaches (adoption, see ctbpf/agent/adoption.py): its own pinned
    # tables, plus old ones it was rebuilt from or discarded.
    adoptable: set = field(default_factory=set)
    # (interface, kind, replaced program id) for each hook taken over.
    adopted: list = field(default_factory=list)
    # Interfaces the fast path forwards between (bpf/fastpath.h), by name.
    fast_ifaces: list = field(default_factory=list)
    _fast_flags: dict = field(default_factory=dict)

    def load(self, values: dict[str, int] | None = None) -> "Datapath":
        """Compile and load the programs; create or reuse the pinned maps.
        Tunables are written when the maps are new, or when values are given."""
        bcc = _import_bcc()
        if not MIN_ENTRIES <= self.max_entries <= MAX_ENTRIES:
            raise UsageError(f"max: {self.max_entries} is out of range "
                             f"[{MIN_ENTRIES}, {MAX_ENTRIES}]")
        where = self.pin_dir if self.pin_dir.exists() else self.pin_dir.parent
        if not is_bpffs(where):
            raise CtbpfError(f"pin dir {display(self.pin_dir)} is not on a BPF filesystem "
                             f"(mount one with `mount -t bpf bpf /sys/fs/bpf`)")
        try:
            self.pin_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise CtbpfError(f"pin dir {display(self.pin_dir)}: {e.strerror}") from None
        try:
            if self.assured is None:    # pinned ones keep the size they grew to
                self.assured = pincheck.pinned_size(self.pin_dir, "ct_assured")
            if self.acct is None:
                self.acct = pincheck.pinned_size(self.pin_dir, "ct_acct")
            sz = sizing.sizes(self.max_entries, self.new_max, self.assured, acct=self.acct)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.new_max, self.assured, self.acct = sz.new_max, sz.assured, sz.acct
        self.reused = pincheck.check_pinned(self.pin_dir, sz)
        timers = sz.timers_bytes if self.timers_bytes is None else int(self.timers_bytes)
        cflags = [f'-DCT_PIN_DIR="{self.pin_dir}"', f"-DCT_ASSURED_MAX={sz.assured}",
                  f"-DCT_NEW_MAX={sz.new_max}", f"-DCT_ACCT_MAX={sz.acct}",
                  f"-DCT_TIMERS_BYTES={timers}",
                  f"-DCT_EVENTS_BYTES={sz.events_bytes}", "-Wno-unused-function"]
        try:
            self._bpf = bcc.BPF(text=program_source().encode(), cflags=cflags)
            self._load_hook("xdp")
            self._funcs[SWEEP_FUNC] = self._bpf.load_func(SWEEP_FUNC.encode(), bcc.BPF.XDP)
        except Exception as e:  # BCC raises bare Exception for every failure
            raise CtbpfError(f"cannot load the BPF datapath: {str(e).splitlines()[0]} "
                             f"(needs root, a kernel with BPF and BTF, and kernel headers; "
                             f"`make setup` installs them)") from None
        pin_program(self._funcs[SWEEP_FUNC].fd, self.pin_dir, PROG_SWEEP)
        if not self.reused or values is not None:
            current = tunables.defaults()
            if self.reused:
                current = tunables.from_config(read_config(self.pin_dir))
            current.update(values or {})
            write_config(self.pin_dir, current)
        configmap.set_max(self.pin_dir, self.max_entries)
        from ctbpf.datapath.rawmaps import table_ids  # noqa: PLC0415

        self.adoptable |= table_ids(self.pin_dir)
        log.info("datapath loaded, maps %s in %s", "reused" if self.reused else "pinned",
                 display(self.pin_dir))
        return self

    def _load_hook(self, hook: str) -> None:
        """Load one hook's programs ("xdp" or "tc": the entry program and
        its stages) and put the stages in their slots, before the entry
        program can run anywhere: with a slot empty it passes the flows'
        frames untracked (counted). The verifier takes seconds over each
        hook's programs, so TC's are loaded only when first asked for."""
        bcc = _import_bcc()
        kind = bcc.BPF.XDP if hook == "xdp" else bcc.BPF.SCHED_CLS
        base = abi.const("CT_JUMP_BASE")
        for name, table, stage in STAGE_FUNCS:
            if table == f"ct_jump_{hook}":
                self._funcs[name] = self._bpf.load_func(name.encode(), kind)
                self._bpf[table.encode()][ctypes.c_int(base + stage)] = \
                    ctypes.c_int(self._funcs[name].fd)
        entry = XDP_FUNC if hook == "xdp" else TC_EGRESS_FUNC
        self._funcs[entry] = self._bpf.load_func(entry.encode(), kind)

    def prog_fd(self, name: str = XDP_FUNC) -> int:
        if name not in self._funcs and name in (TC_EGRESS_FUNC, *TC_STAGE_NAMES):
            try:
                self._load_hook("tc")
            except Exception as e:  # BCC raises bare Exception for every failure
                raise CtbpfError(f"cannot load the TC egress programs: "
                                 f"{str(e).splitlines()[0]}") from None
        return self._funcs[name].fd

    def own_prog_ids(self) -> set[int]:
        """Ids of every program this datapath has loaded."""
        from ctbpf.datapath.progs import prog_id  # noqa: PLC0415

        return {prog_id(fn.fd) for fn in self._funcs.values()}

    def sweep(self, table_id: int, keys: bytes) -> int:
        """Delete the entries among these raw keys that are still expired,
        in the kernel (see bpf/sweep.h). Returns how many were deleted."""
        return sweep_keys(self.prog_fd(SWEEP_FUNC), table_id, keys)

    def sweep_due(self, keys, out: DueResult | None = None) -> DueResult:
        """Check keys the expiry index says are due (either table): delete
        the still-expired ones in the kernel, report the others' expiry."""
        if self._due_runner is None:
            self._due_runner = due_runner(self.prog_fd(SWEEP_FUNC))
        return sweep_due_keys(self.prog_fd(SWEEP_FUNC), keys, out, self._due_runner)

    def open_events(self, callback) -> None:
        """Call callback(abi.CtEvent) for each event poll_events() reads; a
        later call replaces the callback (BCC opens a ring buffer once)."""
        size = ctypes.sizeof(abi.CtEvent)
        first = self._on_event is None
        self._on_event = callback

        def on_event(_ctx, data, _size):
            self._on_event(abi.CtEvent.from_buffer_copy(ctypes.string_at(data, size)))

        if first:
            self._bpf[b"ct_events"].open_ring_buffer(on_event)

    def set_event_listeners(self, n: int) -> None:
        """How many clients the agent relays events to: with none the
        datapath writes no event (CT_CFG_EVENT_LISTENERS)."""
        configmap.set_event_listeners(self.pin_dir, n)

    def poll_events(self, timeout_ms: int = 0) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)

    def attach_xdp(self, ifname: str, mode: str = "auto") -> str:
        """Attach the XDP program; returns the mode used (native or generic).
        An interface already running ctbpf's XDP program on our tables (a
        daemon stopped with --keep-attached, or killed) is adopted: our
        program replaces it atomically, in the mode it runs in. Any other
        XDP program is refused."""
        from ctbpf.datapath.hookswap import xdp_hook  # noqa: PLC0415

        index = ifindex(ifname)
        if mode not in ("auto", *XDP_MODES):
            raise UsageError(f"xdp mode {mode!r}: use auto, native or generic")
        prog_id, attached_flags = xdp_hook(index)
        if prog_id:
            return self._adopt_xdp(ifname, index, prog_id, attached_flags, mode)
        modes = [mode]
        if mode == "auto":
            # veth runs native XDP in a NAPI loop of its own that turns GSO
            # and GRO off for the link: measured here, bulk TCP through a
            # veth router fell from about 21 to 4 Gbit/s, and it dropped a
            # flood no faster than nf_conntrack (generic: 1.5x). Containers'
            # and namespaces' veths get generic XDP; NICs get native.
            modes = ["generic", "native"] if link_kind(index) == "veth" else ["native", "generic"]
        last_error, said = "", [""]
        for i, m in enumerate(modes):
            flags = XDP_MODES[m]
            try:
                # BCC prints its own line for a refused mode; a refusal that
                # has a fallback is ours to say, once, below.
                with captured_stderr() as said:
                    self._bpf.attach_xdp(ifname, self._funcs[XDP_FUNC],
                                         flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
            except Exception as e:  # BCC: bare Exception
                last_error = _attach_error(e, said[0])
                log.info("XDP %s mode on %s failed: %s", m, ifname, last_error)
                if i + 1 < len(modes):
                    print(f"ctbpf: {m} XDP is not available on {ifname} ({last_error}): "
                          f"using {modes[i + 1]} mode", file=sys.stderr, flush=True)
                continue
            self._attached.append(_Attachment(ifname, index, "xdp", flags))
            log.info("XDP attached to %s in %s mode", ifname, m)
            return m
        if said[0].strip():   # a real failure: BCC's own words too
            sys.stderr.write(said[0])
        raise CtbpfError(f"cannot attach XDP to {ifname}: {last_error}")

    def _adopt_xdp(self, ifname: str, index: int, prog_id: int, flags: int, mode: str) -> str:
        from ctbpf.datapath import hookswap, progs  # noqa: PLC0415

        own = progs.prog_id(self.prog_fd(XDP_FUNC))
        if prog_id != own:
            info = progs.prog_info_by_id(prog_id)
            if info is None or info.name != progs.XDP_PROG_NAME:
                name = f" {info.name}" if info is not None and info.name else ""
                raise CtbpfError(f"{ifname} already carries an XDP program (id {prog_id}{name}); "
                                 f"detach it first (ip link set dev {ifname} xdp off)")
            if not progs.is_ctbpf(info, progs.XDP_PROG_NAME, self.adoptable):
                raise CtbpfError(f"{ifname} already carries a ctbpf XDP program (id {prog_id}) "
                                 f"that tracks into other maps than those in {display(self.pin_dir)} "
                                 f"(another tracker's?); stop that tracker, or detach it "
                                 f"(ip link set dev {ifname} xdp off)")
            if not flags:
                raise CtbpfError(f"{ifname}: the XDP program (id {prog_id}) runs in a mode "
                                 f"ctbpf cannot replace atomically; detach it first")
            hookswap.replace_xdp(index, flags, self.prog_fd(XDP_FUNC), prog_id)
            self.adopted.append((ifname, "xdp", prog_id))
            log.info("XDP on %s adopted: program %d replaced by %d", ifname, prog_id, own)
        used = hookswap.MODE_NAMES[flags]
        if mode not in ("auto", used):
            log.warning("%s: kept the %s mode of the running program (asked %s); a restart "
                        "without --keep-attached can change it", ifname, used, mode)
        self._attached.append(_Attachment(ifname, index, "xdp", flags))
        return used

    def _adopt_tc_egress(self, ifname: str, index: int, prog_id: int) -> None:
        """Take over the filter at our priority: ours already, or an earlier
        daemon's on our tables (replaced in place); anything else is refused."""
        from ctbpf.datapath import hookswap, progs  # noqa: PLC0415

        self.prog_fd(TC_EGRESS_FUNC)  # loads TC's programs on first use
        fn = self._funcs[TC_EGRESS_FUNC]
        own = progs.prog_id(fn.fd)
        if prog_id != own:
            info = progs.prog_info_by_id(prog_id)
            if not progs.is_ctbpf(info, progs.TC_PROG_NAME, self.adoptable):
                raise CtbpfError(f"{ifname}: the clsact egress filter at priority {TC_PRIO} "
                                 f"(program id {prog_id}) is not this tracker's; remove it "
                                 f"first (tc filter del dev {ifname} egress prio {TC_PRIO})")
            hookswap.replace_tc_egress(index, fn.fd, fn.name)
            self.adopted.append((ifname, "tc-egress", prog_id))
            log.info("TC egress on %s adopted: program %d replaced by %d", ifname, prog_id, own)
        self._attached.append(_Attachment(ifname, index, "tc-egress"))

    def attach_tc_egress(self, ifname: str) -> None:
        """Track what the host itself sends through ifname (TC clsact egress).
        Our filter left by an earlier daemon is adopted (replaced in place)."""
        from pyroute2 import IPRoute  # noqa: PLC0415
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        from ctbpf.datapath.hookswap import tc_egress_hook  # noqa: PLC0415

        index = ifindex(ifname)
        existing = tc_egress_hook(index)
        if existing:
            self._adopt_tc_egress(ifname, index, existing)
            return
        self.prog_fd(TC_EGRESS_FUNC)  # loads TC's programs on first use
        fn = self._funcs[TC_EGRESS_FUNC]
        created = False
        with IPRoute() as ipr:
            try:
                ipr.tc("add", "clsact", index)
                created = True
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise CtbpfError(f"cannot add clsact to {ifname}: {e}") from None
            try:
                ipr.tc("add-filter", "bpf", index, ":1", fd=fn.fd, name=fn.name,
                       parent=TC_EGRESS_PARENT, classid=1, direct_action=True, prio=TC_PRIO)
            except NetlinkError as e:
                if created:
                    ipr.tc("del", "clsact", index)
                raise CtbpfError(f"cannot attach TC egress to {ifname}: {e}") from None
        self._attached.append(_Attachment(ifname, index, "tc-egress", created_clsact=created))
        log.info("TC egress attached to %s", ifname)

    def set_fast_path_ifaces(self, names: list[str]) -> list[str]:
        """The interfaces the fast path may forward between (see
        ctbpf/datapath/fastpath.py); returns those native-mode ones cannot
        forward to, for the caller to say."""
        from ctbpf.datapath import fastpath  # noqa: PLC0415

        native = {a.ifname for a in self._attached if a.native}
        pairs = [(n, ifindex(n)) for n in names]
        try:
            self._fast_flags, no_xmit = fastpath.install(
                self._bpf, self.pin_dir, pairs, native,
                {n for n, index in pairs if link_kind(index) == "veth"})
        except fastpath.SlotsFull as e:
            raise UsageError(str(e)) from None
        self.fast_ifaces = list(names)
        return no_xmit

    def fast_path_changed(self) -> bool:
        """Whether what the fast path's interfaces can do changed since it
        was set (a veth's peer got or lost its XDP program or GRO)."""
        from ctbpf.datapath import fastpath  # noqa: PLC0415

        return fastpath.changed(self._fast_flags)

    def fast_path_on(self) -> bool:
        return configmap.fast_path_on(self.pin_dir)

    def forget_iface(self, ifname: str) -> None:
        """An interface that is gone: its attachments and its fast-path slot
        are dropped (the kernel detached our programs with it)."""
        from ctbpf.datapath import fastpath  # noqa: PLC0415

        gone = [a.index for a in self._attached if a.ifname == ifname]
        self._attached = [a for a in self._attached if a.ifname != ifname]
        if ifname in self.fast_ifaces:
            self.fast_ifaces.remove(ifname)
            for index in gone[:1]:
                self._fast_flags.pop(index, None)
                fastpath.uninstall(self._bpf, self.pin_dir, index)

    def attached_indexes(self) -> dict[str, int]:
        """Interface -> the index it had when XDP was attached there."""
        return {a.ifname: a.index for a in self._attached if a.kind == "xdp"}

    def attachments(self) -> list[tuple[str, str]]:
        return [(a.ifname, a.kind) for a in self._attached]

    def release(self) -> list[tuple[str, str]]:
        """Forget the attachments without detaching them: the programs keep
        running on the pinned maps after this process exits (`ctbpf run
        --keep-attached`); a later `ctbpf run` adopts them. Returns them."""
        kept = self.attachments()
        self._attached = []
        return kept

    def take_over(self, other: "Datapath") -> None:
        """Become `other` (a datapath rebuilt on new maps, its programs
        already swapped in where ours ran, see ctbpf/datapath/hookswap.py) while
        staying the same object, so that whoever holds this one (the daemon's
        services) goes on with the new programs and maps. The attachments
        are unchanged (the same hooks, new programs); the old programs and
        their maps are released; events left in the old ring buffer are
        read first."""
        if self._on_event is not None and self._bpf is not None:
            try:
                self.poll_events(0)
            except Exception as e:  # noqa: BLE001 - BCC: bare Exception
                log.warning("draining the old event ring buffer: %s", e)
        old = self._bpf
        # The runner holds the old sweep program's fd number, which closes
        # with the old programs below (and may be reused for anything).
        self._due_runner = None
        self._bpf, self._funcs = other._bpf, other._funcs
        other._bpf, other._funcs = None, {}
        self.pin_dir, self.max_entries = other.pin_dir, other.max_entries
        self.new_max, self.assured, self.acct = other.new_max, other.assured, other.acct
        self.adoptable |= other.adoptable
        if self.fast_ifaces:   # the new programs' own interface maps
            self.set_fast_path_ifaces(self.fast_ifaces)
        if old is not None:
            old.cleanup()
        callback, self._on_event = self._on_event, None
        if callback is not None:
            self.open_events(callback)

    def detach_all(self) -> None:
        """Detach everything this instance attached; never raises."""
        while self._attached:
            a = self._attached.pop()
            try:
                if a.kind == "xdp":
                    self._bpf.remove_xdp(a.ifname, a.flags)
                else:
                    self._detach_tc(a)
                log.info("%s detached from %s", a.kind, a.ifname)
            except Exception as e:  # noqa: BLE001 - the interface may be gone already
                log.warning("detaching %s from %s: %s", a.kind, a.ifname, e)

    @staticmethod
    def _detach_tc(a: _Attachment) -> None:
        from pyroute2 import IPRoute  # noqa: PLC0415

        with IPRoute() as ipr:
            if a.created_clsact:
                ipr.tc("del", "clsact", a.index)
            else:
                ipr.tc("del-filter", "bpf", a.index, ":1", parent=TC_EGRESS_PARENT, prio=TC_PRIO)

    def close(self) -> None:
        self.detach_all()
        self._due_runner = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_pins(pin_dir: Path) -> None:
    """Unpin our maps and programs and remove the directory if it is then empty."""
    for name in PIN_NAMES:
        try:
            (pin_dir / name).unlink()
        except FileNotFoundError:
            pass
    try:
        pin_dir.rmdir()
    except OSError:
        pass
