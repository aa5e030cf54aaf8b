"""The sweep program (ctbpf_sweep), run by BPF_PROG_TEST_RUN on batches of
keys: it deletes the entries that are due (or that a user deletes) inside
the kernel, with the datapath's own expiry rule, so a flow that saw a packet
a moment ago is never removed by a stale user-space view.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys
from ctbpf.datapath.pins import PROG_SWEEP

def _run_sweep(prog_fd: int, keys: bytes, mode: int, table_id: int = 0) -> list[bool]:
    """Run the sweep program over raw keys, CT_SWEEP_BATCH at a time. In
    CT_SWEEP_USER mode, returns per key whether it was deleted; otherwise
    one True per deleted key."""
    key_size = ctypes.sizeof(abi.CtKey)
    per_run = abi.const("CT_SWEEP_BATCH")
    head = ctypes.sizeof(abi.CtSweepHeader)
    user = mode == abi.const("CT_SWEEP_USER")
    results: list[bool] = []
    for start in range(0, len(keys), per_run * key_size):
        chunk = keys[start:start + per_run * key_size]
        count = len(chunk) // key_size
        header = bytes(abi.CtSweepHeader(table=table_id, count=count, mode=mode))
        if not user:
            results += [True] * bpfsys.prog_test_run(prog_fd, header + chunk).retval
            continue
        # key slots padded to a full batch, then one result byte per slot
        data = header + chunk + bytes((per_run - count) * key_size) + bytes(per_run)
        out = bpfsys.prog_test_run(prog_fd, data).data_out
        at = head + per_run * key_size
        results += [b == 1 for b in out[at:at + count]]
    return results


class DueResult:
    """What the sweep program did with the due keys it was given."""

    __slots__ = ("deleted", "gone", "kept_keys", "kept_expiries")

    def __init__(self) -> None:
        self.deleted = 0
        self.gone = 0
        self.kept_keys = bytearray()    # raw keys of entries that saw traffic since
        self.kept_expiries: list[int] = []   # ... and their current expiry (ticks)


def sweep_due_keys(prog_fd: int, keys, out: DueResult | None = None,
                   runner: bpfsys.TestRunner | None = None) -> DueResult:
    """Run the sweep program in CT_SWEEP_DUE mode over raw keys (back to
    back), CT_SWEEP_BATCH per run: still-expired entries are deleted in the
    kernel; the others are reported with their current expiry. A runner
    from due_runner() saves the buffers' set-up on repeated calls."""
    out = out if out is not None else DueResult()
    runner = runner if runner is not None else due_runner(prog_fd)
    key_size = ctypes.sizeof(abi.CtKey)
    per_run = abi.const("CT_SWEEP_BATCH")
    deleted, gone = abi.const("CT_DUE_DELETED"), abi.const("CT_DUE_GONE")
    head = ctypes.sizeof(abi.CtSweepHeader)
    results_at = head + per_run * key_size
    count_at = abi.CtSweepHeader.count.offset
    mv = memoryview(keys)
    data_in = runner.data_in
    results = memoryview(runner.data_out)[results_at:results_at + 8 * per_run].cast("Q")
    for start in range(0, len(mv), per_run * key_size):
        chunk = mv[start:start + per_run * key_size]
        count = len(chunk) // key_size
        struct.pack_into("=I", data_in, count_at, count)
        data_in[head:head + len(chunk)] = chunk
        runner.run()
        values = results[:count].tolist()
        n_deleted = values.count(deleted)
        n_gone = values.count(gone)
        out.deleted += n_deleted
        out.gone += n_gone
        if n_deleted + n_gone == count:
            continue
        for i, v in enumerate(values):
            if v > gone:
                out.kept_keys += chunk[i * key_size:(i + 1) * key_size]
                out.kept_expiries.append(v)
    return out


def due_runner(prog_fd: int) -> bpfsys.TestRunner:
    """Reusable buffers for sweep_due_keys: a CT_SWEEP_DUE header, a full
    batch of key slots, and room for the results."""
    per_run = abi.const("CT_SWEEP_BATCH")
    size = ctypes.sizeof(abi.CtSweepHeader) + per_run * (ctypes.sizeof(abi.CtKey) + 8)
    runner = bpfsys.TestRunner(prog_fd, size)
    runner.data_in[:ctypes.sizeof(abi.CtSweepHeader)] = bytes(
        abi.CtSweepHeader(mode=abi.const("CT_SWEEP_DUE")))
    return runner


def sweep_keys(prog_fd: int, table_id: int, keys: bytes) -> int:
    """Delete those of these keys of one table that are still expired."""
    return sum(_run_sweep(prog_fd, keys, abi.const("CT_SWEEP_EXPIRED"), table_id))


def user_delete_keys(pin_dir: Path, keys: bytes) -> list[bool]:
    """`ctbpf delete`: delete these keys from whichever table holds them,
    through the pinned sweep program (DESTROY events, CT_STAT_USER_DELETE)."""
    fd = bpfsys.obj_get(str(pin_dir / PROG_SWEEP))
    try:
        return _run_sweep(fd, keys, abi.const("CT_SWEEP_USER"))
    finally:
        os.close(fd)
