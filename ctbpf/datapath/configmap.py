"""The config map (ct_config), the one place that reads and writes it.

ct_config is a one-element array of u64 slots that the datapath reads on
every packet: the tunables (slots named in ctbpf.tunables), the policy count
and the layout version. `ctbpf set`, `ctbpf config`, the daemon's reload on
SIGHUP, a resize and a layout migration all go through these functions, so a
tunable travels one hop: caller -> configmap -> the pinned map.

read_values/write_values refuse a map of another layout version: its slots
may mean something else, so they are not touched.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from ctbpf import abi, tunables
from ctbpf.datapath import bpfsys, pins
from ctbpf.errors import CtbpfError
from ctbpf.tunables import BY_NAME

MAP = "ct_config"
SIZE = ctypes.sizeof(abi.CtConfig)
VERSION_SLOT = abi.const("CT_CFG_LAYOUT_VERSION")
POLICIES_SLOT = abi.const("CT_CFG_POLICIES")
RESYNC_HOLD_SLOT = abi.const("CT_CFG_RESYNC_HOLD")
MAX_SLOT = abi.const("CT_CFG_MAX_ENTRIES")


def read_config(pin_dir: Path):
    cfg = abi.CtConfig()
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        bpfsys.lookup(fd, ctypes.c_uint32(0), cfg)
    finally:
        os.close(fd)
    return cfg


def write_config(pin_dir: Path, values: dict[str, int]) -> None:
    """Write every tunable; the slots that are not tunables (the policy
    count, for one) keep what is there."""
    write_raw_config(pin_dir, tunables.to_config(values, base=read_config(pin_dir)))


def write_raw_config(pin_dir: Path, cfg) -> None:
    """Write a whole ct_config value (abi.CtConfig) to the pinned array."""
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        bpfsys.update(fd, ctypes.c_uint32(0), cfg)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the running datapath


def layout_version(pin_dir: Path) -> int:
    """The layout version the pinned ct_config says its maps have."""
    return int(read_config(pin_dir).value[VERSION_SLOT])


def _read_raw(pin_dir: Path):
    cfg = read_config(pin_dir)
    version = cfg.value[VERSION_SLOT]
    if version != abi.LAYOUT_VERSION:
        raise CtbpfError(f"ct_config in {pins.display(pin_dir)} has layout version {version}, this build "
                         f"uses {abi.LAYOUT_VERSION}: not touching it")
    return cfg


def read_values(pin_dir: Path) -> dict[str, int]:
    """The datapath tunables in ct_config now."""
    return tunables.from_config(_read_raw(pin_dir))


def read_sizes(pin_dir: Path) -> tuple[int, int]:
    """(conntrack_max, new_max) of the running tables: what ct_assured may
    grow to with ct_new's part of it (ctbpf/datapath/sizing.py)."""
    fd = bpfsys.obj_get(str(pin_dir / "ct_new"))
    try:
        new_max = bpfsys.map_info(fd).max_entries
    finally:
        os.close(fd)
    return int(read_config(pin_dir).value[MAX_SLOT]), new_max


def set_max(pin_dir: Path, max_entries: int) -> None:
    """Record conntrack_max in ct_config (the loader does, at every load)."""
    cfg = read_config(pin_dir)
    if cfg.value[MAX_SLOT] != max_entries:
        cfg.value[MAX_SLOT] = max_entries
        write_raw_config(pin_dir, cfg)


def read_max(pin_dir: Path) -> int:
    """conntrack_max of the running tables."""
    return read_sizes(pin_dir)[0]


