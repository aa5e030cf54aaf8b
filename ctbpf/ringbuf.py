"""A consumer of a BPF ring buffer map through mmap: records are read where
the kernel wrote them, many per call, with no syscall at all.

The kernel's layout (kernel/bpf/ringbuf.c, uapi BPF_RINGBUF_*): page 0 holds
the consumer position (ours to write), page 1 the producer position, then the
data area, mapped twice in a row so that a record crossing the end is still
contiguous. Each record starts with an 8-byte header: u32 length with the
BUSY (still being written) and DISCARD bits, u32 page offset; records are
8-byte aligned.
"""

from __future__ import annotations

import mmap
import os
import struct

from . import bpfsys

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")


def record_size(payload: int) -> int:
    """Bytes one record of `payload` bytes takes in the ring."""
    return (payload + HEADER_SIZE + 7) & ~7


class RingReader:
    """Reads the records of one ring buffer map (an fd it duplicates)."""

    def __init__(self, map_fd: int) -> None:
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
        self._data = memoryview(self._prod)[page:]

    def close(self) -> None:
        if self._fd < 0:
            return
        self._data.release()
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
        return _U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

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
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]   # x86 loads are not reordered
        n = min(prod - cons, max_records * stride, self.size) // stride
        if n <= 0:
            return 0
        start = cons & self._mask
        chunk = self._data[start:start + n * stride]
        lengths = chunk.cast("I")[0::stride // 4].tolist()   # each record's u32 header word
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
            _U64.pack_into(self._cons, 0, cons + n * stride)
        if bad is not None:
            raise ValueError(f"ring record of {bad} bytes where {payload} were expected")
        return n

