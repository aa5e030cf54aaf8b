"""Restart without loss: the datapath outlives its daemon.

A daemon killed with SIGKILL in the middle of traffic, or stopped with
--keep-attached, leaves its XDP programs attached and its maps pinned:
flows go on being tracked with no daemon at all, and the next `ctbpf run`
adopts them (an atomic program swap on the same maps). Pinned maps of
another layout version are never silently dropped: the daemon refuses, or
migrates them through a registered migration, or with --discard-state
drops them and says how many entries it dropped. Real lab traffic, real
maps; the "old layout" is faked by writing another version into ct_config.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Tracker

from ctbpf import abi
from ctbpf.datapath import bpfsys
from ctbpf.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

HOLD = [sys.executable, str(Path(__file__).with_name("holdconns.py"))]
TCP_CONNS = 8
VERSION_SLOT = abi.const("CT_CFG_LAYOUT_VERSION")


# --------------------------------------------------------------------------
# helpers


def json_line(proc: subprocess.Popen, timeout: float = 20.0) -> dict:
    """The next JSON line a helper prints (bounded)."""
    import select  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            return json.loads(line)
        if proc.poll() is not None:
            break
    raise AssertionError(f"no line from {proc.args[-8:]}: {proc.stderr.read()[-500:]}")


class Conns:
    """TCP connections held open through the router by holdconns.py, with a
    byte each way every `interval` seconds."""

    def __init__(self, lab: Lab, count: int, interval: float = 0.2, timeout: float = 240) -> None:
        self.lab = lab
        self.port = 20000 + secrets.randbelow(20000)
        self.server = lab.popen("server", [*HOLD, "server", "--port", self.port,
                                           "--timeout", timeout])
        assert json_line(self.server)["event"] == "listening"
        self.client = lab.popen("client", [*HOLD, "client", "--host", lab.server_ip,
                                           "--port", self.port, "--count", count,
                                           "--interval", interval, "--timeout", timeout],
                                stdin=subprocess.PIPE)
        first = json_line(self.client, timeout=60)
        assert first["event"] == "connected", first
        self.ports = set(first["ports"])

    def command(self, cmd: str, timeout: float = 30.0) -> dict:
        self.client.stdin.write(cmd + "\n")
        self.client.stdin.flush()
        return json_line(self.client, timeout)

    def check(self) -> dict:
        return self.command("check")

    def flows(self, flows: list[dict]) -> dict[int, dict]:
        """Our connections among listed flows, by client port."""
        return {f["orig"]["sport"]: f for f in flows
                if f["proto"] == "tcp" and f["orig"].get("dport") == self.port
                and f["orig"].get("sport") in self.ports}


def listed(tr: Tracker) -> list[dict]:
    return tr.list_json()


def total_packets(f: dict) -> int:
    return f["packets"]["orig"] + f["packets"]["reply"]


def wait_for(what: str, cond, timeout: float = 15.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def all_established(conns: Conns, tr: Tracker) -> dict[int, dict]:
    mine = conns.flows(listed(tr))
    ok = len(mine) == len(conns.ports) and all(
        f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"] for f in mine.values())
    return mine if ok else {}


def cli(tr: Tracker, *args: object) -> subprocess.CompletedProcess:
    """The CLI on the tracker's pin dir, whether or not a daemon runs."""
    return tr.cli(*args)


def sigkill(tr: Tracker) -> None:
    """SIGKILL the daemon and wait; unlike Tracker.kill(), detach nothing."""
    os.killpg(tr.proc.pid, signal.SIGKILL)
    tr.proc.wait(timeout=10)
    tr.returncode = tr.proc.returncode


def stop_keeping(tr: Tracker, sig: int = signal.SIGTERM) -> str:
    """Stop with --keep-attached in effect: exit 0, programs left attached."""
    tr.proc.send_signal(sig)
    out, err = tr.proc.communicate(timeout=15)
    tr.returncode = tr.proc.returncode
    tr.stderr += err
    assert tr.returncode == 0, err
    assert "Traceback" not in err, err
    assert "datapath left running (--keep-attached)" in err, err
    return err


