"""The fast path's interfaces and counters (bpf/fastpath.h).

Each interface the agent attaches to has a slot: the same index in the
devmap the fast path redirects through and in ct_fwd_stats, its per-CPU
counters. ct_fwd_stats is pinned and names its interfaces, so `ctbpf stats`
and the metrics read it from any namespace, and a restart keeps an
interface's slot and its counts.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys, xdpfeatures

MAP = "ct_fwd_stats"
SLOTS = abi.const("CT_FWD_SLOTS")
_SIZE = ctypes.sizeof(abi.CtFwdCounters)
_STRIDE = (_SIZE + 7) & ~7
#: enum ct_fwd_stat, short names: rx_packets, ..., pass_not_attached.
STAT_NAMES = {v: n.lower() for v, n in abi.members("ct_fwd_stat", "CT_FWD_").items()
              if n != "STAT_MAX"}
PASS_CAUSES = {v: n[len("pass_"):] for v, n in STAT_NAMES.items() if n.startswith("pass_")}


class SlotsFull(RuntimeError):
    """More interfaces than ct_fwd_stats has slots for."""


def _read_slot(fd: int, slot: int) -> list:
    """Every CPU's copy of one slot."""
    ncpu = bpfsys.possible_cpus()
    buf = ctypes.create_string_buffer(_STRIDE * ncpu)
    bpfsys.lookup(fd, ctypes.c_uint32(slot), buf)
    return [abi.CtFwdCounters.from_buffer_copy(buf.raw, cpu * _STRIDE) for cpu in range(ncpu)]


def _write_slot(fd: int, slot: int, ifindex: int, name: str, keep: list | None) -> None:
    """Give a slot to an interface on every CPU; its counts are kept when
    `keep` (the slot as read) is given, else zeroed."""
    ncpu = bpfsys.possible_cpus()
    buf = ctypes.create_string_buffer(_STRIDE * ncpu)
    raw = name.encode()[:15]
    for cpu in range(ncpu):
        c = keep[cpu] if keep is not None else abi.CtFwdCounters()
        c.ifindex = ifindex
        ctypes.memset(ctypes.addressof(c.name), 0, 16)
        ctypes.memmove(ctypes.addressof(c.name), raw, len(raw))
        ctypes.memmove(ctypes.addressof(buf) + cpu * _STRIDE, ctypes.addressof(c), _SIZE)
    bpfsys.update(fd, ctypes.c_uint32(slot), buf)


def assign_slots(pin_dir: Path, ifaces: list[tuple[str, int]]) -> dict[int, int]:
    """Slots for these (name, ifindex) interfaces: the one an interface had
    (same index and name) keeps its counts, the others get a free slot with
    zero counts. Returns ifindex -> slot."""
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        slots = [_read_slot(fd, slot) for slot in range(SLOTS)]
        owner = {(c[0].ifindex, bytes(c[0].name).rstrip(b"\0").decode(errors="replace")): s
                 for s, c in enumerate(slots) if c[0].ifindex}
        keep = {owner[(index, name[:15])]: index for name, index in ifaces
                if (index, name[:15]) in owner}
        # Empty slots first; then those of interfaces no longer attached.
        spare = sorted((s for s in range(SLOTS) if s not in keep),
                       key=lambda s: (slots[s][0].ifindex != 0, s))
        out: dict[int, int] = {}
        for name, index in ifaces:
            slot = owner.get((index, name[:15]))
            if slot is None:
                if not spare:
                    raise SlotsFull(f"the fast path counts at most {SLOTS} interfaces")
                slot = spare.pop(0)
                _write_slot(fd, slot, index, name, None)
            out[index] = slot
        return out
    finally:
        os.close(fd)


