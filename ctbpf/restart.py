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
import fcntl
import json
import logging
import os
import re
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import abi, bpfsys, pins
from .errors import CtbpfError, UsageError
from .loader import SWEEP_FUNC

log = logging.getLogger(__name__)

TABLES = ("ct_new", "ct_assured")
KEY_SIZE = ctypes.sizeof(abi.CtKey)
ENTRY_SIZE = ctypes.sizeof(abi.CtEntry)
CFG_SIZE = ctypes.sizeof(abi.CtConfig)
STATS_SIZE = ctypes.sizeof(abi.CtCounters)
VERSION_SLOT = abi.const("CT_CFG_LAYOUT_VERSION")
STAT_SWEPT = abi.const("CT_STAT_SWEPT")
STAT_DELETE = abi.const("CT_STAT_DELETE")
EXPIRES_OFFSET = abi.CtEntry.expires_ns.offset

# Program names as the kernel keeps them (BPF_OBJ_NAME_LEN - 1 characters).
XDP_PROG_NAME = "ctbpf_xdp"
TC_PROG_NAME = "ctbpf_tc_egress"[:15]

# How long the old programs may still be running on a CPU after a swap: an
# XDP or TC program runs inside one softirq; this is generous next to it.
SWAP_GRACE_S = 0.05

# --------------------------------------------------------------------------
# programs: bpf(2)

BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_UPDATE_BATCH = 26


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to the fields we read (the kernel fills at
    most info_len bytes)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    map_ids: tuple[int, ...]


def prog_fd_by_id(prog_id: int) -> int:
    return bpfsys._bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id), f"open program id {prog_id}")


def prog_info(fd: int) -> ProgInfo:
    """A program's id, name and the ids of the maps it uses."""
    ids = (ctypes.c_uint32 * 64)()
    info = _ProgInfo(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
    attr = bpfsys._InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpfsys._bpf(bpfsys.BPF_OBJ_GET_INFO_BY_FD, attr, "program info")
    n = min(info.nr_map_ids, len(ids))
    return ProgInfo(info.id, info.name.decode(errors="replace"), tuple(ids[:n]))


def prog_info_by_id(prog_id: int) -> ProgInfo | None:
    """None when the program is gone (or not ours to open)."""
    try:
        fd = prog_fd_by_id(prog_id)
    except bpfsys.BpfError:
        return None
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def prog_id(fd: int) -> int:
    return prog_info(fd).id


def programs_using(maps: set[int], limit: int = 100_000) -> list[ProgInfo]:
    """Every loaded program (system-wide, any network namespace) that uses
    one of these maps."""
    out, start = [], 0
    for _ in range(limit):
        attr = _IdAttr(id=start)
        try:
            bpfsys._bpf(BPF_PROG_GET_NEXT_ID, attr, "next program id")
        except bpfsys.BpfError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        start = attr.next_id
        info = prog_info_by_id(start)
        if info is not None and maps & set(info.map_ids):
            out.append(info)
    return out


def is_ctbpf(info: ProgInfo | None, name: str, table_ids: set[int]) -> bool:
    """True for one of our programs tracking into one of these tables."""
    return info is not None and info.name == name and bool(table_ids & set(info.map_ids))


# --------------------------------------------------------------------------
# maps


def open_pinned(pin_dir: Path, name: str) -> int:
    return bpfsys.obj_get(str(pin_dir / name))


def pinned_info(pin_dir: Path, name: str) -> bpfsys.MapInfo:
    fd = open_pinned(pin_dir, name)
    try:
        return bpfsys.map_info(fd)
    finally:
        os.close(fd)


def table_ids(pin_dir: Path) -> set[int]:
    """Map ids of the two flow tables pinned in pin_dir (empty if none)."""
    ids = set()
    for name in TABLES:
        try:
            ids.add(pinned_info(pin_dir, name).id)
        except (bpfsys.BpfError, FileNotFoundError):
            pass
    return ids


def update_batch(fd: int, keys: bytes, values: bytes, key_size: int, value_size: int,
                 flags: int = bpfsys.BPF_ANY) -> int:
    """Write many entries in one call; returns how many were written (a
    failure stops at the first entry that failed: E2BIG for a full hash)."""
    count = len(keys) // key_size
    if count == 0:
        return 0
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values))
    attr = bpfsys._BatchAttr(keys=ctypes.addressof(kbuf), values=ctypes.addressof(vbuf),
                             count=count, map_fd=fd, elem_flags=flags)
    try:
        bpfsys._bpf(BPF_MAP_UPDATE_BATCH, attr, "batch update")
    except bpfsys.BpfError as e:
        log.info("batch update stopped after %d of %d: %s", attr.count, count, e)
    return attr.count


