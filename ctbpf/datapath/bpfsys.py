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

BPF_MAP_CREATE = 0
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


raw_bpf = _bpf   # for the feature probes (ctbpf/datapath/features.py)


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


# -- batch operations, and their one-element-per-syscall fallback ----------
#
# BPF_MAP_*_BATCH (5.6+) read and write thousands of entries per syscall.
# A kernel that refuses them (ctbpf/datapath/features.py probes once, at start) gets
# the same results from BPF_MAP_GET_NEXT_KEY plus one lookup, update or
# delete per element: slower by the syscall per entry, the same answers.

#: CTBPF_DISABLE=batch,...: features reported as refused without asking
#: the kernel (tests run the fallbacks with it; see ctbpf/datapath/features.py).
DISABLE_ENV = "CTBPF_DISABLE"

_batch: bool | None = None   # None: not probed yet in this process


def disabled_features() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 108)]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """A new, unpinned map (for probes); returns its fd."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries)
    return _bpf(BPF_MAP_CREATE, attr, "create a map")


def probe_batch() -> tuple[int | None, str]:
    """Try a batch update and a batch lookup on a small hash map of our own:
    (None, "") when the kernel does them, else (errno, what failed)."""
    try:
        fd = map_create(1, 4, 8, 4)   # BPF_MAP_TYPE_HASH
    except BpfError as e:
        return e.errno, "cannot create a map"
    try:
        keys = (ctypes.c_uint32 * 2)(1, 2)
        values = (ctypes.c_uint64 * 2)(10, 20)
        update_batch_raw(fd, ctypes.addressof(keys), ctypes.addressof(values), 2)
        _, got, n = lookup_batch_raw(fd, 4, 8, 4)
        if n != 2 or sorted(memoryview(got).cast("Q")) != [10, 20]:
            return errno.EIO, "a batch lookup read wrong values"
    except BpfError as e:
        return e.errno, ""
    finally:
        os.close(fd)
    return None, ""


def use_batch(enabled: bool) -> None:
    """Whether the batch commands are used (the agent's probe decides)."""
    global _batch
    _batch = bool(enabled)


def batch_in_use() -> bool:
    """Probed on first use in a process that has not been told."""
    global _batch
    if _batch is None:
        _batch = "batch" not in disabled_features() and probe_batch()[0] is None
    return _batch


def get_next_key(fd: int, key_addr: int, next_addr: int) -> bool:
    """The key after the one at key_addr (0: the first key) into next_addr;
    False at the end of the map. A key no longer in a hash map restarts the
    walk at its first key: that is the kernel's answer, not ours."""
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, _ElemAttr(map_fd=fd, key=key_addr, value=next_addr),
             "next key")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def _lookup_addr(fd: int, key_addr: int, value_addr: int) -> bool:
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(map_fd=fd, key=key_addr, value=value_addr), "lookup")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def _walk_into(fd: int, key_size: int, value_size: int, start_addr: int, keys_addr: int,
               values_addr: int, count: int, cursor) -> tuple[int, bool]:
    """Up to count (key, value) records from the key at start_addr (0: the
    map's first), back to back; cursor receives the first key not read, so
    deleting what was read (the sweeper does) cannot lose the place."""
    key = ctypes.create_string_buffer(max(key_size, 1))
    if start_addr:
        ctypes.memmove(key, start_addr, key_size)
        have = True
    else:
        have = get_next_key(fd, 0, _addr(key))
    n = 0
    while have and n < count:
        k_at, v_at = keys_addr + n * key_size, values_addr + n * value_size
        ctypes.memmove(k_at, key, key_size)
        if _lookup_addr(fd, k_at, v_at):
            n += 1
        have = get_next_key(fd, _addr(key), _addr(key))
    if have:
        ctypes.memmove(cursor, key, key_size)
    return n, not have


def lookup_batch(fd: int, key_size: int, value_size: int, max_entries: int,
                 chunk: int = 65536) -> tuple[bytes, bytes, int]:
    """Read a whole map. Returns (keys, values, count): raw buffers holding
    count records back to back."""
    if batch_in_use():
        return lookup_batch_raw(fd, key_size, value_size, max_entries, chunk)
    chunk = max(1, min(chunk, max_entries))
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    cursor = ctypes.create_string_buffer(max(key_size, 8))
    out_keys, out_values, total, start = bytearray(), bytearray(), 0, 0
    for _ in range(max_entries // chunk + 2):   # bounded: the map holds max_entries
        n, done = _walk_into(fd, key_size, value_size, start, _addr(keys), _addr(values),
                             chunk, cursor)
        out_keys += keys.raw[:n * key_size]
        out_values += values.raw[:n * value_size]
        total += n
        if done:
            break
        start = _addr(cursor)
    return bytes(out_keys), bytes(out_values), total


def lookup_batch_at(fd: int, token_in: int, token_out: int, keys_addr: int,
                    values_addr: int, count: int) -> tuple[int, bool]:
    """One batch read into caller-owned buffers, resuming from the cursor at
    address token_in (0: from the start) and leaving the next one at
    token_out (a buffer of at least the key size). Returns (records read,
    whether the map is done). ENOSPC (a bucket larger than count) is raised
    for the caller to retry bigger."""
    if batch_in_use():
        return lookup_batch_at_raw(fd, token_in, token_out, keys_addr, values_addr, count)
    info = map_info(fd)
    value_size = info.value_size
    if info.type in PERCPU_TYPES:
        value_size = ((value_size + 7) & ~7) * possible_cpus()
    cursor = (ctypes.c_char * max(info.key_size, 8)).from_address(token_out)
    return _walk_into(fd, info.key_size, value_size, token_in, keys_addr, values_addr, count,
                      cursor)


def update_batch(fd: int, keys_addr: int, values_addr: int, count: int) -> int:
    """Write count records from caller-owned buffers; returns how many
    were written."""
    if batch_in_use():
        return update_batch_raw(fd, keys_addr, values_addr, count)
    info = map_info(fd)
    value_size = info.value_size
    if info.type in PERCPU_TYPES:
        value_size = ((value_size + 7) & ~7) * possible_cpus()
    for i in range(count):
        _bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=fd, key=keys_addr + i * info.key_size,
                                            value=values_addr + i * value_size), "update")
    return count


def delete_batch(fd: int, keys: bytes, key_size: int) -> int:
    """Delete many keys; returns how many were deleted."""
    if batch_in_use():
        return delete_batch_raw(fd, keys, key_size)
    buf = ctypes.create_string_buffer(bytes(keys), len(keys))
    return sum(delete(fd, (ctypes.c_char * key_size).from_buffer(buf, i * key_size))
               for i in range(len(keys) // key_size))


def lookup_batch_raw(fd: int, key_size: int, value_size: int, max_entries: int,
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


def lookup_batch_at_raw(fd: int, token_in: int, token_out: int, keys_addr: int,
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


def update_batch_raw(fd: int, keys_addr: int, values_addr: int, count: int) -> int:
    """BPF_MAP_UPDATE_BATCH of count records from caller-owned buffers;
    returns how many were written."""
    attr = _BatchAttr(keys=keys_addr, values=values_addr, count=count, map_fd=fd)
    _bpf(BPF_MAP_UPDATE_BATCH, attr, "batch update")
    return attr.count


def delete_batch_raw(fd: int, keys: bytes, key_size: int) -> int:
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