def install(bpf, pin_dir: Path, ifaces: list[tuple[str, int]], native: set[str],
            veths: set[str]):
    """Fill a loaded datapath's fast-path maps (BCC object `bpf`) for these
    (name, ifindex) interfaces, `native` the names attached in native mode,
    `veths` those that are veths. Returns (ifindex -> ct_fwd_ifaces value,
    names that cannot send XDP frames while native-mode interfaces would
    forward to them)."""
    slots = assign_slots(pin_dir, ifaces)
    flags, no_xmit = {}, []
    for name, index in ifaces:
        f = slots[index]
        if name in native:
            f |= abi.const("CT_FWD_IF_NATIVE")
            # A local stack's frames through a veth may leave their L4
            # checksum to offload; an XDP frame would carry it unfinished.
            if name in veths:
                f |= abi.const("CT_FWD_IF_CSUM")
        if xdpfeatures.takes_xdp_frames(index):
            f |= abi.const("CT_FWD_IF_XMIT")
        elif native:
            no_xmit.append(name)
        flags[index] = f
    table, ports = bpf[b"ct_fwd_ifaces"], bpf[b"ct_fwd_ports"]
    for key in list(table.keys()):
        if key.value not in flags:
            del table[key]
    for _, index in ifaces:
        ports[ctypes.c_int(slots[index])] = ctypes.c_int(index)
        table[ctypes.c_uint32(index)] = ctypes.c_uint32(flags[index])
    return flags, no_xmit


def changed(flags: dict[int, int]) -> bool:
    """Whether an interface now sends XDP frames where it did not, or the
    other way round (a veth's peer got or lost GRO or an XDP program)."""
    xmit = abi.const("CT_FWD_IF_XMIT")
    return any(bool(f & xmit) != xdpfeatures.takes_xdp_frames(index)
               for index, f in flags.items())


def uninstall(bpf, pin_dir: Path, index: int) -> None:
    """An interface that is gone: out of the maps, its slot freed."""
    table = bpf[b"ct_fwd_ifaces"]
    key = ctypes.c_uint32(index)
    value = table.get(key)
    if value is None:
        return
    slot = value.value & abi.const("CT_FWD_IF_SLOT_MASK")
    del table[key]
    try:
        del bpf[b"ct_fwd_ports"][ctypes.c_int(slot)]
    except KeyError:
        pass   # the kernel removed it with the device
    release_slot(pin_dir, slot)


def copy_slots(old_dir: Path, new_dir: Path) -> None:
    """Every slot, counts included, from one pin dir's ct_fwd_stats to
    another's (a rebuild's new maps); nothing when the old has none. The
    packets forwarded between the copy and the swap are not carried: a
    rebuild's few milliseconds."""
    if not (old_dir / MAP).exists():
        return
    old, new = bpfsys.obj_get(str(old_dir / MAP)), bpfsys.obj_get(str(new_dir / MAP))
    try:
        if bpfsys.map_info(old).value_size != _SIZE:
            return
        ncpu = bpfsys.possible_cpus()
        buf = ctypes.create_string_buffer(_STRIDE * ncpu)
        for slot in range(SLOTS):
            bpfsys.lookup(old, ctypes.c_uint32(slot), buf)
            bpfsys.update(new, ctypes.c_uint32(slot), buf)
    finally:
        os.close(old)
        os.close(new)


def release_slot(pin_dir: Path, slot: int) -> None:
    """Free an interface's slot (it is gone)."""
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        _write_slot(fd, slot, 0, "", None)
    finally:
        os.close(fd)


def read(pin_dir: Path) -> dict[str, dict[str, int]]:
    """Counters per interface (by name), summed over CPUs; {} with no
    interface set up (or maps of a build without the fast path)."""
    if not (pin_dir / MAP).exists():
        return {}
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        out = {}
        for slot in range(SLOTS):
            copies = _read_slot(fd, slot)
            if not copies[0].ifindex:
                continue
            name = bytes(copies[0].name).rstrip(b"\0").decode(errors="replace")
            out[name or str(copies[0].ifindex)] = {
                n: sum(c.count[v] for c in copies) for v, n in STAT_NAMES.items()}
        return out
    finally:
        os.close(fd)


def text(per_iface: dict[str, dict[str, int]], on: bool) -> str:
    """`ctbpf stats`'s fast-path section."""
    lines = [f"fast path: {'on' if on else 'off'}"]
    for name, c in per_iface.items():
        passes = ", ".join(f"{cause} {c['pass_' + cause]}" for cause in PASS_CAUSES.values()
                           if c["pass_" + cause])
        lines.append(f"  {name:<16} forwarded in {c['rx_packets']} ({c['rx_bytes']} B), "
                     f"out {c['tx_packets']} ({c['tx_bytes']} B); "
                     f"passed up: {passes or 'none'}")
    return "\n".join(lines)