def set_layout_version(pin_dir: Path, version: int) -> None:
    fd = bpfsys.obj_get(str(pin_dir / "ct_config"))
    try:
        cfg = abi.CtConfig()
        bpfsys.lookup(fd, ctypes.c_uint32(0), cfg)
        cfg.value[VERSION_SLOT] = version
        bpfsys.update(fd, ctypes.c_uint32(0), cfg)
    finally:
        os.close(fd)


def layout_version(pin_dir: Path) -> int:
    fd = bpfsys.obj_get(str(pin_dir / "ct_config"))
    try:
        cfg = abi.CtConfig()
        bpfsys.lookup(fd, ctypes.c_uint32(0), cfg)
        return int(cfg.value[VERSION_SLOT])
    finally:
        os.close(fd)


def xdp_prog_ids(lab: Lab) -> dict[str, int]:
    out = {}
    for iface in ("cli0", "srv0"):
        cp = lab.exec("router", ["ip", "-j", "-d", "link", "show", "dev", iface], timeout=10)
        info = json.loads(cp.stdout)[0].get("xdp", {})
        out[iface] = info.get("prog", {}).get("id", 0) if info else 0
    return out


@contextlib.contextmanager
def background(lab: Lab, ns: str, argv: list, **kwargs):
    p = lab.popen(ns, argv, **kwargs)
    try:
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


# --------------------------------------------------------------------------
# SIGKILL in the middle of traffic, then a clean --keep-attached stop


def test_sigkill_and_keep_attached_restarts_lose_nothing(lab, pin_dir, start_tracker):
    tr1 = start_tracker(pin_dir)
    conns = Conns(lab, TCP_CONNS)
    udp_port, udp_sport = 41000 + secrets.randbelow(1000), 43000 + secrets.randbelow(1000)
    with background(lab, "server", lab.traffic_argv("udp-server", "--port", udp_port,
                                                    "--count", 1500, "--timeout", 200),
                    env=lab.traffic_env()), \
         background(lab, "client", ["ping", "-n", "-q", "-i", "0.2", "-c", "1000",
                                    lab.server_ip]):
        assert lab.wait_listening("server", udp_port, "udp")
        with background(lab, "client", lab.traffic_argv(
                "udp-client", "--host", lab.server_ip, "--port", udp_port, "--count", 1500,
                "--interval", 0.1, "--bind-port", udp_sport, "--timeout", 5),
                env=lab.traffic_env()):
            _check_restarts(lab, pin_dir, start_tracker, tr1, conns, udp_port, udp_sport)


def _other_flows(flows: list[dict], lab: Lab, udp_port: int, udp_sport: int):
    udp = [f for f in flows if f["proto"] == "udp" and f["orig"].get("dport") == udp_port
           and f["orig"].get("sport") == udp_sport]
    icmp = [f for f in flows if f["proto"] == "icmp" and f["orig"]["dst"] == lab.server_ip
            and f["orig"]["src"] == lab.client_ip]
    return udp, icmp