def read_table(fd: int) -> dict[bytes, bytes]:
    """A whole table as {raw key: raw entry}."""
    info = bpfsys.map_info(fd)
    keys, values, count = bpfsys.lookup_batch(fd, info.key_size, info.value_size,
                                              info.max_entries)
    ks, vs = info.key_size, info.value_size
    return {keys[i * ks:(i + 1) * ks]: values[i * vs:(i + 1) * vs] for i in range(count)}


def read_tables(fds: dict[str, int]) -> dict[bytes, tuple[str, bytes]]:
    """Both tables as {raw key: (table, raw entry)}. A key met in both (a
    move between tables caught half way) keeps its ct_assured copy."""
    out: dict[bytes, tuple[str, bytes]] = {}
    for name in TABLES:  # ct_assured last: it wins
        for k, v in read_table(fds[name]).items():
            out[k] = (name, v)
    return out


def expires_ns(entry: bytes) -> int:
    return int.from_bytes(entry[EXPIRES_OFFSET:EXPIRES_OFFSET + 8], sys.byteorder)


def read_percpu(fd: int, value_size: int) -> bytearray:
    """The one element of a per-CPU array, every CPU's copy back to back."""
    stride = (value_size + 7) & ~7
    buf = ctypes.create_string_buffer(stride * bpfsys.possible_cpus())
    bpfsys.lookup(fd, ctypes.c_uint32(0), buf)
    return bytearray(buf.raw)


def write_percpu(fd: int, raw: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(raw), len(raw))
    bpfsys.update(fd, ctypes.c_uint32(0), buf)


def _u64s(raw: bytes | bytearray) -> memoryview:
    return memoryview(raw).cast("Q")


# --------------------------------------------------------------------------
# hooks: where our programs are attached in this network namespace

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
MODE_NAMES = {XDP_FLAGS_DRV_MODE: "native", XDP_FLAGS_SKB_MODE: "generic"}


@dataclass(frozen=True)
class Hook:
    """One attached program: XDP on an interface, or our TC egress filter."""

    ifname: str
    index: int
    kind: str          # "xdp" or "tc-egress"
    prog_id: int
    flags: int = 0     # XDP: the mode it is attached in (XDP_FLAGS_DRV_MODE or _SKB_MODE)

    def __str__(self) -> str:
        return f"{'XDP' if self.kind == 'xdp' else 'TC egress'} on {self.ifname}"


def xdp_hook(index: int) -> tuple[int, int]:
    """(program id, mode flag) of the XDP program on an interface; (0, 0) if none."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    with IPRoute() as ipr:
        link = ipr.get_links(index)[0]
    xdp = link.get_attr("IFLA_XDP")
    return _xdp_of(xdp)


def _xdp_of(xdp) -> tuple[int, int]:
    if not xdp:
        return 0, 0
    drv = xdp.get_attr("IFLA_XDP_DRV_PROG_ID") or 0
    if drv:
        return drv, XDP_FLAGS_DRV_MODE
    skb = xdp.get_attr("IFLA_XDP_SKB_PROG_ID") or 0
    if skb:
        return skb, XDP_FLAGS_SKB_MODE
    prog = xdp.get_attr("IFLA_XDP_PROG_ID") or 0   # offloaded or unknown mode
    return prog, 0


def replace_xdp(index: int, mode_flags: int, new_fd: int, old_prog_id: int) -> None:
    """Swap the XDP program of an interface atomically, only if it is still
    old_prog_id (netlink compare-and-swap)."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    old_fd = prog_fd_by_id(old_prog_id)
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=index, xdp={"attrs": [
                ("IFLA_XDP_FD", new_fd),
                ("IFLA_XDP_FLAGS", mode_flags | XDP_FLAGS_REPLACE),
                ("IFLA_XDP_EXPECTED_FD", old_fd)]})
    except NetlinkError as e:
        if e.code == errno.EEXIST:
            raise CtbpfError(f"the XDP program on interface {index} changed while it was being "
                             f"replaced (expected id {old_prog_id})") from None
        raise CtbpfError(f"cannot replace the XDP program on interface {index}: {e}") from None
    finally:
        os.close(old_fd)


