"""`ctbpf policy` takes its options anywhere among the targets, as its help's
own examples write them."""

from __future__ import annotations

import pytest

from ctbpf.cli.main import build_parser


def parse(*argv: str):
    a = build_parser().parse_args(["policy", *argv])
    return a.action, a.items, a.mode, a.force, a.explain, a.output


def test_options_before_after_and_between_targets():
    assert parse("set", "--mode", "enforce", "wan", "accept=established,related",
                 "new=tcp/22,tcp/443", "new_requires_syn=1", "--", "lan",
                 "accept=new,established,related") == (
        "set", ["wan", "accept=established,related", "new=tcp/22,tcp/443",
                "new_requires_syn=1", "lan", "accept=new,established,related"],
        "enforce", False, False, "text")
    assert parse("set", "wan", "accept=related", "--force", "--explain", "--", "lan:out",
                 "default=accept") == (
        "set", ["wan", "accept=related", "lan:out", "default=accept"], None, True, True, "text")
    assert parse("--mode", "observe", "set") == ("set", [], "observe", False, False, "text")
    assert parse("-o", "json") == ("show", [], None, False, False, "json")
    assert parse("clear", "wan", "lan:out") == ("clear", ["wan", "lan:out"], None, False,
                                                False, "text")


def test_a_bad_action_is_still_one_usage_line(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("sett", "wan")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ctbpf: error: argument action: invalid choice")
