"""A probe, not the shipped path: what would a whole-table sweep *in the
kernel* cost on this machine?

bpf_for_each_map_elem cannot be loaded through BCC 0.26 (see DESIGN.md), but
a BPF map-element iterator can: a BPF_PROG_TYPE_TRACING program named
`bpf_iter__bpf_map_elem` (BCC sets the BPF_TRACE_ITER attach type from that
name), attached to a map with libbcc's bcc_iter_attach() and run by reading
the fd bcc_iter_create() returns. The program below visits every entry of
its own hash map (the ct_entry layout and size of the real tables), deletes
the expired ones and counts them. It emits no DESTROY event and bumps no
per-CPU counter, so it is a lower bound for such a sweep.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time

from ctbpf import abi

_SOURCE = r"""
struct ct_key { u32 addr_lo[4]; u32 addr_hi[4]; u16 port_lo; u16 port_hi;
                u8 proto; u8 family; u16 icmp_query; };
struct ct_entry { u64 expires_ns; u64 created_ns; u64 packets[2]; u64 bytes[2];
                  u32 last_end; u8 state; u8 flags; u8 last_class; u8 last_dir; };
BPF_TABLE("hash", struct ct_key, struct ct_entry, probe_tbl, PROBE_ENTRIES);
BPF_ARRAY(probe_deleted, u64, 1);

/* struct bpf_iter__bpf_map_elem: four 8-byte context pointers */
struct probe_iter_ctx { void *meta; void *map; void *key; void *value; };

int bpf_iter__bpf_map_elem(struct probe_iter_ctx *ctx)
{
	struct ct_key *key = ctx->key, k;
	struct ct_entry *e = ctx->value;
	u32 zero = 0;

	if (!key || !e || e->expires_ns > bpf_ktime_get_ns())
		return 0;
	__builtin_memcpy(&k, key, sizeof(k));
	if (probe_tbl.delete(&k) == 0) {
		u64 *n = probe_deleted.lookup(&zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	return 0;
}
"""


class IterProbe:
    def __init__(self, entries: int) -> None:
        from bcc import BPF  # noqa: PLC0415
        from bcc.libbcc import lib  # noqa: PLC0415

        if ctypes.sizeof(abi.CtKey) != 40 or ctypes.sizeof(abi.CtEntry) != 56:
            raise RuntimeError("the probe's copy of ct_key/ct_entry is out of date")
        self._lib = lib
        lib.bcc_iter_attach.restype = ctypes.c_int
        lib.bcc_iter_attach.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        lib.bcc_iter_create.restype = ctypes.c_int
        lib.bcc_iter_create.argtypes = [ctypes.c_int]
        self._bpf = BPF(text=_SOURCE, cflags=[f"-DPROBE_ENTRIES={entries}"])
        fn = self._bpf.load_func(b"bpf_iter__bpf_map_elem", BPF.TRACING)
        self.map_fd = self._bpf[b"probe_tbl"].map_fd
        map_fd = ctypes.c_uint32(self.map_fd)   # union bpf_iter_link_info { .map.map_fd }
        self._link = lib.bcc_iter_attach(fn.fd, ctypes.byref(map_fd), ctypes.sizeof(map_fd))
        if self._link < 0:
            raise OSError(ctypes.get_errno(), "bcc_iter_attach failed")

    def sweep(self) -> tuple[float, int]:
        """Walk the whole map once in the kernel; (seconds, entries deleted)."""
        counter = self._bpf[b"probe_deleted"]
        counter[ctypes.c_int(0)] = ctypes.c_uint64(0)
        t0 = time.perf_counter()
        fd = self._lib.bcc_iter_create(self._link)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "bcc_iter_create failed")
        try:
            while True:
                try:
                    if not os.read(fd, 4096):
                        break
                except OSError as e:   # EAGAIN: a million objects visited, none printed
                    if e.errno != errno.EAGAIN:
                        raise
        finally:
            os.close(fd)
        return time.perf_counter() - t0, counter[ctypes.c_int(0)].value

    def close(self) -> None:
        if self._link >= 0:
            os.close(self._link)
            self._link = -1
        self._bpf.cleanup()