# rtnetlink, for the one thing pyroute2 0.9 does not decode: a TC bpf
# filter's program id (TCA_BPF_ID).
_RTM_NEWTFILTER, _RTM_GETTFILTER = 44, 46
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_TCA_KIND, _TCA_OPTIONS = 1, 2
_TCA_BPF_NAME, _TCA_BPF_ID = 7, 11


def _attrs(buf: bytes, start: int, end: int):
    while start + 4 <= end:
        length, kind = struct.unpack_from("HH", buf, start)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[start + 4:start + length]
        start += (length + 3) & ~3


def tc_filters(index: int, parent: int) -> list[dict]:
    """The filters on one qdisc parent: [{prio, handle, kind, name, prog_id}]."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.settimeout(5.0)
        tcm = struct.pack("BxxxiIII", socket.AF_UNSPEC, index, 0, parent, 0)
        hdr = struct.pack("IHHII", 16 + len(tcm), _RTM_GETTFILTER, _NLM_F_REQUEST | _NLM_F_DUMP,
                          1, 0)
        sock.send(hdr + tcm)
        out = []
        for _ in range(10_000):  # bounded: a dump ends with NLMSG_DONE
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, _seq, _pid = struct.unpack_from("IHHII", data, off)
                if length < 16:
                    return out
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("i", data, off + 16)[0]
                    if code:
                        raise OSError(code, f"tc filter dump: {os.strerror(code)}")
                    return out
                if kind == _RTM_NEWTFILTER:
                    _fam, _ifi, handle, _parent, info = struct.unpack_from("BxxxiIII", data, off + 16)
                    f = {"prio": info >> 16, "handle": handle, "kind": "", "name": "", "prog_id": 0}
                    for t, val in _attrs(data, off + 36, off + length):
                        if t == _TCA_KIND:
                            f["kind"] = val.rstrip(b"\0").decode(errors="replace")
                        elif t == _TCA_OPTIONS:
                            for t2, v2 in _attrs(val, 0, len(val)):
                                if t2 == _TCA_BPF_ID:
                                    f["prog_id"] = struct.unpack_from("I", v2)[0]
                                elif t2 == _TCA_BPF_NAME:
                                    f["name"] = v2.rstrip(b"\0").decode(errors="replace")
                    out.append(f)
                off += (length + 3) & ~3
        return out
    finally:
        sock.close()


def tc_egress_hook(index: int) -> int:
    """Program id of the filter at our priority on clsact egress; 0 if none."""
    from .loader import TC_EGRESS_PARENT, TC_PRIO  # noqa: PLC0415

    try:
        filters = tc_filters(index, TC_EGRESS_PARENT)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):  # no clsact on this interface
            return 0
        raise
    for f in filters:
        if f["prio"] == TC_PRIO and f["kind"] == "bpf" and f["prog_id"]:
            return f["prog_id"]
    return 0


def replace_tc_egress(index: int, fd: int, name: str) -> None:
    """Swap the program of our clsact egress filter (same priority and
    handle: the kernel replaces the classifier in place)."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    from .loader import TC_EGRESS_PARENT, TC_PRIO  # noqa: PLC0415

    try:
        with IPRoute() as ipr:
            ipr.tc("replace-filter", "bpf", index, ":1", fd=fd, name=name,
                   parent=TC_EGRESS_PARENT, classid=1, direct_action=True, prio=TC_PRIO)
    except NetlinkError as e:
        raise CtbpfError(f"cannot replace the TC egress filter on interface {index}: {e}") from None


