"""The hooks that run ctbpf's programs, found and swapped over netlink.

XDP: IFLA_XDP's attached program and mode, replaced with compare-and-swap
(IFLA_XDP_EXPECTED_FD + XDP_FLAGS_REPLACE) so one instant the old program
runs and the next the new one. TC egress: our clsact filter (priority and
handle from ctbpf.datapath.progs), replaced in place. find_hooks finds every
hook whose program uses a given set of tables, in this network namespace.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass

from ctbpf.datapath import bpfsys
from ctbpf.datapath.progs import (TC_PROG_NAME, XDP_PROG_NAME, is_ctbpf, prog_fd_by_id, prog_id,
                                  prog_info_by_id)
from ctbpf.errors import CtbpfError

log = logging.getLogger(__name__)

# How long the old programs may still be running on a CPU after a swap: an
# XDP or TC program runs inside one softirq; this is generous next to it.
SWAP_GRACE_S = 0.05


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
    from ctbpf.datapath.progs import TC_EGRESS_PARENT, TC_PRIO  # noqa: PLC0415

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

    from ctbpf.datapath.progs import TC_EGRESS_PARENT, TC_PRIO  # noqa: PLC0415

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
    from ctbpf.datapath.progs import TC_EGRESS_FUNC, XDP_FUNC  # noqa: PLC0415

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
