"""C and Python agree on every shared struct: the layout clang gives the
maps' keys and values (BCC's Key/Leaf types) equals the one ctbpf.abi
parses from bpf/abi.h. Compiles the real program; needs root."""

import ctypes
import os
import uuid
from pathlib import Path

import pytest

from ctbpf import abi
from ctbpf.datapath import loader

pytestmark = pytest.mark.bpf


def _layout(struct):
    fields = []
    for name, ftype in struct._fields_:
        fields.append((name, getattr(struct, name).offset, ctypes.sizeof(ftype)))
    return fields, ctypes.sizeof(struct)


@pytest.fixture(scope="module")
def compiled():
    if os.geteuid() != 0:
        pytest.skip("needs root to compile and create BPF maps")
    bcc = pytest.importorskip("bcc")
    pin_dir = Path(f"/sys/fs/bpf/ctbpf-layout-{uuid.uuid4().hex[:8]}")
    pin_dir.mkdir()
    try:
        b = bcc.BPF(text=loader.program_source().encode(),
                    cflags=[f'-DCT_PIN_DIR="{pin_dir}"', "-DCT_MAX_ENTRIES=64", "-Wno-unused-function"])
        yield b
        b.cleanup()
    finally:
        loader.remove_pins(pin_dir)


@pytest.mark.parametrize("table, key, leaf", [
    ("ct_new", abi.CtKey, abi.CtEntry),
    ("ct_assured", abi.CtKey, abi.CtEntry),
    ("ct_config", ctypes.c_uint32, abi.CtConfig),
    ("ct_stats", ctypes.c_uint32, abi.CtCounters),
])
def test_map_layout_matches_abi(compiled, table, key, leaf):
    t = compiled[table.encode()]
    if issubclass(key, ctypes.Structure):
        assert _layout(t.Key) == _layout(key)
    else:
        assert ctypes.sizeof(t.Key) == ctypes.sizeof(key)
    got = t.Leaf._type_ if hasattr(t.Leaf, "_length_") else t.Leaf  # per-CPU: one per CPU
    assert _layout(got) == _layout(leaf)
