"""Maps already pinned where a datapath loads: reused only when they are of
this build's layout and of the sizes asked for (ctbpf/datapath/sizing.py)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import bpfsys, configmap, sizing
from ctbpf.datapath.configmap import layout_version
from ctbpf.datapath.pins import MAP_NAMES, display
from ctbpf.errors import CtbpfError


def check_pinned(pin_dir: Path, sz: sizing.Sizes) -> bool:
    """Check maps already pinned in pin_dir against this build. Returns True
    when they exist and will be reused; raises when they cannot be."""
    present = [name for name in MAP_NAMES if (pin_dir / name).exists()]
    if not present:
        return False
    key = ctypes.sizeof(abi.CtKey)
    expect = {"ct_new": (key, ctypes.sizeof(abi.CtEntry), sz.new_max),
              "ct_assured": (key, ctypes.sizeof(abi.CtEntry), sz.assured),
              "ct_acct": (key, ctypes.sizeof(abi.CtAcct), sz.acct),
              "ct_config": (4, configmap.SIZE, 1),
              "ct_stats": (4, ctypes.sizeof(abi.CtCounters), 1),
              "ct_events": (0, 0, None),  # ring buffers: their size is not ours to check
              "ct_timers": (0, 0, None),
              "ct_policy": (ctypes.sizeof(abi.CtPolicyKey), ctypes.sizeof(abi.CtPolicy), None),
              "ct_verdicts": (4, ctypes.sizeof(abi.CtVerdictCounts), 1),
              # The stages' hand-over (bpf/scratch.h) holds nothing between
              # packets; its value is the datapath's own business.
              "ct_scratch": (4, None, 2),
              "ct_jump_xdp": (4, 4, abi.const("CT_JUMP_SLOTS")),
              "ct_jump_tc": (4, 4, abi.const("CT_JUMP_SLOTS")),
              "ct_fwd_stats": (4, ctypes.sizeof(abi.CtFwdCounters), abi.const("CT_FWD_SLOTS"))}
    if "ct_config" in present:
        version = layout_version(pin_dir)
        if version != abi.LAYOUT_VERSION:
            raise CtbpfError(f"maps pinned in {display(pin_dir)} have layout version {version}, this "
                             f"build uses {abi.LAYOUT_VERSION}: they cannot be reused as they "
                             f"are (`ctbpf run` migrates them, or drops them with "
                             f"--discard-state)")
    for name in present:
        fd = bpfsys.obj_get(str(pin_dir / name))
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        key_size, value_size, entries = expect[name]
        if value_size is None:
            value_size = info.value_size
        if (info.key_size, info.value_size) != (key_size, value_size):
            raise CtbpfError(f"{display(pin_dir / name)} holds {info.key_size}/{info.value_size}-byte "
                             f"keys/values, this build needs {key_size}/{value_size}")
        if entries is not None and info.max_entries != entries:
            raise CtbpfError(f"{display(pin_dir / name)} was created for {info.max_entries} entries, "
                             f"not {entries} (max {sz.max_entries}, new_max {sz.new_max}): "
                             f"start with the max and new_max it was made with to keep "
                             f"its flows")
    return True


def pinned_size(pin_dir: Path, name: str) -> int | None:
    """max_entries of a map pinned in pin_dir, None when there is none."""
    if not (pin_dir / name).exists():
        return None
    fd = bpfsys.obj_get(str(pin_dir / name))
    try:
        return bpfsys.map_info(fd).max_entries
    finally:
        os.close(fd)