def _check_restarts(lab, pin_dir, start_tracker, tr1, conns, udp_port, udp_sport):
    # Everything is tracked and confirmed before the first kill.
    wait_for("TCP connections ESTABLISHED and ASSURED", lambda: all_established(conns, tr1))

    def udp_and_ping_tracked():
        udp, icmp = _other_flows(listed(tr1), lab, udp_port, udp_sport)
        return udp and icmp and "ASSURED" in udp[0]["flags"] and "UNREPLIED" not in icmp[0]["flags"]
    wait_for("the UDP stream ASSURED and the ping answered", udp_and_ping_tracked)

    # A one-shot ping whose entry nobody refreshes: its absolute expiry must
    # come through the restarts unchanged (the timeout only counts down).
    assert lab.ping("client", lab.server_ip6)
    one_shot = [f for f in listed(tr1) if f["proto"] == "icmpv6"]
    assert len(one_shot) == 1, one_shot
    shot_timeout, shot_at = one_shot[0]["timeout"], time.monotonic()

    stats0 = tr1.stats()
    invalid0 = stats0["packets"]["invalid"]
    before = conns.flows(listed(tr1))
    ids_before = xdp_prog_ids(lab)

    # 1. SIGKILL in the middle of traffic: the programs stay attached.
    sigkill(tr1)
    assert tr1.attached() == ["cli0", "srv0"], "XDP must stay attached after SIGKILL"
    assert xdp_prog_ids(lab) == ids_before

    # 2. No daemon at all: flows are still tracked, counters still move.
    time.sleep(1.5)
    alone = cli(tr1, "stats", "-o", "json")
    stats1 = json.loads(alone.stdout)
    assert stats1["packets"]["established"] > stats0["packets"]["established"]
    assert stats1["packets"]["invalid"] == invalid0
    during = conns.flows(json.loads(cli(tr1, "list", "-o", "json").stdout))
    assert set(during) == set(before)
    assert all(total_packets(during[p]) > total_packets(before[p]) for p in before), \
        "every connection's counters must go on increasing with no daemon"

    # 3. A new daemon adopts the running datapath: same maps, programs swapped.
    tr2 = start_tracker(pin_dir, extra=["--keep-attached"])
    ids_after = xdp_prog_ids(lab)
    assert all(ids_after[i] and ids_after[i] != ids_before[i] for i in ids_after), \
        (ids_before, ids_after)
    adopted = conns.flows(listed(tr2))
    assert set(adopted) == conns.ports
    for port, f in adopted.items():
        assert f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"], f
        assert total_packets(f) >= total_packets(during[port])
    icmp6 = [f for f in listed(tr2) if f["proto"] == "icmpv6"]
    assert len(icmp6) == 1, icmp6
    elapsed = time.monotonic() - shot_at
    # Integer seconds on both readings: allow one second each way.
    assert shot_timeout - elapsed - 1.5 <= icmp6[0]["timeout"] <= shot_timeout - elapsed + 1.5, \
        (shot_timeout, elapsed, icmp6[0]["timeout"])

    check = conns.check()
    assert check["ok"] == TCP_CONNS and not check["failed"], check
    time.sleep(0.5)
    stats2 = tr2.stats()
    assert stats2["packets"]["established"] > stats1["packets"]["established"]
    assert stats2["packets"]["invalid"] == invalid0, \
        f"packets counted INVALID across the restart: {stats2['invalid']}"

    # 4. A clean stop with --keep-attached, traffic still flowing.
    err = stop_keeping(tr2, signal.SIGTERM)
    assert "XDP on cli0" in err and "XDP on srv0" in err
    assert tr2.attached() == ["cli0", "srv0"]
    kept_ids = xdp_prog_ids(lab)
    mid = conns.flows(json.loads(cli(tr2, "list", "-o", "json").stdout))
    time.sleep(1.0)
    later = conns.flows(json.loads(cli(tr2, "list", "-o", "json").stdout))
    assert all(total_packets(later[p]) > total_packets(mid[p]) for p in mid)

    # 5. ... and the next daemon adopts again; a plain stop then detaches.
    tr3 = start_tracker(pin_dir)
    assert all(xdp_prog_ids(lab)[i] != kept_ids[i] for i in kept_ids)
    final = conns.flows(listed(tr3))
    assert set(final) == conns.ports
    assert all(f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"] for f in final.values())
    udp, icmp = _other_flows(listed(tr3), lab, udp_port, udp_sport)
    assert udp and "ASSURED" in udp[0]["flags"], udp
    assert icmp, "the ping flow must still be listed"
    check = conns.check()
    assert check["ok"] == TCP_CONNS and not check["failed"], check
    stats3 = tr3.stats()
    assert stats3["packets"]["invalid"] == invalid0
    assert stats3["events"]["insert"] >= stats0["events"]["insert"]
    assert stats3["packets"]["established"] > stats2["packets"]["established"]
    tr3.stop(signal.SIGINT)      # detaches from both interfaces (asserted there)
    for tr in (tr2, tr3):
        assert "adopted the running datapath" in tr.stderr, tr.stderr
    conns.command("quit")


# --------------------------------------------------------------------------
# TC egress: adopted too; one left behind by an earlier run is pointed out


def tc_egress(lab: Lab, iface: str) -> str:
    return lab.exec("router", ["tc", "filter", "show", "dev", iface, "egress"], timeout=10).stdout


def test_tc_egress_is_adopted(lab, pin_dir, start_tracker):
    tr1 = start_tracker(pin_dir, extra=["--egress", "--keep-attached"])
    err = stop_keeping(tr1)
    assert "TC egress on cli0" in err and "TC egress on srv0" in err, err
    assert "ctbpf_tc_egress" in tc_egress(lab, "cli0")

    # A run without --egress leaves the filters alone, and says so.
    tr2 = start_tracker(pin_dir, extra=["--keep-attached"])
    stop_keeping(tr2)
    assert "TC egress on cli0" in tr2.stderr and "earlier run" in tr2.stderr, tr2.stderr
    assert "ctbpf_tc_egress" in tc_egress(lab, "cli0")

    # A run with --egress adopts them: the router's own pings are tracked.
    tr3 = start_tracker(pin_dir, extra=["--egress"])
    assert lab.ping("router", lab.client_ip)
    own = [f for f in listed(tr3) if f["proto"] == "icmp"
           and f["orig"]["src"] == lab.router_client_ip]
    assert own and "UNREPLIED" not in own[0]["flags"], own
    tr3.stop(signal.SIGINT)
    assert "TC egress on cli0 (program" in tr3.stderr, tr3.stderr
    assert "ctbpf_tc_egress" not in tc_egress(lab, "cli0")
    assert "ctbpf_tc_egress" not in tc_egress(lab, "srv0")


# --------------------------------------------------------------------------
# foreign and other trackers' programs are still refused


FOREIGN_XDP = """
from bcc import BPF
b = BPF(text="int foreign_pass(struct xdp_md *ctx) { return XDP_PASS; }")
b.attach_xdp("cli0", b.load_func("foreign_pass", BPF.XDP), 0)
"""


def test_foreign_xdp_program_is_still_refused(lab, pin_dir, run_ctbpf):
    cp = lab.exec("router", [sys.executable, "-c", FOREIGN_XDP], timeout=60)
    assert cp.returncode == 0, cp.stderr
    try:
        cp = run_ctbpf("run", "--iface", "cli0", "--pin-dir", pin_dir, timeout=60)
        assert cp.returncode == 1, cp
        assert "cli0 already carries an XDP program" in cp.stderr, cp.stderr
        assert "foreign_pass" in cp.stderr and "detach it first" in cp.stderr, cp.stderr
    finally:
        lab.exec("router", ["ip", "link", "set", "dev", "cli0", "xdp", "off"], timeout=10)


def test_another_trackers_program_is_refused(lab, pin_dir, start_tracker, run_ctbpf):
    other = pin_dir.with_name(pin_dir.name + "x")
    first = start_tracker(other, ifaces=("cli0",))
    cp = run_ctbpf("run", "--iface", "cli0", "--pin-dir", pin_dir, timeout=60)
    assert cp.returncode == 1, cp
    assert "already carries a ctbpf XDP program" in cp.stderr, cp.stderr
    assert "other maps" in cp.stderr, cp.stderr
    assert first.running and first.attached() == ["cli0"]
    first.stop(signal.SIGINT)


def test_second_daemon_on_the_same_maps_is_refused(tracker, run_ctbpf):
    cp = run_ctbpf("run", "--iface", "cli0", "--pin-dir", tracker.pin_dir, timeout=60)
    assert cp.returncode == 1, cp
    assert "already tracks" in cp.stderr and "stop it first" in cp.stderr, cp.stderr
    assert tracker.running and tracker.attached() == ["cli0", "srv0"]


# --------------------------------------------------------------------------
# another layout version: refuse, migrate, or discard loudly


MIGRATION = """
import sys
from ctbpf.agent import migrations

@migrations.register({version}, config=lambda raw: raw, counters=lambda raw: raw)
def convert(table, key, entry):
    return key, entry

from ctbpf.main import main
sys.exit(main(sys.argv[1:]))
"""


def _kept_tracker(lab, pin_dir, start_tracker, conns_count: int = 4):
    tr = start_tracker(pin_dir, extra=["--keep-attached"])
    conns = Conns(lab, conns_count)
    wait_for("connections ESTABLISHED and ASSURED", lambda: all_established(conns, tr))
    stop_keeping(tr)
    return tr, conns


def test_other_layout_without_migration_is_refused_then_discarded(lab, pin_dir, start_tracker,
                                                                 run_ctbpf):
    tr, conns = _kept_tracker(lab, pin_dir, start_tracker)
    entries = len(json.loads(cli(tr, "list", "-o", "json").stdout))
    fake = abi.LAYOUT_VERSION + 1000
    set_layout_version(pin_dir, fake)

    # Refused, loudly, with the way out; nothing changes.
    cp = run_ctbpf("run", "--iface", "cli0", "--iface", "srv0", "--pin-dir", pin_dir,
                   timeout=60)
    assert cp.returncode == 1, cp
    msg = cp.stderr
    assert f"layout version {fake}" in msg and "no migration" in msg, msg
    assert "--discard-state" in msg and f"{entries} entr" in msg, msg
    assert layout_version(pin_dir) == fake
    assert tr.attached() == ["cli0", "srv0"], "the running datapath must be left alone"
    assert len(json.loads(cli(tr, "list", "-o", "json").stdout)) == entries

    # --discard-state: dropped, counted, said; a fresh start that takes
    # over the interfaces (the old programs ran on the old maps until then).
    tr2 = start_tracker(pin_dir, extra=["--discard-state"])
    assert layout_version(pin_dir) == abi.LAYOUT_VERSION
    assert conns.check()["ok"] == len(conns.ports)
    # The connections' next segments are picked up mid-stream (tcp_loose).
    wait_for("connections tracked again", lambda: set(conns.flows(listed(tr2))) == conns.ports)
    tr2.stop(signal.SIGINT)
    dropped = re.search(r"(\d+) entries dropped", tr2.stderr)
    assert dropped and int(dropped.group(1)) >= entries, tr2.stderr
    assert "discarded the pinned state" in tr2.stderr
    assert "adopted the running datapath" in tr2.stderr
    conns.command("quit")


def test_other_layout_with_a_registered_migration_keeps_every_entry(lab, pin_dir,
                                                                   start_tracker):
    tr, conns = _kept_tracker(lab, pin_dir, start_tracker)
    before = conns.flows(json.loads(cli(tr, "list", "-o", "json").stdout))
    stats_before = json.loads(cli(tr, "stats", "-o", "json").stdout)
    fake = abi.LAYOUT_VERSION + 1000
    set_layout_version(pin_dir, fake)

    # The daemon with a migration from the fake version registered: the
    # real `ctbpf run`, with one more entry in restart.MIGRATIONS.
    mig = Tracker(lab, pin_dir)
    mig.argv = [sys.executable, "-c", MIGRATION.format(version=fake), *mig.argv[3:]]
    mig.start()
    try:
        assert layout_version(pin_dir) == abi.LAYOUT_VERSION
        after = conns.flows(mig.list_json())
        assert set(after) == set(before) == conns.ports
        for port, f in after.items():
            assert f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"], f
            assert total_packets(f) >= total_packets(before[port])
        stats = mig.stats()
        assert stats["events"]["insert"] >= stats_before["events"]["insert"]
        assert stats["packets"]["invalid"] == stats_before["packets"]["invalid"]
        assert conns.check()["ok"] == len(conns.ports)
    finally:
        mig.stop(signal.SIGINT)
    assert "migrated" in mig.stderr and f"from layout version {fake}" in mig.stderr, mig.stderr
    conns.command("quit")


#: The last build before window tracking: layout version 2, 56-byte entries.
PREVIOUS_BUILD = "43a7730"
#: The last build of layout version 3: 120-byte entries, counters and u64
#: ns times in the entry.
LAYOUT_3_BUILD = "561d519"
REPO = Path(__file__).resolve().parents[2]

_RUN_FROM = ("import runpy, sys; sys.path.insert(0, {root!r}); "
             "runpy.run_module('ctbpf', run_name='__main__', alter_sys=True)")


def _build_of(tmp_path_factory, commit: str) -> Path:
    """The source tree of a build from this repository's history (a clean
    clone has it): its own ctbpf package and bpf/ sources."""
    root = tmp_path_factory.mktemp(f"build-{commit}")
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "ctbpf",
                                  "bpf"], capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise AssertionError(f"the migration test needs build {commit} from git "
                             f"history (a clone, not an export): {e}") from None
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True, timeout=60)
    return root


