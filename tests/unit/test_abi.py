"""The ABI header parses into the constants and structs Python relies on."""

import ctypes

import pytest

from ctbpf import abi


def test_layout_version_is_positive():
    assert abi.LAYOUT_VERSION >= 1


def test_struct_sizes_match_the_header_asserts():
    assert ctypes.sizeof(abi.CtKey) == 40
    assert ctypes.sizeof(abi.CtEntry) == 64
    assert ctypes.sizeof(abi.CtConfig) == 8 * abi.const("CT_CFG_MAX")
    assert ctypes.sizeof(abi.CtCounters) == 8 * abi.const("CT_STAT_MAX")


def test_tcp_states_follow_the_kernel_order():
    assert list(abi.TCP_STATE_NAMES.values()) == [
        "NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
        "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]


def test_counter_indices_fit_the_counter_array():
    reasons = abi.const("CT_INV_REASON_MAX")
    assert abi.const("CT_STAT_INVALID_BASE") + reasons <= abi.const("CT_STAT_MAX")
    assert max(abi.STAT_NAMES) < abi.const("CT_STAT_INVALID_BASE")
    # the datapath masks the reason with REASON_MAX - 1: it must be a power of two
    assert reasons & (reasons - 1) == 0


def test_config_slots_fit_and_tcp_timeouts_sit_at_their_state():
    assert abi.const("CT_CFG_LAYOUT_VERSION") < abi.const("CT_CFG_MAX")
    for value, name in abi.TCP_STATE_NAMES.items():
        assert abi.const(f"CT_CFG_TCP_TIMEOUT_{name}") == value


def test_parser_rejects_what_it_cannot_read(tmp_path):
    bad = tmp_path / "abi.h"
    bad.write_text("enum e { A, B = 2 };")
    with pytest.raises(abi.AbiError, match="explicit value"):
        abi.load(bad)
    bad.write_text("struct s { char *p; };")
    with pytest.raises(abi.AbiError, match="cannot parse field"):
        abi.load(bad)
