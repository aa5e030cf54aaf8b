"""Argument and filter validation: one clear line, exit code 2, no traceback."""

import argparse

import pytest

from ctbpf import tunables
from ctbpf.cli import main as cli
from ctbpf.cli.filters import FlowFilter, parse_addr, parse_port, parse_proto, parse_state
from ctbpf.datapath import pins
from ctbpf.errors import UsageError


def _args(**kw):
    base = dict(proto=None, state=None, src=None, dst=None, sport=None, dport=None)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("text, number", [("tcp", 6), ("UDP", 17), ("icmpv6", 58), ("47", 47)])
def test_protocols_by_name_or_number(text, number):
    assert parse_proto(text) == number


@pytest.mark.parametrize("parse, bad", [(parse_proto, "tcpx"), (parse_proto, "256"),
                                        (parse_state, "OPEN"), (parse_addr, "10.0.0.300"),
                                        (parse_port, "70000"), (parse_port, "-1")])
def test_bad_values_are_usage_errors(parse, bad):
    with pytest.raises(UsageError) as e:
        parse(bad)
    assert "\n" not in str(e.value) and bad in str(e.value)


def test_listen_is_the_spec_name_of_syn_sent2():
    assert parse_state("listen") == "SYN_SENT2"


def test_filter_from_args():
    flt = FlowFilter.from_args(_args(proto="tcp", src="10.0.0.0/8", dport="22"))
    assert (flt.proto, flt.dport, str(flt.src)) == (6, 22, "10.0.0.0/8")


@pytest.mark.parametrize("argv", [["list", "-o", "xml"], ["nosuch"], ["run"], ["list", "--bogus"]])
def test_parser_errors_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ctbpf: error:")


def test_unsafe_pin_dir_is_refused():
    with pytest.raises(UsageError, match="pin dir"):
        pins.resolve('/sys/fs/bpf/a"b')


def test_tunable_defaults_are_the_spec_table():
    d = tunables.defaults()
    assert (d["tcp_timeout_syn_sent"], d["tcp_timeout_syn_recv"], d["tcp_timeout_established"],
            d["tcp_timeout_fin_wait"], d["tcp_timeout_time_wait"], d["tcp_timeout_close"],
            d["tcp_timeout_close_wait"], d["tcp_timeout_last_ack"],
            d["tcp_timeout_syn_sent2"]) == (120, 60, 432000, 120, 120, 10, 43200, 30, 120)
    assert (d["udp_timeout"], d["udp_timeout_stream"], d["icmp_timeout"],
            d["generic_timeout"], d["tcp_loose"]) == (30, 180, 30, 600, 1)


def test_config_round_trip():
    values = dict(tunables.defaults(), tcp_timeout_established=3600, tcp_loose=0)
    assert tunables.from_config(tunables.to_config(values)) == values