@pytest.fixture(scope="module")
def previous_build(tmp_path_factory) -> Path:
    return _build_of(tmp_path_factory, PREVIOUS_BUILD)


@pytest.fixture(scope="module")
def layout_3_build(tmp_path_factory) -> Path:
    return _build_of(tmp_path_factory, LAYOUT_3_BUILD)


def _kept_previous_tracker(lab, pin_dir, previous_build: Path, conns_count: int = 4,
                           version: int = 2):
    """An older build's `ctbpf run --keep-attached` on the lab, with
    ESTABLISHED connections through it, stopped: a real pin set of that
    layout and its datapath left running, as an upgrade finds them."""
    tr = Tracker(lab, pin_dir, extra=["--keep-attached"])
    tr.cli_argv = [sys.executable, "-c", _RUN_FROM.format(root=str(previous_build))]
    tr.argv = [*tr.cli_argv, *tr.argv[3:]]
    tr.start()
    try:
        assert layout_version(pin_dir) == version, f"that build must write layout {version}"
        conns = Conns(lab, conns_count)
        wait_for("connections ESTABLISHED and ASSURED", lambda: all_established(conns, tr))
    except BaseException:
        tr.kill()
        raise
    stop_keeping(tr)
    return tr, conns


def _window_flags(pin_dir: Path) -> list[tuple[int, int, int]]:
    """(direction 0 flags, direction 1 flags, side 0 td_maxwin) of every TCP entry."""
    from ctbpf.datapath import rawmaps  # noqa: PLC0415

    out = []
    for table in ("ct_assured", "ct_new"):
        fd = bpfsys.obj_get(str(pin_dir / table))
        try:
            keys, values, count = bpfsys.lookup_batch(fd, rawmaps.KEY_SIZE, rawmaps.ENTRY_SIZE,
                                                      bpfsys.map_info(fd).max_entries)
        finally:
            os.close(fd)
        for i in range(count):
            k = abi.CtKey.from_buffer_copy(keys, i * rawmaps.KEY_SIZE)
            e = abi.CtEntry.from_buffer_copy(values, i * rawmaps.ENTRY_SIZE)
            if k.proto == 6:
                out.append((e.td_flags[0], e.td_flags[1], e.side[0].td_maxwin))
    return out