def find_hooks(tables: set[int]) -> list[Hook]:
    """Every hook of this network namespace whose program is ctbpf's and
    tracks into one of these tables."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    hooks: list[Hook] = []
    with IPRoute() as ipr:
        dump = ipr.get_links()
        clsact = {q["index"] for q in ipr.get_qdiscs() if q.get_attr("TCA_KIND") == "clsact"}
    links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in dump}
    xdp = {link["index"]: _xdp_of(link.get_attr("IFLA_XDP")) for link in dump}
    for index, (pid, mode) in sorted(xdp.items()):
        if pid and is_ctbpf(prog_info_by_id(pid), XDP_PROG_NAME, tables):
            hooks.append(Hook(links[index], index, "xdp", pid, mode))
    for index in sorted(clsact):
        pid = tc_egress_hook(index)
        if pid and is_ctbpf(prog_info_by_id(pid), TC_PROG_NAME, tables):
            hooks.append(Hook(links.get(index, str(index)), index, "tc-egress", pid))
    return hooks


def swap_hooks(hooks: list[Hook], dp) -> list[Hook]:
    """Replace each hook's program with dp's, atomically per hook; on a
    failure put back the ones already swapped and raise. Returns the hooks
    as they are now (with dp's program ids)."""
    from .loader import TC_EGRESS_FUNC, XDP_FUNC  # noqa: PLC0415

    done: list[tuple[Hook, Hook]] = []
    try:
        for h in hooks:
            if h.kind == "xdp":
                replace_xdp(h.index, h.flags, dp.prog_fd(XDP_FUNC), h.prog_id)
                new = Hook(h.ifname, h.index, h.kind, prog_id(dp.prog_fd(XDP_FUNC)), h.flags)
            else:
                replace_tc_egress(h.index, dp.prog_fd(TC_EGRESS_FUNC), TC_PROG_NAME)
                new = Hook(h.ifname, h.index, h.kind, prog_id(dp.prog_fd(TC_EGRESS_FUNC)))
            done.append((h, new))
            log.info("%s: program %d replaced by %d", h, h.prog_id, new.prog_id)
    except (CtbpfError, OSError) as e:
        for old, new in reversed(done):
            try:
                fd = prog_fd_by_id(old.prog_id)
            except bpfsys.BpfError:
                log.error("%s: cannot put program %d back: gone", old, old.prog_id)
                continue
            try:
                if old.kind == "xdp":
                    replace_xdp(old.index, old.flags, fd, new.prog_id)
                else:
                    replace_tc_egress(old.index, fd, TC_PROG_NAME)
            except (CtbpfError, OSError) as e2:
                log.error("%s: cannot put program %d back: %s", old, old.prog_id, e2)
            finally:
                os.close(fd)
        raise CtbpfError(f"swapping the datapath's programs failed, the old ones are back: "
                         f"{e}") from None
    return [new for _, new in done]


# --------------------------------------------------------------------------
# one daemon per pin dir


class PinLock:
    """An exclusive flock on the pin directory, held for a daemon's life
    (or a resize's); the kernel drops it when the process dies, SIGKILL
    included, so a crashed daemon never blocks the next one."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = pin_dir
        self.fd: int | None = None
        self.created = False   # the directory was made for this lock

    def try_acquire(self) -> bool:
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "PinLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_daemon(pin_dir: Path) -> PinLock:
    """The pin dir's lock for `ctbpf run`; CtbpfError if a daemon holds it.
    The directory is made if need be, once BCC is known to be there and
    only on a BPF filesystem; lock.created says so, for the caller to remove
    it again if the start fails."""
    from .loader import _import_bcc  # noqa: PLC0415

    _import_bcc()
    shown = pins.display(pin_dir)
    if pin_dir.exists() and not pin_dir.is_dir():
        raise UsageError(f"pin dir {shown}: is not a directory")
    where = pin_dir if pin_dir.exists() else pin_dir.parent
    if not pins.is_bpffs(where):
        raise CtbpfError(f"pin dir {shown} is not on a BPF filesystem "
                         f"(mount one with `mount -t bpf bpf /sys/fs/bpf`)")
    created = False
    try:
        pin_dir.mkdir()
        created = True
    except FileExistsError:
        if not pin_dir.is_dir():
            raise UsageError(f"pin dir {shown}: is not a directory") from None
    except OSError as e:
        raise CtbpfError(f"pin dir {shown}: {e.strerror}") from None
    lock = PinLock(pin_dir)
    lock.created = created
    if not lock.try_acquire():
        status = daemon_status(pin_dir)
        who = f" (pid {status['pid']})" if status else ""
        ifaces = status.get("ifaces") if status else None
        where = f" with XDP on {', '.join(map(str, ifaces))}" if isinstance(ifaces, list) else ""
        raise CtbpfError(f"a ctbpf daemon{who} already tracks{where} with the maps in "
                         f"{shown}; stop it first (a stopped or killed one's "
                         f"datapath is adopted)")
    return lock


def daemon_status(pin_dir: Path) -> dict | None:
    """daemon.json of this network namespace's daemon if it is alive and
    runs on pin_dir."""
    from .daemon import run_dir  # noqa: PLC0415

    try:
        status = json.loads((run_dir() / "daemon.json").read_text())
        pid = int(status["pid"])
        a, b = os.stat(status["pin_dir"]), os.stat(pin_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return status


def daemon_pid(pin_dir: Path) -> int | None:
    """The pid of this network namespace's daemon if it runs on pin_dir."""
    status = daemon_status(pin_dir)
    return int(status["pid"]) if status else None


# --------------------------------------------------------------------------
# what is pinned


@dataclass(frozen=True)
class PinnedState:
    version: int
    max_entries: int
    key_size: int
    value_size: int
    entries: dict[str, int]     # present entries per table (live or not)
    live: dict[str, int]        # live entries per table
    table_ids: frozenset[int]

    @property
    def total(self) -> int:
        return sum(self.entries.values())


def inspect(pin_dir: Path) -> PinnedState | None:
    """The pinned maps' layout version, size and contents; None when no
    tables are pinned there."""
    if not all((pin_dir / name).exists() for name in TABLES):
        return None
    version = -1
    if (pin_dir / "ct_config").exists():
        fd = open_pinned(pin_dir, "ct_config")
        try:
            info = bpfsys.map_info(fd)
            buf = ctypes.create_string_buffer(info.value_size)
            bpfsys.lookup(fd, ctypes.c_uint32(0), buf)
            if info.value_size >= (VERSION_SLOT + 1) * 8:
                version = int.from_bytes(buf.raw[VERSION_SLOT * 8:VERSION_SLOT * 8 + 8],
                                         sys.byteorder)
        finally:
            os.close(fd)
    entries, live, ids = {}, {}, set()
    now = time.monotonic_ns()
    info = None
    for name in TABLES:
        fd = open_pinned(pin_dir, name)
        try:
            info = bpfsys.map_info(fd)
            ids.add(info.id)
            _, values, count = bpfsys.lookup_batch(fd, info.key_size, info.value_size,
                                                   info.max_entries)
        finally:
            os.close(fd)
        entries[name] = count
        live[name] = _count_live(values, count, info.value_size, now)
    return PinnedState(version, info.max_entries, info.key_size, info.value_size, entries, live,
                       frozenset(ids))


def _count_live(values: bytes, count: int, value_size: int, now: int) -> int:
    """Entries whose expiry (at this layout's offset) is still ahead."""
    if count == 0 or value_size < EXPIRES_OFFSET + 8:
        return count
    if value_size % 8 == 0:   # every expires_ns at once, no per-entry slicing
        expiries = memoryview(values).cast("Q")[EXPIRES_OFFSET // 8::value_size // 8][:count]
        return sum(1 for e in expiries if e > now)
    return sum(1 for i in range(count)
               if expires_ns(values[i * value_size:(i + 1) * value_size]) > now)


def compatible(state: PinnedState) -> bool:
    return (state.version == abi.LAYOUT_VERSION and state.key_size == KEY_SIZE
            and state.value_size == ENTRY_SIZE)


# --------------------------------------------------------------------------
# migrations between layout versions


@dataclass(frozen=True)
class Migration:
    """How to carry entries of an older layout into this one.

    convert(table, key, entry) -> (key, entry) in this build's layout, or
    None to drop the entry (counted and reported). table is "ct_new" or
    "ct_assured"; the result goes to the table the converted entry's flags
    say (ASSURED and not closing: ct_assured), else where it was.
    config(raw) -> raw ct_config of this layout, or None for this build's
    defaults (plus the config file). counters(raw of one CPU) -> raw
    ct_counters of this layout, or None to start the counters at zero."""

    from_version: int
    convert: Callable[[str, bytes, bytes], tuple[bytes, bytes] | None]
    config: Callable[[bytes], bytes | None] | None = None
    counters: Callable[[bytes], bytes | None] | None = None


#: from_version -> Migration into this build's CT_LAYOUT_VERSION.
MIGRATIONS: dict[int, Migration] = {}


def register(from_version: int, config=None, counters=None):
    """Decorator: `@register(1)` over convert(table, key, entry)."""
    def wrap(convert):
        if from_version == abi.LAYOUT_VERSION:
            raise ValueError(f"layout version {from_version} is this build's own")
        MIGRATIONS[from_version] = Migration(from_version, convert, config, counters)
        return convert
    return wrap


def _counters_from_layout_1(raw: bytes) -> bytes:
    """Layout 1 had 48 counters; the invalid reasons from ip_opts on start at 0."""
    return raw[:8 * 48].ljust(STATS_SIZE, b"\0")


# Layout 1 -> 2: ct_stats grew from 48 to 64 counters (CT_INV_IP_OPTS, and
# room for the window checks' reasons). Keys, entries and ct_config are
# byte for byte the same.
@register(1, config=lambda raw: raw, counters=_counters_from_layout_1)
def _entries_from_layout_1(table: str, key: bytes, entry: bytes) -> tuple[bytes, bytes]:
    return key, entry


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


# bpffs refuses dots in names ("reserved for future use"); `+` is allowed
# there and in the loader's pin dir pattern, and rare in real pin dirs.
TEMP_SUFFIX = "+rebuild-"


# A first start pins into `<pin>+start-<pid>` and moves the set into place
# once ct_config is written (see start_fresh).
START_SUFFIX = "+start-"


def temp_pin_dir(pin_dir: Path) -> Path:
    return pin_dir.parent / f"{pin_dir.name}{TEMP_SUFFIX}{os.getpid()}"


def remove_stale_temp(pin_dir: Path) -> None:
    """Remove `<pin>+rebuild-<pid>` and `<pin>+start-<pid>` directories
    whose process is gone."""
    from .loader import remove_pins  # noqa: PLC0415

    suffixes = "|".join(re.escape(x) for x in (TEMP_SUFFIX, START_SUFFIX))
    pattern = re.compile(re.escape(pin_dir.name) + f"(?:{suffixes})" + r"(\d+)$")
    try:
        names = os.listdir(pin_dir.parent)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        log.info("removing the leftover %s", pins.display(pin_dir.parent / name))
        remove_pins(pin_dir.parent / name)


class Rebuild:
    """Move a running tracker onto new maps (see the module's docstring).

    Rebuild(pin_dir, new_max, migration=None, values=None).prepare() loads
    and fills the new datapath; commit() swaps and returns it (pinned at
    pin_dir); abort() undoes prepare(). values, if given, are tunables to
    apply over the carried ones (a config file's)."""

    def __init__(self, pin_dir: Path, new_max: int, migration: Migration | None = None,
                 values: dict[str, int] | None = None, own_programs: set[int] = frozenset()
                 ) -> None:
        self.pin_dir = pin_dir
        # Programs of the caller's own datapath (loaded, not necessarily
        # attached): they use the old tables and go away with it.
        self.own_programs = set(own_programs)
        self.new_max = new_max
        self.migration = migration
        self.values = values
        self.tmp = temp_pin_dir(pin_dir)
        self.report = Report(new_max=new_max)
        self.dp = None
        self._old: dict[str, int] = {}
        self._new: dict[str, int] = {}
        self._snap: dict[bytes, tuple[str, bytes]] = {}
        self._stats1: bytearray | None = None
        self._old_ids: set[int] = set()
        self._t0 = time.monotonic()

    # -- helpers -------------------------------------------------------------

    def _convert(self, table: str, key: bytes, entry: bytes) -> tuple[str, bytes, bytes] | None:
        if self.migration is None:
            return table, key, entry
        out = self.migration.convert(table, key, entry)
        if out is None:
            return None
        k, e = out
        if len(k) != KEY_SIZE or len(e) != ENTRY_SIZE:
            raise CtbpfError(f"migration from layout {self.migration.from_version}: converted "
                             f"entries must be {KEY_SIZE}/{ENTRY_SIZE} bytes, got {len(k)}/{len(e)}")
        return _table_for(table, k, e), k, e

    def _read_old(self) -> dict[bytes, tuple[str, bytes]]:
        raw = read_tables(self._old)
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
        info = bpfsys.map_info(self._old["ct_new"])
        self.report.old_max = info.max_entries
        self._old_ids = {bpfsys.map_info(self._old[t]).id for t in TABLES}

    def _close_fds(self) -> None:
        for d in (self._old, self._new):
            while d:
                os.close(d.popitem()[1])

    # -- the steps -----------------------------------------------------------

    def prepare(self) -> "Rebuild":
        from .loader import MAX_ENTRIES, MIN_ENTRIES, Datapath, remove_pins  # noqa: PLC0415

        if not MIN_ENTRIES <= self.new_max <= MAX_ENTRIES:
            raise UsageError(f"max: {self.new_max} is out of range [{MIN_ENTRIES}, {MAX_ENTRIES}]")
        try:
            self._open_old()
            self._plan(self._read_old())   # refuse early, before the slow compile
            self._check_users()
            remove_stale_temp(self.pin_dir)
            if self.tmp.exists():
                remove_pins(self.tmp)
            self.dp = Datapath(self.tmp, self.new_max).load()
            for name in (*TABLES, "ct_config", "ct_stats"):
                self._new[name] = open_pinned(self.tmp, name)
            # The copy the swap starts from: taken as late as possible, so
            # that little changes in the old tables before the swap.
            self._snap = self._plan(self._read_old())
            self._copy_config()
            self._copy_counters()
            self._copy_policy()
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
        strangers = [p for p in programs_using(self._old_ids)
                     if p.id not in hooked | self.own_programs and p.name != SWEEP_FUNC]
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
        if max(live.values()) > self.new_max:
            raise RefusedError(
                f"max {self.new_max} is smaller than the live entries "
                f"({live['ct_assured']} assured, {live['ct_new']} new): refused, nothing "
                f"changed; use at least {max(live.values())}")
        self.report.dropped_expired = 0
        for t, ks in per_table.items():
            if len(ks) > self.new_max:
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
        from .loader import read_config, write_config  # noqa: PLC0415
        from . import tunables  # noqa: PLC0415

        old = ctypes.create_string_buffer(bpfsys.map_info(self._old["ct_config"]).value_size)
        bpfsys.lookup(self._old["ct_config"], ctypes.c_uint32(0), old)
        raw: bytes | None = old.raw
        if self.migration is not None:
            raw = self.migration.config(raw) if self.migration.config else None
        if raw is not None and len(raw) == CFG_SIZE:
            cfg = abi.CtConfig.from_buffer_copy(raw)
            cfg.value[VERSION_SLOT] = abi.LAYOUT_VERSION
            bpfsys.update(self._new["ct_config"], ctypes.c_uint32(0), cfg)
        if self.values is not None:
            current = tunables.from_config(read_config(self.tmp))
            current.update(self.values)
            write_config(self.tmp, current)

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
        # own removals would, so that early_drop (ctbpf/stats.py) stays exact.
        c[STAT_SWEPT] += self.report.dropped_expired
        c[STAT_DELETE] += self.report.dropped_by_migration
        write_percpu(self._new["ct_stats"], new)

    def _copy_entries(self, snap: dict[bytes, tuple[str, bytes]]) -> None:
        for t in TABLES:
            items = [(k, e) for k, (tt, e) in snap.items() if tt == t]
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

    def commit(self):
        """Swap every hook of the old tables to the new programs, carry over
        what changed meanwhile, pin the new maps at pin_dir. Returns the new
        Datapath (its attachments list is empty: hooks are in the report)."""
        try:
            hooks = find_hooks(self._old_ids)
            self.report.hooks = swap_hooks(hooks, self.dp)
        except BaseException:
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
            if n != s:
                self.report.kept_new += 1
                continue            # the new program has the latest word
            self.report.reconciled += 1
            if o is None:
                bpfsys.delete(self._new[n[0]], ctypes.create_string_buffer(key, KEY_SIZE))
                continue
            kbuf = ctypes.create_string_buffer(key, KEY_SIZE)
            vbuf = ctypes.create_string_buffer(o[1], ENTRY_SIZE)
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
        from .loader import remove_pins  # noqa: PLC0415

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
                  say: Callable[[str], None] | None = None):
    """A loaded Datapath on pin_dir for `ctbpf run`, keeping what is pinned:
    reused as is (same layout and size), resized (max given and different),
    migrated (another layout with a registered migration), or, only with
    discard_state, dropped with a report; otherwise CtbpfError. The caller
    holds the pin dir's lock. say() prints a line for the user."""
    from .loader import Datapath, MAX_ENTRIES, MIN_ENTRIES  # noqa: PLC0415

    say = say or (lambda line: print(f"ctbpf: {line}", file=sys.stderr, flush=True))
    if not MIN_ENTRIES <= max_entries <= MAX_ENTRIES:
        raise UsageError(f"max: {max_entries} is out of range [{MIN_ENTRIES}, {MAX_ENTRIES}]")
    remove_stale_temp(pin_dir)
    state = inspect(pin_dir)
    if state is None:
        return start_fresh(pin_dir, max_entries, values)
    if not compatible(state):
        migration = MIGRATIONS.get(state.version)
        if migration is not None and state.version != abi.LAYOUT_VERSION:
            new_max = max_entries if max_given else state.max_entries
            rb = Rebuild(pin_dir, new_max, migration, values).prepare()
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
        dp = Datapath(pin_dir, max_entries).load(values=values)
        dp.adoptable |= set(state.table_ids)   # programs still running on the old maps
        return dp
    if discard_state:
        say(f"the pinned maps in {pins.display(pin_dir)} are compatible: their "
            f"{state.total} entries are kept (--discard-state has nothing to do)")
    if max_given and max_entries != state.max_entries:
        rb = Rebuild(pin_dir, max_entries, values=values).prepare()
        dp = rb.commit()
        say(f"resized the tables from {state.max_entries} to {max_entries} entries: "
            f"{rb.report.total} entries kept")
        return dp
    dp = Datapath(pin_dir, state.max_entries).load(values=values)
    say(f"kept {state.total} entries of the pinned maps in {pins.display(pin_dir)}")
    return dp


def start_fresh(pin_dir: Path, max_entries: int, values: dict[str, int] | None = None):
    """A datapath on new maps that appear in pin_dir complete: loaded and
    pinned in a staging directory, its config written there, then moved in
    by rename with ct_config last. A reader that finds ct_config finds every
    other map, and never a config of layout version 0."""
    from .loader import Datapath, remove_pins  # noqa: PLC0415

    staging = pin_dir.parent / f"{pin_dir.name}{START_SUFFIX}{os.getpid()}"
    remove_pins(staging)
    try:
        staging.mkdir()
    except OSError as e:
        raise CtbpfError(f"pin dir {pins.display(staging)}: {e.strerror}") from None
    dp = Datapath(staging, max_entries)
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
    from .loader import TC_PRIO  # noqa: PLC0415

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
