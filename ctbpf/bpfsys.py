"""The bpf(2) system call, for the few commands the control plane needs
without compiling anything: open pinned maps, read and write them in
batches over raw buffers, and run a program on a crafted packet
(BPF_PROG_TEST_RUN), which BCC 0.26's Python does not wrap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from dataclasses import dataclass
from functools import lru_cache

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_map_type values we meet
MAP_TYPE_NAMES = {1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash",
                  10: "lru_percpu_hash", 27: "ringbuf"}
PERCPU_TYPES = {5, 6, 10}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed; errno and a readable message."""


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64), ("count", ctypes.c_uint32),
                ("map_fd", ctypes.c_uint32), ("elem_flags", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class TestRunAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_TEST_RUN."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
                ("rest", ctypes.c_uint8 * 64)]


def syscall_nr() -> int:
    """bpf(2)'s system call number on this machine."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(errno.ENOSYS, f"bpf(2): unsupported architecture {platform.machine()}")
    return nr


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    ret = _libc.syscall(syscall_nr(), cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def _addr(buf) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


def obj_get(path: str) -> int:
    """Open a pinned map or program; returns a new fd."""
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=_addr(cpath)), f"open pinned {path}")


def obj_pin(fd: int, path: str) -> None:
    cpath = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=_addr(cpath), bpf_fd=fd), f"pin {path}")


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, str(self.type))

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=_addr(info)),
         "map info")
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.map_flags, info.name.decode(errors="replace"))


def lookup(fd: int, key, value) -> bool:
    """Fill value for key; False when the key is absent."""
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value)), "lookup")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def update(fd: int, key, value, flags: int = BPF_ANY) -> None:
    _bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=fd, key=_addr(key), value=_addr(value), flags=flags),
         "update")


def delete(fd: int, key) -> bool:
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=fd, key=_addr(key)), "delete")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def lookup_batch(fd: int, key_size: int, value_size: int, max_entries: int,
                 chunk: int = 65536) -> tuple[bytes, bytes, int]:
    """Read a whole hash map in batches. Returns (keys, values, count): raw
    buffers holding count records back to back."""
    chunk = max(1, min(chunk, max_entries))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    out_keys, out_values = bytearray(), bytearray()
    token = ctypes.create_string_buffer(max(key_size, 8))
    next_token = ctypes.create_string_buffer(max(key_size, 8))
    total, first = 0, True
    while True:
        attr = _BatchAttr(in_batch=0 if first else _addr(token), out_batch=_addr(next_token),
                          keys=_addr(keys), values=_addr(values), count=chunk, map_fd=fd)
        done = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr, "batch lookup")
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise
            done = True  # ENOENT: this was the last batch (count may be > 0)
        n = attr.count
        out_keys += keys.raw[:n * key_size]
        out_values += values.raw[:n * value_size]
        total += n
        if done:
            return bytes(out_keys), bytes(out_values), total
        ctypes.memmove(token, next_token, len(token))
        first = False


def lookup_batch_at(fd: int, token_in: int, token_out: int, keys_addr: int,
                    values_addr: int, count: int) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH into caller-owned buffers, resuming from the
    cursor at address token_in (0: from the start) and leaving the next one
    at token_out. Returns (records read, whether the map is done). ENOSPC
    (a bucket larger than count) is raised for the caller to retry bigger."""
    attr = _BatchAttr(in_batch=token_in, out_batch=token_out, keys=keys_addr,
                      values=values_addr, count=count, map_fd=fd)
    try:
        _bpf(BPF_MAP_LOOKUP_BATCH, attr, "batch lookup")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return attr.count, True
        raise
    return attr.count, False


def update_batch(fd: int, keys_addr: int, values_addr: int, count: int) -> int:
    """BPF_MAP_UPDATE_BATCH of count records from caller-owned buffers;
    returns how many were written."""
    attr = _BatchAttr(keys=keys_addr, values=values_addr, count=count, map_fd=fd)
    _bpf(BPF_MAP_UPDATE_BATCH, attr, "batch update")
    return attr.count


def delete_batch(fd: int, keys: bytes, key_size: int) -> int:
    """Delete many keys in one call; returns how many were deleted."""
    count = len(keys) // key_size
    if count == 0:
        return 0
    buf = ctypes.create_string_buffer(keys, len(keys))
    attr = _BatchAttr(keys=_addr(buf), count=count, map_fd=fd)
    try:
        _bpf(BPF_MAP_DELETE_BATCH, attr, "batch delete")
    except BpfError as e:
        if e.errno != errno.ENOENT:
            raise
    return attr.count


@dataclass(frozen=True)
class TestRun:
    retval: int
    duration_ns: int
    data_out: bytes


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1, ctx: bytes | None = None) -> TestRun:
    """Run a program on one crafted packet (BPF_PROG_TEST_RUN); `ctx` is the
    program's context to start from (for XDP, a struct xdp_md: its
    ingress_ifindex says which interface the packet arrives on)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 256)
    attr = TestRunAttr(prog_fd=prog_fd, data_size_in=len(data), data_size_out=len(data_out),
                        data_in=_addr(data_in), data_out=_addr(data_out), repeat=repeat)
    if ctx is not None:
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx))
        attr.ctx_in, attr.ctx_size_in = _addr(ctx_in), len(ctx)
    _bpf(BPF_PROG_TEST_RUN, attr, "test run")
    return TestRun(attr.retval, attr.duration, data_out.raw[:attr.data_size_out])


class TestRunner:
    """Runs one program many times over reused buffers: the request is
    written into `data_in` (a bytearray of `size` bytes), the program's
    rewritten packet comes back in `data_out`; no allocation per run."""

    def __init__(self, prog_fd: int, size: int) -> None:
        self.data_in = bytearray(size)
        self.data_out = bytearray(size + 256)
        self._in = (ctypes.c_char * size).from_buffer(self.data_in)
        self._out = (ctypes.c_char * len(self.data_out)).from_buffer(self.data_out)
        self._attr = TestRunAttr(prog_fd=prog_fd, data_size_in=size,
                                  data_in=ctypes.addressof(self._in),
                                  data_out=ctypes.addressof(self._out), repeat=1)
        self.duration_ns = 0   # the kernel's own time, summed over runs

    def run(self) -> int:
        """One run; returns the program's return value."""
        attr = self._attr
        attr.data_size_out = len(self.data_out)
        _bpf(BPF_PROG_TEST_RUN, attr, "test run")
        self.duration_ns += attr.duration
        return attr.retval