def test_layout_2_pins_of_the_previous_build_migrate(lab, pin_dir, previous_build,
                                                     start_tracker):
    """The upgrade this build ships: a datapath of the previous build
    (layout 2, no window state) running with live connections is rebuilt
    into this layout without losing one; each TCP flow's windows start as the
    kernel's do for a picked-up connection (SACK permitted, liberal), then
    its own segments fill them in."""
    tr, conns = _kept_previous_tracker(lab, pin_dir, previous_build)
    before = conns.flows(json.loads(cli(tr, "list", "-o", "json").stdout))

    tr2 = start_tracker(pin_dir)
    assert layout_version(pin_dir) == abi.LAYOUT_VERSION
    after = conns.flows(tr2.list_json())
    assert set(after) == set(before) == conns.ports
    for f in after.values():
        assert f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"], f
    pickup = abi.const("CT_TS_SACK_PERM") | abi.const("CT_TS_BE_LIBERAL")
    windows = _window_flags(pin_dir)
    assert len(windows) >= len(conns.ports), windows
    assert all(a & pickup == pickup and b & pickup == pickup for a, b, _ in windows), windows
    assert conns.check()["ok"] == len(conns.ports)
    wait_for("migrated flows' windows set by their own segments",
             lambda: all(w > 0 for _, _, w in _window_flags(pin_dir)))
    stats = tr2.stats()
    assert stats["packets"]["invalid"] == 0, stats["invalid"]
    tr2.stop(signal.SIGINT)
    m = re.search(r"migrated (\d+) entries of the pinned maps from layout version 2 ", tr2.stderr)
    assert m and int(m.group(1)) >= len(conns.ports), tr2.stderr
    conns.command("quit")


