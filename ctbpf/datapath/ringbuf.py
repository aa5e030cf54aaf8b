"""A consumer of a BPF ring buffer map through mmap: records are read where
the kernel wrote them, many per call, with no syscall at all.

The kernel's layout (kernel/bpf/ringbuf.c, uapi BPF_RINGBUF_*): page 0 holds
the consumer position (ours to write), page 1 the producer position, then the
data area, mapped twice in a row so that a record crossing the end is still
contiguous. Both positions are the kernel's `unsigned long`. Each record
starts with an 8-byte header: u32 length with the BUSY (still being written)
and DISCARD bits, u32 page offset; records are 8-byte aligned.

Memory ordering, as libbpf's consumer (tools/lib/bpf/ringbuf.c) does it. The
producer advances producer_pos (store-release) when it reserves a record,
its header BUSY, writes the payload, then clears BUSY with an xchg of the
header (a full barrier); it reads consumer_pos with a load-acquire before
reusing space. So the consumer needs: producer_pos loaded, then an acquire
fence, before any header is read (else a header could be read before the
position and show a previous lap's record); the headers loaded, then an
acquire fence, before any payload is read; the payloads read, then a
release fence, before consumer_pos is stored.
Python has no fences: they come from gcc's libatomic (libatomic.so.1, Debian
package libatomic1, installed by scripts/setup.sh), atomic_thread_fence()
called through ctypes. libatomic is built with the order as a run-time
value, so gcc makes each call its full fence, on every architecture (`lock
or` on x86_64, `dmb ish` on arm64, `sync` on ppc64le, a serializing `bcr`
on s390x): at least what acquire and release need. A call costs about
0.2 us, paid up to three times a consume_fixed(), not per record, and not
at all when the ring is empty.

Without libatomic: on x86 (TSO: loads are not reordered with older loads,
stores not with older loads) the consumer goes on with no fence; on any other
architecture RingReader refuses (OSError), and the sweeper falls back to
walking the tables. ORDERING says which applies: "libatomic fences",
"x86 TSO", or None (RingReader refuses, NO_ORDERING says why).

The positions are read and written as one aligned machine word each, through
a memoryview cast to "L" (the kernel's unsigned long, the width libbpf uses
too), whose item access is a memcpy of sizeof(unsigned long) that gcc
compiles to a single load or store. (struct "=Q" happens to reach the same
native memcpy in CPython, whose _struct.c swaps the native functions into
the host-order table where the sizes match, but that is an optimisation,
and "Q" is the wrong width where unsigned long is 32 bits.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform

from ctbpf.datapath import bpfsys

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8

_ACQUIRE = 2     # __ATOMIC_ACQUIRE
_RELEASE = 3     # __ATOMIC_RELEASE
_POS = "L"       # unsigned long, as the kernel's consumer_pos and producer_pos
_POS_SIZE = ctypes.sizeof(ctypes.c_ulong)
_POS_MASK = (1 << (8 * _POS_SIZE)) - 1   # positions wrap at the word's width
_TSO = {"x86_64", "amd64", "i386", "i486", "i586", "i686"}
LIBATOMIC = "libatomic.so.1"


def _libatomic_names():
    yield LIBATOMIC
    found = ctypes.util.find_library("atomic")   # runs ldconfig: only if the soname failed
    if found and found != LIBATOMIC:
        yield found


def _ordering(machine: str, names=None):
    """(fence function or None, ORDERING, NO_ORDERING) on `machine`, trying
    the libraries `names` (default: libatomic's soname, then find_library)."""
    why = f"{LIBATOMIC} not found"
    for name in _libatomic_names() if names is None else names:
        try:
            # PyDLL: called with the GIL held (a fence has no reason to drop it),
            # which saves about 50 ns a call over CDLL.
            fence = ctypes.PyDLL(name).atomic_thread_fence
        except OSError:
            continue
        except AttributeError:
            why = f"{name} has no atomic_thread_fence"
            continue
        fence.argtypes = [ctypes.c_int]
        fence.restype = None
        fence(_ACQUIRE)
        return fence, "libatomic fences", None
    if machine in _TSO:
        return None, "x86 TSO", None
    return None, None, (f"the ring consumer needs memory fences on {machine}: {why}; "
                        "install libatomic1")


_fence, ORDERING, NO_ORDERING = _ordering(platform.machine())


def record_size(payload: int) -> int:
    """Bytes one record of `payload` bytes takes in the ring."""
    return (payload + HEADER_SIZE + 7) & ~7


class RingReader:
    """Reads the records of one ring buffer map (an fd it duplicates)."""

    def __init__(self, map_fd: int) -> None:
        if ORDERING is None:
            raise OSError(NO_ORDERING)
        info = bpfsys.map_info(map_fd)
        if info.type != 27:   # BPF_MAP_TYPE_RINGBUF
            raise ValueError(f"map {info.name!r} is not a ring buffer")
        self.size = info.max_entries
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        self._fd = os.dup(map_fd)
        try:
            self._cons = mmap.mmap(self._fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(self._fd, page + 2 * self.size, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=page)
        except BaseException:
            os.close(self._fd)
            raise
        self._cons_pos = memoryview(self._cons)[:_POS_SIZE].cast(_POS)   # [0]: consumer_pos
        self._prod_pos = memoryview(self._prod)[:_POS_SIZE].cast(_POS)   # [0]: producer_pos
        self._data = memoryview(self._prod)[page:]

    def close(self) -> None:
        if self._fd < 0:
            return
        self._data.release()
        self._prod_pos.release()
        self._cons_pos.release()
        self._prod.close()
        self._cons.close()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def pending(self) -> int:
        """Bytes written by the producer and not consumed yet."""
        return (self._prod_pos[0] - self._cons_pos[0]) & _POS_MASK

    def consume_fixed(self, payload: int, max_records: int, handle) -> int:
        """Consume up to `max_records` records of exactly `payload` bytes.

        handle(chunk, n, clean) sees them first: `chunk` is a view of n whole
        records back to back (header then payload, record_size(payload) bytes
        each), valid only during the call; `clean` is False when some carry
        the DISCARD bit (the caller skips those). The records are released
        to the producer after handle returns. A record of another size means
        a broken ring: ValueError, after consuming what came before it.
        Returns n."""
        stride = record_size(payload)
        cons = self._cons_pos[0]         # ours: no ordering needed
        prod = self._prod_pos[0]
        n = min((prod - cons) & _POS_MASK, max_records * stride, self.size) // stride
        if n <= 0:
            return 0
        if _fence is not None:
            _fence(_ACQUIRE)             # producer_pos before the headers it covers
        start = cons & self._mask
        chunk = self._data[start:start + n * stride]
        lengths = chunk.cast("I")[0::stride // 4].tolist()   # each record's u32 header word
        if _fence is not None:
            _fence(_ACQUIRE)             # the headers (BUSY clear) before their payloads
        clean = lengths.count(payload) == n
        bad = None
        if not clean:
            for good, length in enumerate(lengths):
                if length & BUSY_BIT:
                    break     # still being written: stop before it
                if length & ~DISCARD_BIT != payload:
                    bad = length & ~DISCARD_BIT
                    break
            else:
                good = n
            n = good
        try:
            if n:
                handle(chunk[:n * stride], n, clean)
        finally:
            chunk.release()
            if n:
                if _fence is not None:
                    _fence(_RELEASE)     # handle's reads before the producer may reuse the space
                self._cons_pos[0] = (cons + n * stride) & _POS_MASK
        if bad is not None:
            raise ValueError(f"ring record of {bad} bytes where {payload} were expected")
        return n
