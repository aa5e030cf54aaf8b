"""What identifies ctbpf's programs in the kernel: their function names in
bpf/ctbpf.c, the names the kernel keeps (15 characters), the TC priority
and parent they are attached at, and the program-id syscalls that find them
on a running system (BPF_PROG_GET_NEXT_ID, BPF_OBJ_GET_INFO_BY_FD).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from ctbpf.datapath import bpfsys

XDP_FUNC = "ctbpf_xdp"
TC_EGRESS_FUNC = "ctbpf_tc_egress"
SWEEP_FUNC = "ctbpf_sweep"
# The tracker stages the entry programs tail-call (bpf/scratch.h): function,
# program array, stage (enum ct_stage), for XDP then TC.
STAGES = ("assured", "new", "fresh")
STAGE_FUNCS = tuple((f"ctbpf_{hook}_{stage}", f"ct_jump_{hook}", i)
                    for hook in ("xdp", "tc") for i, stage in enumerate(STAGES))
# The fast path (bpf/fastpath.h), after the XDP stages: verified on its own.
STAGE_FUNCS += (("ctbpf_xdp_fwd", "ct_jump_xdp", len(STAGES)),)
TC_STAGE_NAMES = tuple(name for name, table, _ in STAGE_FUNCS if table == "ct_jump_tc")

# Our filter's priority on clsact egress, so that detaching removes ours only.
TC_PRIO = 0xC7B
TC_EGRESS_PARENT = 0xFFFFFFF3


# Program names as the kernel keeps them (BPF_OBJ_NAME_LEN - 1 characters).
XDP_PROG_NAME = "ctbpf_xdp"
TC_PROG_NAME = "ctbpf_tc_egress"[:15]

# --------------------------------------------------------------------------
# programs: bpf(2)

BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13


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
