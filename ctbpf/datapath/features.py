"""What this kernel lets ctbpf use, probed once per process.

Kernels differ in what they accept, and not only by version: one running
lockdown (integrity) with the BPF LSM, as distribution kernels with Secure
Boot do, refuses tracing programs with EPERM before the verifier runs, to
root with every capability. Each optional feature is tried once, for real,
and what the kernel refuses gets one line of ours and a fallback that the
tests cover on this kernel:

    feature      used for                       fallback when refused
    iterator     occupancy counted in the       batch reads of the tables
                 kernel (tracing program)       (ctbpf/datapath/occupancy.py)
    batch        BPF_MAP_*_BATCH reads/writes   one element per syscall
                                                (ctbpf/datapath/bpfsys.py)
    ring_mmap    the expiry index's ring read   every sweep walks the tables
                 through mmap                   (ctbpf/agent/sweeper.py)

Native XDP and TC are per interface and are found out where ctbpf attaches
(ctbpf/datapath/loader.py): native XDP falls back to generic with one line, and a
refused TC egress is a one-line error (there is nothing to fall back to).

CTBPF_DISABLE=iterator,batch,ring_mmap makes the probe report a feature as
refused without asking the kernel: the tests use it to run a fallback on a
kernel that has the feature, and it lets an operator step around a kernel
bug without a new build.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import mmap
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

from ctbpf.datapath import bpfsys

log = logging.getLogger(__name__)

NAMES = ("iterator", "batch", "ring_mmap")
DISABLE_ENV = bpfsys.DISABLE_ENV

_STRERROR = {os.strerror(n): n for n in errno_mod.errorcode}


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    errno: int | None = None   # what the kernel answered when it refused
    detail: str = ""           # why, in a few words, when refused

    @property
    def refusal(self) -> str:
        """'EPERM (tracing programs refused: lockdown or the BPF LSM)'."""
        code = errno_mod.errorcode.get(self.errno, str(self.errno)) if self.errno else ""
        return " ".join(p for p in (code, f"({self.detail})" if self.detail else "") if p)


def disabled() -> set[str]:
    return bpfsys.disabled_features()


def _forced(name: str) -> Feature | None:
    if name in disabled():
        return Feature(name, False, None, f"disabled by {DISABLE_ENV}")
    return None


@contextmanager
def captured_stderr():
    """Hold what C code (libbcc, clang, libbpf) writes on fd 2 while a probe
    runs: a refusal is ours to report in one line, not BCC's verifier dump.
    Yields a list that receives the text once the block ends."""
    out: list[str] = []
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            out.append(f.read().decode(errors="replace"))


def errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, or of BCC's bare Exception, whose message
    ends with strerror ("Failed to load BPF program ...: Operation not
    permitted")."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    text = str(exc)
    if text.startswith("Need super-user privileges"):   # BCC's words for EPERM
        return errno_mod.EPERM
    for message, code in _STRERROR.items():
        if text.rstrip().endswith(message):
            return code
    return None


_WHY = {errno_mod.EPERM: "refused by the kernel's security policy",
        errno_mod.EACCES: "refused by the kernel's security policy",
        errno_mod.EINVAL: "not supported by this kernel",
        errno_mod.ENOTSUP: "not supported by this kernel",
        524: "not supported by this kernel"}   # ENOTSUPP, the kernel's own


def probe_iterator():
    """(Feature, IterCounter or None): load the occupancy iterator."""
    forced = _forced("iterator")
    if forced:
        return forced, None
    try:
        from ctbpf.datapath.occupancy_iter import IterCounter  # noqa: PLC0415
        with captured_stderr() as said:
            counter = IterCounter()
    except Exception as e:  # noqa: BLE001 - BCC raises bare Exception; any failure: fallback
        code = errno_of(e)
        log.debug("occupancy iterator refused: %s; BCC said: %s", e, said[0] if said else "")
        if code == errno_mod.EPERM:   # root with CAP_BPF and CAP_PERFMON, refused anyway
            detail = "tracing programs refused: lockdown or the BPF LSM"
        else:
            detail = _WHY.get(code, " ".join(str(e).split())[:120])
        return Feature("iterator", False, code, detail), None
    return Feature("iterator", True), counter


def probe_batch() -> Feature:
    """Batch update and lookup on a small hash map of our own."""
    forced = _forced("batch")
    if forced:
        return forced
    code, what = bpfsys.probe_batch()
    if code is None:
        return Feature("batch", True)
    return Feature("batch", False, code, what or _WHY.get(code, ""))


def probe_ring_mmap() -> Feature:
    """A ring buffer map of our own, mapped as the sweeper maps ct_timers."""
    forced = _forced("ring_mmap")
    if forced:
        return forced
    from ctbpf.datapath.ringbuf import RingReader  # noqa: PLC0415

    try:
        fd = bpfsys.map_create(27, 0, 0, max(mmap.PAGESIZE, 4096))   # BPF_MAP_TYPE_RINGBUF
    except OSError as e:
        return Feature("ring_mmap", False, e.errno, "cannot create a ring buffer")
    try:
        RingReader(fd).close()
    except (OSError, ValueError) as e:
        code = getattr(e, "errno", None)
        return Feature("ring_mmap", False, code, _WHY.get(code, " ".join(str(e).split())[:120]))
    finally:
        os.close(fd)
    return Feature("ring_mmap", True)


class KernelFeatures:
    """The probes' answers, each asked once; the iterator is kept loaded
    for the metrics when the kernel accepts it."""

    def __init__(self, with_iterator: bool = True) -> None:
        self.batch = probe_batch()
        bpfsys.use_batch(self.batch.ok)
        self.ring_mmap = probe_ring_mmap()
        if with_iterator:
            self.iterator, self.iter_counter = probe_iterator()
        else:
            self.iterator, self.iter_counter = Feature("iterator", False, None, "not needed"), None

    @property
    def occupancy(self) -> str:
        """How the metrics count the tables: 'iterator' or 'batch'."""
        return "iterator" if self.iter_counter is not None else "batch"

    def all(self) -> list[Feature]:
        return [self.iterator, self.batch, self.ring_mmap]

    def line(self) -> str:
        """The one line the agent logs at start."""
        parts = []
        if self.iterator.ok:
            parts.append("occupancy counted by a BPF iterator")
        elif self.iterator.detail != "not needed":
            parts.append(f"occupancy counted from batch reads (iterator refused: "
                         f"{self.iterator.refusal})")
        parts.append("batch map operations" if self.batch.ok else
                     f"one map element per syscall (batch operations refused: "
                     f"{self.batch.refusal})")
        parts.append("expiry index read through mmap" if self.ring_mmap.ok else
                     f"sweeps walk the tables (ring buffer mmap refused: "
                     f"{self.ring_mmap.refusal})")
        return "kernel features: " + "; ".join(parts)

    def status(self) -> dict:
        """For daemon.json and the metrics: name -> 'yes' or the refusal."""
        return {f.name: "yes" if f.ok else (f.refusal or "no") for f in self.all()}

    def close(self) -> None:
        if self.iter_counter is not None:
            self.iter_counter.close()
            self.iter_counter = None
