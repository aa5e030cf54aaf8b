"""Tunables by name, `ctbpf set` arguments, the TOML config file, sources
and the SIGHUP reload: parsing and validation, without root or BPF."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ctbpf import abi, tunables
from ctbpf.agent import configfile, reloader, tuning
from ctbpf.agent.configfile import ConfigErrors, parse_assignments, parse_text, parse_value
from ctbpf.cli import configview, main as cli
from ctbpf.datapath import loader, sizing
from ctbpf.errors import UsageError

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy" / "ctbpf.toml"
T = tunables.ALL_BY_NAME


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------
# the tunables themselves


def test_every_tunable_has_a_unique_slot_below_the_layout_version():
    slots = [t.slot for t in tunables.TUNABLES]
    assert len(set(slots)) == len(slots)
    assert all(0 < s < abi.const("CT_CFG_LAYOUT_VERSION") for s in slots)
    assert all(t.minimum <= t.default <= t.maximum for t in tunables.ALL)


def test_the_issue_names_are_all_there():
    names = set(tunables.ALL_BY_NAME)
    for name in ("tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_established",
                 "tcp_timeout_fin_wait", "tcp_timeout_close_wait", "tcp_timeout_last_ack",
                 "tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_max_retrans",
                 "tcp_timeout_unacknowledged", "udp_timeout", "udp_timeout_stream",
                 "icmp_timeout", "icmpv6_timeout", "generic_timeout", "tcp_loose",
                 "tcp_be_liberal", "tcp_max_retrans", "max", "buckets"):
        assert name in names, name
    assert all(not n.startswith("nf_conntrack_") for n in names)


def test_events_exists_exactly_when_the_abi_has_its_slot():
    assert ("events" in tunables.BY_NAME) == ("CT_CFG_EVENTS" in abi.CONSTS)
    if "events" in tunables.BY_NAME:
        ev = tunables.BY_NAME["events"]
        assert (ev.slot, ev.default, ev.unit) == (abi.const("CT_CFG_EVENTS"), 1, "bool")


def test_limits_agree_with_the_loader():
    assert (T["max"].minimum, T["max"].maximum) == (loader.MIN_ENTRIES, loader.MAX_ENTRIES)
    assert T["max"].default == tunables.DEFAULT_MAX == 65536
    assert T["buckets"].default * 8 == T["max"].default
    assert T["max"].name not in tunables.BY_NAME  # not a ct_config slot


def test_run_max_defaults_to_none_so_the_config_file_can_give_it():
    args = cli.build_parser().parse_args(["run", "--iface", "x", "--config", "/a.toml"])
    assert args.max is None and args.config == "/a.toml"


# --------------------------------------------------------------------------
# values


@pytest.mark.parametrize("raw, want", [("3600", 3600), (" 42 ", 42), (3600, 3600), ("+7", 7)])
def test_timeouts_take_integer_seconds(raw, want):
    assert parse_value(T["tcp_timeout_established"], raw) == want


@pytest.mark.parametrize("raw", ["abc", "1.5", "", "1h", "3_600", 1.5, True, [1], {"a": 1}])
def test_timeouts_refuse_other_types(raw):
    with pytest.raises(UsageError) as e:
        parse_value(T["tcp_timeout_established"], raw)
    msg = one_line(e.value)
    assert msg.startswith("tcp_timeout_established: expected an integer number of seconds, got ")


def test_the_issue_example_message():
    with pytest.raises(UsageError) as e:
        parse_value(T["tcp_timeout_established"], "abc")
    assert str(e.value) == ("tcp_timeout_established: expected an integer number of seconds, "
                            "got 'abc'")


@pytest.mark.parametrize("name, raw", [("tcp_timeout_established", "0"),
                                       ("tcp_timeout_established", 2592001),
                                       ("udp_timeout", "-5"), ("tcp_max_retrans", "256"),
                                       ("max", "8"), ("max", 1 << 27), ("buckets", 1)])
def test_out_of_range_names_the_allowed_range(name, raw):
    t = T[name]
    with pytest.raises(UsageError) as e:
        parse_value(t, raw)
    msg = one_line(e.value)
    assert msg.startswith(f"{name}: {int(raw)} is out of range: allowed ")
    assert f"{t.minimum} to {t.maximum}" in msg


@pytest.mark.parametrize("raw, want", [("1", 1), ("0", 0), ("true", 1), ("False", 0),
                                       ("YES", 1), ("no", 0), ("on", 1), ("off", 0),
                                       (True, 1), (False, 0), (1, 1), (0, 0)])
def test_booleans(raw, want):
    assert parse_value(T["tcp_loose"], raw) == want


@pytest.mark.parametrize("raw", ["2", "maybe", "", 2, -1, 0.0])
def test_bad_booleans_list_the_allowed_words(raw):
    with pytest.raises(UsageError) as e:
        parse_value(T["tcp_loose"], raw)
    assert one_line(e.value).startswith(
        "tcp_loose: expected 0/1, true/false, yes/no or on/off, got ")


# --------------------------------------------------------------------------
# names


def test_unknown_name_with_a_close_match():
    msg = configfile.unknown_message("tcp_timeout_establishd")
    assert msg == "tcp_timeout_establishd: unknown tunable; did you mean tcp_timeout_established?"


@pytest.mark.parametrize("name, hint", [("nf_conntrack_tcp_loose", "tcp_loose"),
                                        ("net.netfilter.nf_conntrack_udp_timeout", "udp_timeout"),
                                        ("nf_conntrack_max", "max"), ("hashsize", "buckets"),
                                        ("conntrack_max", "max")])
def test_kernel_spellings_are_pointed_to_ours(name, hint):
    assert f"did you mean {hint}?" in configfile.unknown_message(name)


def test_unknown_name_without_a_match_lists_the_known_names():
    msg = configfile.unknown_message("zzz")
    assert msg.startswith("zzz: unknown tunable; known: ")
    assert all(name in msg for name in tunables.ALL_BY_NAME)


# --------------------------------------------------------------------------
# `ctbpf set` arguments


def test_assignments():
    got = parse_assignments(["tcp_timeout_established=3600", "tcp_loose=off", "max=65536",
                             "buckets=8192"])
    assert got == {"tcp_timeout_established": 3600, "tcp_loose": 0, "max": 65536,
                   "buckets": 8192}
    assert list(got) == ["tcp_timeout_established", "tcp_loose", "max", "buckets"]


def test_every_bad_assignment_is_reported_one_line_each():
    with pytest.raises(ConfigErrors) as e:
        parse_assignments(["tcp_timeout_established=abc", "tcp_loose=1", "bogus=1",
                           "udp_timeout=0", "noequals", "=5", "tcp_loose=0"])
    p = e.value.problems
    assert len(p) == 6, p
    assert p[0] == "tcp_timeout_established: expected an integer number of seconds, got 'abc'"
    assert p[1].startswith("bogus: unknown tunable")
    assert p[2].startswith("udp_timeout: 0 is out of range")
    assert p[3].startswith("noequals: expected NAME=VALUE")
    assert p[4].startswith("=5: expected NAME=VALUE")
    assert p[5] == "tcp_loose: given twice"
    assert all("\n" not in line for line in p)
    assert e.value.exit_code == 2


def test_set_refuses_bad_pairs_before_looking_for_a_tracker(capsys, tmp_path):
    rc = cli.main(["set", "tcp_loose=maybe", "nosuch=1", "--pin-dir", str(tmp_path / "none")])
    assert rc == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["ctbpf: error: tcp_loose: expected 0/1, true/false, yes/no or on/off, "
                   "got 'maybe'",
                   "ctbpf: error: nosuch: unknown tunable; known: "
                   + ", ".join(tunables.ALL_BY_NAME)]


def test_set_needs_at_least_one_pair(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["set"])
    assert e.value.code == 2


def test_limits_on_a_running_tracker():
    assert tuning.check_limits({"max": 65536, "buckets": 8192, "tcp_loose": 0}, 65536) == []
    (p,) = tuning.check_limits({"max": 131072}, 65536)
    assert p.startswith("max: the table size is fixed while the tracker runs (max 65536 now)")
    assert "`ctbpf run --max 131072`" in p
    (p,) = tuning.check_limits({"buckets": 100}, 65536)
    assert p.startswith("buckets: ") and "--max 800`" in p


def test_set_values_resizes_before_writing_tunables(monkeypatch):
    import ctbpf.agent.resize as resize

    calls = []
    monkeypatch.setattr(tuning, "read_max", lambda pin_dir: 65536)
    monkeypatch.setattr(resize, "apply_limits",
                        lambda pin_dir, v: calls.append(("resize", dict(v))) or ["max: resized"])
    monkeypatch.setattr(tuning, "write_values",
                        lambda pin_dir, v: calls.append(("write", dict(v))) or {})
    lines = tuning.set_values(Path("/nowhere"), {"tcp_loose": 0, "max": 1024})
    assert calls == [("resize", {"tcp_loose": 0, "max": 1024}), ("write", {"tcp_loose": 0})]
    assert lines[0] == "max: resized"


def test_set_values_reports_each_change(monkeypatch):
    state = {"tcp_timeout_established": 432000, "tcp_loose": 1}
    monkeypatch.setattr(tuning, "read_max", lambda pin_dir: 65536)

    def fake_write(pin_dir, values):
        out = {n: (state[n], v) for n, v in values.items()}
        state.update(values)
        return out

    monkeypatch.setattr(tuning, "write_values", fake_write)
    lines = tuning.set_values(Path("/nowhere"), {"tcp_timeout_established": 3600,
                                                 "tcp_loose": 1, "max": 65536})
    assert lines == ["tcp_timeout_established: 432000 -> 3600", "tcp_loose: 1 (unchanged)",
                     "max: 65536 (unchanged)"]


# --------------------------------------------------------------------------
# the config file


def test_a_valid_file():
    cfg = parse_text("max = 4096\n[tunables]\ntcp_timeout_established = 3600\n"
                     "tcp_loose = false\nudp_timeout = \"45\"\n", "/etc/ctbpf.toml")
    assert cfg.tunables == {"tcp_timeout_established": 3600, "tcp_loose": 0, "udp_timeout": 45}
    assert (cfg.max, cfg.buckets, cfg.effective_max()) == (4096, None, 4096)
    values = cfg.datapath_values()
    assert values == dict(tunables.defaults(), tcp_timeout_established=3600, tcp_loose=0,
                          udp_timeout=45)
    assert cfg.given() == {"tcp_timeout_established": 3600, "tcp_loose": 0, "udp_timeout": 45,
                           "max": 4096}
    assert re.fullmatch(r"[0-9a-f]{64}", cfg.digest)


def test_empty_file_is_all_defaults():
    cfg = parse_text("")
    assert cfg.tunables == {} and cfg.effective_max() is None
    assert cfg.datapath_values() == tunables.defaults()


def test_buckets_gives_max_when_max_is_not_given():
    assert parse_text("buckets = 1024\n").effective_max() == 8192
    assert parse_text("buckets = 1024\nmax = 5000\n").effective_max() == 5000
    assert parse_text("[tunables]\nbuckets = 16\n").effective_max() == 128


def test_effective_max_precedence():
    cfg = parse_text("max = 4096\n")
    assert configfile.effective_max(1000, cfg) == 1000      # --max wins
    assert configfile.effective_max(None, cfg) == 4096
    assert configfile.effective_max(None, parse_text("")) == 65536
    assert configfile.effective_max(None, None) == 65536


@pytest.mark.parametrize("text, expect", [
    ("[tunables]\ntcp_timeout_established = \"abc\"\n",
     "f.toml: [tunables] tcp_timeout_established: expected an integer number of seconds, "
     "got 'abc'"),
    ("[tunables]\ntcp_timeout_established = 0\n",
     "f.toml: [tunables] tcp_timeout_established: 0 is out of range: allowed 1 to 2592000 "
     "seconds"),
    ("[tunables]\ntcp_loose = 2\n",
     "f.toml: [tunables] tcp_loose: expected 0/1, true/false, yes/no or on/off, got 2"),
    ("[tunables]\ntcp_timeout_established = 3600.0\n",
     "f.toml: [tunables] tcp_timeout_established: expected an integer number of seconds, "
     "got 3600.0"),
    ("[tunables]\ntcp_timeout_establishd = 1\n",
     "f.toml: [tunables] tcp_timeout_establishd: unknown tunable; did you mean "
     "tcp_timeout_established?"),
    ("max = \"lots\"\n", "f.toml: max: expected an integer, got 'lots'"),
    ("max = 1\n", "f.toml: max: 1 is out of range: allowed 16 to 67108864"),
    ("max = 1024\n[tunables]\nmax = 1024\n",
     "f.toml: max is given twice (top level and [tunables])"),
    ("tcp_loose = 0\n", "f.toml: tcp_loose belongs in the [tunables] table"),
    ("colour = 1\n", "f.toml: unknown key 'colour' at the top level; the file holds top-level "
                     "max and buckets and mode, a [tunables] table and "
                     "[policy.in.IFACE] / [policy.out.IFACE] tables"),
    ("[tunable]\ntcp_loose = 0\n", "f.toml: unknown table [tunable]; the file holds top-level "
                                   "max and buckets and mode, a [tunables] table and "
                                   "[policy.in.IFACE] / [policy.out.IFACE] tables"),
    ('mode = "strict"\n', "f.toml: mode: 'strict' is not a mode; allowed: observe, enforce"),
    ('[policy.in.wan]\naccept = ["establish"]\n', "f.toml: [policy.in.wan].accept: unknown "
     "state 'establish'; allowed: new, established, related, invalid, untracked"),
    ('[policy.in.wan]\nnew = ["tcp/99999"]\n', "f.toml: [policy.in.wan].new: port '99999' "
     "must be a number from 1 to 65535"),
    ('[policy.in.wan]\nnew = ["ftp/21"]\n', "f.toml: [policy.in.wan].new: unknown protocol "
     "'ftp' in 'ftp/21'; allowed: ah, any, esp, gre, icmp, icmpv6, ipv6-icmp, sctp, tcp, udp, "
     "udplite or a number 1-255"),
    ('[policy.sideways.wan]\n', "f.toml: [policy.sideways]: unknown direction; allowed: in, "
     "out ([policy.in.IFACE] for packets arriving, [policy.out.IFACE] for packets the host "
     "sends)"),
    ('[policy.in.wan]\naccept = ["new"]\n', "policy in.wan: established is not accepted and "
     "the default is drop, which cuts off every connection through wan (this session's too); "
     "add force = true (or --force) if you mean it"),
    ("tunables = 3\n", "f.toml: tunables must be a table ([tunables]), got 3"),
    ("[tunables]\n[tunables.x]\n", "f.toml: [tunables] x: unknown tunable; known: "
     + ", ".join(tunables.ALL_BY_NAME)),
])
def test_bad_files_get_one_line_naming_the_key(text, expect):
    with pytest.raises(UsageError) as e:
        parse_text(text, "f.toml")
    assert one_line(e.value) == expect
    assert e.value.exit_code == 2


def test_toml_syntax_errors_give_the_line():
    with pytest.raises(UsageError) as e:
        parse_text("[tunables\n", "f.toml")
    msg = one_line(e.value)
    assert msg.startswith("f.toml: not valid TOML: ") and "line 1" in msg


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(UsageError) as e:
        configfile.load_file(tmp_path / "nope.toml")
    assert one_line(e.value) == f"config file {tmp_path / 'nope.toml'}: No such file or directory"
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not UTF-8"):
        configfile.load_file(binary)


def _uncommented(text: str) -> str:
    return re.sub(r"(?m)^#(\w+ = )", r"\1", text)


def test_the_deployed_file_is_valid_and_changes_nothing():
    text = DEPLOY.read_text()
    cfg = configfile.load_file(DEPLOY)
    assert cfg.tunables == {} and cfg.effective_max() is None
    # Every setting is there, commented, with its default: uncommenting them
    # all gives a valid file that sets every tunable to its default.
    full = parse_text(_uncommented(text), DEPLOY)
    assert set(full.given()) == set(tunables.ALL_BY_NAME)
    assert full.given() == {t.name: t.default for t in tunables.ALL}


# --------------------------------------------------------------------------
# sources


def _fake_datapath(monkeypatch, values, max_entries=65536, status=None, path=None, text=""):
    monkeypatch.setattr(configview, "read_values", lambda pin_dir: dict(tunables.defaults(), **values))
    monkeypatch.setattr(configview, "read_max", lambda pin_dir: max_entries)
    monkeypatch.setattr(configview, "table_sizes", lambda pin_dir: (
        sizing.default_new_max(max_entries),
        min(sizing.ASSURED_START, max_entries - sizing.default_new_max(max_entries)),
        sizing.ACCT_START))
    if path is not None:
        path.write_text(text)
        status = dict(status or {}, config=str(path), pid=123,
                      config_sha256=parse_text(text).digest)
    monkeypatch.setattr(configview, "daemon_status", lambda pin_dir: status)


def _sources(desc):
    return {r["name"]: (r["value"], r["source"]) for r in desc["tunables"]}


def test_sources_without_a_file(monkeypatch):
    _fake_datapath(monkeypatch, {"tcp_loose": 0})
    desc = configview.describe(Path("/p"))
    s = _sources(desc)
    assert s["tcp_loose"] == (0, "set")
    assert s["udp_timeout"] == (30, "default")
    assert s["max"] == (65536, "default") and s["buckets"] == (8192, "default")
    assert desc["config_file"] is None and desc["note"] is None
    assert [r["name"] for r in desc["tunables"]] == [*tunables.ALL_BY_NAME, "new_max",
                                                     "assured_size", "acct_size"]
    assert s["new_max"] == (4096, "default") and s["assured_size"] == (16384, "default")
    out = configview.text(desc)
    assert out.splitlines()[0].split() == ["NAME", "VALUE", "DEFAULT", "SOURCE"]
    assert out.splitlines()[-1] == "config file: none"


def test_sources_default_file_set(monkeypatch, tmp_path):
    text = "buckets = 512\n[tunables]\ntcp_timeout_established = 7200\nudp_timeout = 45\n" \
           "icmp_timeout = 30\n"
    _fake_datapath(monkeypatch, {"tcp_timeout_established": 7200, "udp_timeout": 30,
                                 "generic_timeout": 60}, max_entries=4096,
                   path=tmp_path / "c.toml", text=text)
    desc = configview.describe(Path("/p"))
    s = _sources(desc)
    assert s["tcp_timeout_established"] == (7200, "file")
    assert s["icmp_timeout"] == (30, "file")          # the file gives the default value
    assert s["udp_timeout"] == (30, "default")        # set back to the default at runtime
    assert s["generic_timeout"] == (60, "set")
    assert s["tcp_loose"] == (1, "default")
    assert s["max"] == (4096, "file") and s["buckets"] == (512, "file")
    assert desc["config_file"] == str(tmp_path / "c.toml") and desc["note"] is None
    assert "config file: " + str(tmp_path / "c.toml") + " (daemon pid 123)" in configview.text(desc)


def test_max_from_the_command_line(monkeypatch):
    _fake_datapath(monkeypatch, {}, max_entries=1000)
    s = _sources(configview.describe(Path("/p")))
    assert s["max"] == (1000, "option") and s["buckets"] == (125, "max/8")


def test_a_file_edited_since_it_was_loaded_gets_a_note(monkeypatch, tmp_path):
    path = tmp_path / "c.toml"
    _fake_datapath(monkeypatch, {"udp_timeout": 45}, path=path,
                   text="[tunables]\nudp_timeout = 45\n")
    path.write_text("[tunables]\nudp_timeout = 50\n")
    desc = configview.describe(Path("/p"))
    assert _sources(desc)["udp_timeout"] == (45, "set")
    assert "changed since the daemon read it" in desc["note"] and "kill -HUP 123" in desc["note"]
    path.write_text("[tunables]\nudp_timeout = \"x\"\n")
    desc = configview.describe(Path("/p"))
    assert desc["note"].startswith("the config file cannot be read now")


# --------------------------------------------------------------------------
# reload on SIGHUP


class _FakeDaemon:
    pin_dir = Path("/p")

    def __init__(self):
        self.status = {}

    def write_status(self, **fields):
        self.status.update(fields)


def test_reload_applies_a_valid_file(monkeypatch, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[tunables]\ntcp_timeout_established = 100\n")
    current = dict(tunables.defaults(), udp_timeout=45)
    writes = []

    def fake_write(pin_dir, values):
        writes.append(values)
        out = {n: (current[n], v) for n, v in values.items()}
        current.update(values)
        return out

    monkeypatch.setattr(reloader, "write_values", fake_write)
    daemon = _FakeDaemon()
    reloader.Reloader(daemon, path, None, 65536)()
    assert current == dict(tunables.defaults(), tcp_timeout_established=100)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"ctbpf: reload {path}: tcp_timeout_established: 432000 -> 100",
                   f"ctbpf: reload {path}: udp_timeout: 45 -> 30"]
    assert daemon.status["config_sha256"] == parse_text(path.read_text()).digest
    # again: nothing to do
    reloader.Reloader(daemon, path, None, 65536)()
    assert capsys.readouterr().err == f"ctbpf: reload {path}: no change\n"
    # a new max cannot be applied live: said once, the rest is applied
    path.write_text("max = 1024\n")
    reloader.Reloader(daemon, path, None, 65536)()
    err = capsys.readouterr().err
    assert "max 1024 needs a restart" in err and "tcp_timeout_established: 100 -> 432000" in err
    # unless --max gave the size
    reloader.Reloader(daemon, path, 65536, 65536)()
    assert "needs a restart" not in capsys.readouterr().err


def test_reload_refuses_a_bad_file_and_writes_nothing(monkeypatch, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[tunables]\ntcp_loose = \"perhaps\"\n")
    monkeypatch.setattr(reloader, "write_values", lambda *a: pytest.fail("wrote a bad file"))
    daemon = _FakeDaemon()
    with pytest.raises(UsageError) as e:
        reloader.Reloader(daemon, path, None, 65536)()
    assert one_line(e.value).startswith(f"{path}: [tunables] tcp_loose: expected 0/1")
    assert daemon.status == {}
    path.unlink()
    with pytest.raises(UsageError, match="No such file"):
        reloader.Reloader(daemon, path, None, 65536)()


def test_acct_is_off_by_default_as_nf_conntrack_acct():
    assert tunables.defaults()["acct"] == 0