def write_values(pin_dir: Path, values: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Read-modify-write of ct_config: only the named slots change (slots
    this build does not know keep their value). Returns {name: (old, new)}
    for every name given."""
    cfg = _read_raw(pin_dir)
    before = {name: int(cfg.value[BY_NAME[name].slot]) for name in values}
    for name, value in values.items():
        cfg.value[BY_NAME[name].slot] = value
    write_raw_config(pin_dir, cfg)
    return {name: (before[name], values[name]) for name in values}


def set_policy_count(pin_dir: Path, count: int) -> None:
    """Tell the datapath how many policies there are (0: no lookup at all)."""
    cfg = read_config(pin_dir)
    if cfg.value[POLICIES_SLOT] != count:
        cfg.value[POLICIES_SLOT] = count
        write_raw_config(pin_dir, cfg)


# --------------------------------------------------------------------------
# any layout, by descriptor: what adoption and migration read and carry


def read_any_layout(fd: int) -> bytes:
    """The whole value of an open ct_config, whatever its layout's size."""
    buf = ctypes.create_string_buffer(bpfsys.map_info(fd).value_size)
    bpfsys.lookup(fd, ctypes.c_uint32(0), buf)
    return buf.raw


def version_in(raw: bytes) -> int:
    """The layout version slot of a raw ct_config of any layout; -1 when the
    value is too short to hold one."""
    if len(raw) < (VERSION_SLOT + 1) * 8:
        return -1
    return int.from_bytes(raw[VERSION_SLOT * 8:VERSION_SLOT * 8 + 8], sys.byteorder)


def max_in(raw: bytes) -> int:
    """conntrack_max in a raw ct_config of this layout; 0 when not there."""
    if len(raw) < (MAX_SLOT + 1) * 8:
        return 0
    return int.from_bytes(raw[MAX_SLOT * 8:MAX_SLOT * 8 + 8], sys.byteorder)


def write_as_this_layout(fd: int, raw: bytes) -> bool:
    """Write a (migrated) raw ct_config into an open ct_config of this
    build, stamped with this build's layout version; False when raw does not
    have this layout's size (the new map then keeps its defaults)."""
    if len(raw) != SIZE:
        return False
    cfg = abi.CtConfig.from_buffer_copy(raw)
    cfg.value[VERSION_SLOT] = abi.LAYOUT_VERSION
    bpfsys.update(fd, ctypes.c_uint32(0), cfg)
    return True


def set_resync_hold(fd: int, on: bool) -> None:
    """A rebuild's hold on its resync marks (ctbpf/agent/resync.py), in an
    open ct_config of this build: while on, no packet clears a mark."""
    cfg = abi.CtConfig()
    bpfsys.lookup(fd, ctypes.c_uint32(0), cfg)
    cfg.value[RESYNC_HOLD_SLOT] = int(on)
    bpfsys.update(fd, ctypes.c_uint32(0), cfg)


LISTENERS_SLOT = abi.const("CT_CFG_EVENT_LISTENERS")


def set_event_listeners(pin_dir: Path, n: int) -> None:
    """How many clients the daemon relays events to (0: the datapath emits
    none); written only when it differs."""
    fd = bpfsys.obj_get(str(pin_dir / MAP))
    try:
        cfg = abi.CtConfig()
        bpfsys.lookup(fd, ctypes.c_uint32(0), cfg)
        if cfg.value[LISTENERS_SLOT] != n:
            cfg.value[LISTENERS_SLOT] = n
            bpfsys.update(fd, ctypes.c_uint32(0), cfg)
    finally:
        os.close(fd)


LIBERAL_SLOT = abi.const("CT_CFG_TCP_BE_LIBERAL")   # the same slot in every layout so far


def make_liberal(fd: int) -> bytes:
    """tcp_be_liberal=1 in an open ct_config of any layout (a rebuild's old
    tables, while their programs are swapped one interface at a time);
    returns the value it had, for restore()."""
    raw = read_any_layout(fd)
    if len(raw) >= (LIBERAL_SLOT + 1) * 8:
        new = bytearray(raw)
        new[LIBERAL_SLOT * 8:LIBERAL_SLOT * 8 + 8] = (1).to_bytes(8, sys.byteorder)
        bpfsys.update(fd, ctypes.c_uint32(0), ctypes.create_string_buffer(bytes(new), len(new)))
    return raw


def restore(fd: int, raw: bytes) -> None:
    """Write back a ct_config value make_liberal() returned."""
    bpfsys.update(fd, ctypes.c_uint32(0), ctypes.create_string_buffer(raw, len(raw)))


def fast_path_on(pin_dir: Path) -> bool:
    """Whether the fast path forwards (the fast_path tunable)."""
    return bool(read_config(pin_dir).value[abi.const("CT_CFG_FAST_PATH")])