def _make_layout_1(pin_dir: Path) -> None:
    """Turn a layout 2 pin set (the previous build's) into one of layout 1
    as a 1.x build left it: ct_stats of 48 counters (its values kept),
    version 1 in ct_config; entries were the same in 1 and 2."""
    from ctbpf.datapath import rawmaps  # noqa: PLC0415

    path = str(pin_dir / "ct_stats")
    old = bpfsys.obj_get(path)
    try:
        info = bpfsys.map_info(old)
        raw = rawmaps.read_percpu(old, info.value_size)
    finally:
        os.close(old)
    stride, cpus = len(raw) // bpfsys.possible_cpus(), bpfsys.possible_cpus()
    v1 = b"".join(bytes(raw[c * stride:c * stride + 48 * 8]) for c in range(cpus))
    fd = bpfsys.map_create(info.type, 4, 48 * 8, 1)
    try:
        rawmaps.write_percpu(fd, v1)
        os.unlink(path)
        bpfsys.obj_pin(fd, path)
    finally:
        os.close(fd)
    set_layout_version(pin_dir, 1)


def test_layout_1_pins_migrate_to_this_build(lab, pin_dir, previous_build, start_tracker):
    """Layout 1 (ct_stats of 48 counters, 56-byte entries): entries and
    counters carried over, nothing asked of the user."""
    tr, conns = _kept_previous_tracker(lab, pin_dir, previous_build)
    before = conns.flows(json.loads(cli(tr, "list", "-o", "json").stdout))
    stats_before = json.loads(cli(tr, "stats", "-o", "json").stdout)
    _make_layout_1(pin_dir)

    tr2 = start_tracker(pin_dir)
    assert layout_version(pin_dir) == abi.LAYOUT_VERSION
    fd = bpfsys.obj_get(str(pin_dir / "ct_stats"))
    try:
        assert bpfsys.map_info(fd).value_size == 8 * abi.const("CT_STAT_MAX")
    finally:
        os.close(fd)
    after = conns.flows(tr2.list_json())
    assert set(after) == set(before) == conns.ports
    for f in after.values():
        assert f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"], f
    stats = tr2.stats()
    assert stats["events"]["insert"] >= stats_before["events"]["insert"] > 0
    assert stats["packets"]["established"] >= stats_before["packets"]["established"] > 0
    assert stats["invalid"].get("ip_opts") == 0, stats["invalid"]
    assert conns.check()["ok"] == len(conns.ports)
    tr2.stop(signal.SIGINT)
    assert "migrated" in tr2.stderr and "from layout version 1 " in tr2.stderr, tr2.stderr
    conns.command("quit")


def test_layout_3_pins_of_the_previous_build_migrate(lab, pin_dir, layout_3_build,
                                                     start_tracker):
    """The upgrade to the 64-byte entry: a layout 3 datapath (120-byte
    entries with u64 ns times and the counters inside) running with live
    connections is rebuilt into this layout without losing a flow, a window
    or a counter. Windows are carried exactly, so the flows stay strictly
    checked (not liberal) and none of their segments is INVALID after."""
    tr, conns = _kept_previous_tracker(lab, pin_dir, layout_3_build, version=3)
    before = conns.flows(json.loads(cli(tr, "list", "-o", "json").stdout))
    assert all(f["packets"]["orig"] > 0 for f in before.values()), before
    old_invalid = json.loads(cli(tr, "stats", "-o", "json").stdout)["invalid"]

    tr2 = start_tracker(pin_dir)
    assert layout_version(pin_dir) == abi.LAYOUT_VERSION
    at_start = tr2.stats()["invalid"]
    after = conns.flows(tr2.list_json())
    assert set(after) == set(before) == conns.ports
    for port, f in after.items():
        assert f["state"] == "ESTABLISHED" and "ASSURED" in f["flags"], f
        assert total_packets(f) >= total_packets(before[port]), (f, before[port])
        assert f["timeout"] <= before[port]["timeout"] + 1, (f, before[port])
    liberal = abi.const("CT_TS_BE_LIBERAL")
    windows = _window_flags(pin_dir)
    assert len(windows) >= len(conns.ports) and all(w > 0 for _, _, w in windows), windows
    assert not any((a | b) & liberal for a, b, _ in windows), windows
    assert conns.check()["ok"] == len(conns.ports)
    stats = tr2.stats()
    new_invalid = {r: n - old_invalid.get(r, 0) for r, n in stats["invalid"].items()
                   if n != old_invalid.get(r, 0)}
    assert not new_invalid, (new_invalid, {r: n for r, n in at_start.items() if n},
                             {r: n for r, n in old_invalid.items() if n})
    tr2.stop(signal.SIGINT)
    m = re.search(r"migrated (\d+) entries of the pinned maps from layout version 3 ", tr2.stderr)
    assert m and int(m.group(1)) >= len(conns.ports), tr2.stderr
    conns.command("quit")
