"""Table operations on a running tracker, like conntrack -G/-D/-F/-C, with
real connections through the lab's router."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from ctbpf.lab.netns import Lab

from conftest import CTBPF, REPO, run_in

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

MISSING_PIN_DIR = "/sys/fs/bpf/ctbpf-it-missing-tableops"


def _one_error_line(cp: subprocess.CompletedProcess, code: int, *mentions: str) -> str:
    assert "Traceback" not in cp.stderr, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctbpf: error: "), cp.stderr
    assert cp.returncode == code, (cp.returncode, cp.stderr)
    assert cp.stdout == "", cp.stdout
    for word in mentions:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _wait_for(what, check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() >= deadline:
            assert got, f"timed out waiting for {what}"
            return got
        time.sleep(0.1)


def _udp(lab: Lab, port: int, sport: int) -> None:
    """One answered UDP exchange client:sport -> server:port."""
    server = lab.traffic_popen("server", "udp-server", "--port", port, "--timeout", 5)
    assert lab.wait_listening("server", port, "udp")
    cp = lab.traffic("client", "udp-client", "--host", lab.server_ip, "--port", port,
                     "--bind-port", sport)
    assert cp.returncode == 0, cp.stderr
    server.wait(timeout=10)


def _mine(flows: list[dict], lab: Lab, ports) -> list[dict]:
    return [f for f in flows if f["orig"]["src"] == lab.client_ip
            and f["orig"].get("dport") in ports]


# --------------------------------------------------------------------------
# get


@pytest.fixture
def established(shared_tracker):
    """An ESTABLISHED TCP connection client:40123 -> server:18200, held open."""
    lab = shared_tracker.lab
    port, sport = 18200, 40123
    server = lab.traffic_popen("server", "tcp-server", "--port", port, "--hold", 1,
                               "--timeout", 20)
    assert lab.wait_listening("server", port)
    client = lab.traffic_popen("client", "tcp-client", "--host", lab.server_ip, "--port", port,
                               "--bind-port", sport, "--hold", 8, "--timeout", 20)
    _wait_for("the connection to be ESTABLISHED", lambda: shared_tracker.list_proc(
        "-p", "tcp", "--dport", port, "--state", "ESTABLISHED"))
    yield lab, port, sport
    for p in (client, server):
        p.terminate()
        p.wait(timeout=10)


def test_get_finds_an_established_connection_by_its_tuple(shared_tracker, established):
    lab, port, sport = established
    tup = ["-p", "tcp", "--src", lab.client_ip, "--dst", lab.server_ip, "--sport", sport,
           "--dport", port]
    cp = shared_tracker.cli("get", *tup)
    rx = re.compile(re.escape("tcp      6 ") + r"\d+ " + re.escape(
        f"ESTABLISHED src={lab.client_ip} dst={lab.server_ip} sport={sport} dport={port} "
        f"src={lab.server_ip} dst={lab.client_ip} sport={port} dport={sport} [ASSURED] use=1"))
    assert len(cp.stdout.splitlines()) == 1 and rx.fullmatch(cp.stdout.strip()), cp.stdout
    # the same line list gives for it
    assert cp.stdout.splitlines() == shared_tracker.list_proc("-p", "tcp", "--dport", port)

    (obj,) = json.loads(shared_tracker.cli("get", "-o", "json", *tup).stdout)
    assert obj["state"] == "ESTABLISHED" and obj["flags"] == ["ASSURED"]
    assert obj["table"] == "assured"
    cp = shared_tracker.cli("get", "-o", "conntrack", *tup)
    assert " packets=" in cp.stdout and "1 flow entries have been shown." in cp.stderr

    # Not found: the reply tuple (conntrack -G does not find a flow by it), another port.
    reply = ["-p", "tcp", "--src", lab.server_ip, "--dst", lab.client_ip, "--sport", port,
             "--dport", sport]
    _one_error_line(shared_tracker.cli("get", *reply, check=False), 1, "0 flow entries")
    other = [*tup[:-1], port + 1]
    _one_error_line(shared_tracker.cli("get", *other, check=False), 1, "0 flow entries",
                    f"dport={port + 1}")


def test_get_an_icmp_echo_flow(shared_tracker):
    lab = shared_tracker.lab
    assert lab.ping("client", lab.server_ip)
    flows = [f for f in shared_tracker.list_json("-p", "icmp", "--src", lab.client_ip)]
    assert flows, "the ping is not listed"
    ident = flows[-1]["orig"]["id"]
    cp = shared_tracker.cli("get", "-p", "icmp", "--src", lab.client_ip, "--dst", lab.server_ip,
                            "--icmp-type", 8, "--icmp-id", ident)
    assert cp.stdout.startswith("icmp     1 ") and f"type=8 code=0 id={ident} " in cp.stdout
    cp = shared_tracker.cli("get", "-p", "icmp", "--src", lab.client_ip, "--dst", lab.server_ip,
                            "--icmp-type", 8, "--icmp-id", (ident + 1) % 65536, check=False)
    _one_error_line(cp, 1, "0 flow entries")


# --------------------------------------------------------------------------
# delete, count, flush


def test_delete_by_dport_removes_only_matching_flows(shared_tracker):
    lab = shared_tracker.lab
    gone, kept = 18300, 18301
    for port, sport in ((gone, 38300), (gone, 38301), (kept, 38302)):
        _udp(lab, port, sport)
    before = _mine(shared_tracker.list_json("-p", "udp"), lab, (gone, kept))
    assert sorted((f["orig"]["dport"], f["orig"]["sport"]) for f in before) == \
        [(gone, 38300), (gone, 38301), (kept, 38302)], before

    cp = shared_tracker.cli("delete", "-p", "udp", "--dport", gone)
    assert cp.stderr.strip().endswith("2 flow entries have been deleted."), cp.stderr
    deleted = cp.stdout.splitlines()   # the deleted flows, as conntrack -D prints them
    assert len(deleted) == 2 and all(f"dport={gone} " in x for x in deleted), deleted

    after = _mine(shared_tracker.list_json("-p", "udp"), lab, (gone, kept))
    assert [(f["orig"]["dport"], f["orig"]["sport"]) for f in after] == [(kept, 38302)]
    assert not shared_tracker.list_proc("--dport", gone)

    # nothing left to delete: exit 1, as conntrack -D
    cp = shared_tracker.cli("delete", "-p", "udp", "--dport", gone, check=False)
    assert cp.returncode == 1 and "0 flow entries have been deleted." in cp.stderr, cp.stderr
    assert cp.stdout == ""

    # by whole tuple (a key lookup, no scan), in JSON
    cp = shared_tracker.cli("delete", "-o", "json", "-p", "udp", "--src", lab.client_ip,
                            "--dst", lab.server_ip, "--sport", 38302, "--dport", kept)
    (obj,) = json.loads(cp.stdout)
    assert obj["orig"]["sport"] == 38302 and "1 flow entries have been deleted." in cp.stderr
    assert not _mine(shared_tracker.list_json("-p", "udp"), lab, (gone, kept))

    # traffic after a delete starts a new flow, NEW and [UNREPLIED] until answered
    lab.traffic("client", "udp-client", "--host", lab.server_ip, "--port", gone,
                "--bind-port", 38300, "--timeout", 0.1)
    (again,) = _mine(shared_tracker.list_json("-p", "udp"), lab, (gone,))
    assert again["flags"] == ["UNREPLIED"] and again["packets"]["orig"] == 1, again


def test_count_matches_list(shared_tracker):
    lab = shared_tracker.lab
    _udp(lab, 18400, 38400)
    assert lab.ping("client", lab.server_ip)
    for filters in ([], ["-p", "udp"], ["-p", "udp", "--dport", 18400], ["-p", "tcp"]):
        for _ in range(3):   # an entry may time out between the two reads: read again
            n = int(shared_tracker.cli("count", *filters).stdout)
            listed = len(shared_tracker.list_proc(*filters))
            if n == listed == int(shared_tracker.cli("count", *filters).stdout):
                break
        assert n == listed, (filters, n, listed)
    assert int(shared_tracker.cli("count", "-p", "udp", "--dport", 18400).stdout) == 1
    assert json.loads(shared_tracker.cli("count", "-o", "json", "--dport", 18400).stdout) == \
        {"count": 1}
    assert shared_tracker.cli("count", "--dport", 1).stdout == "0\n"


def test_flush_empties_the_table(shared_tracker):
    lab = shared_tracker.lab
    _udp(lab, 18500, 38500)
    assert lab.ping("client", lab.server_ip)
    assert int(shared_tracker.cli("count").stdout) >= 2
    cp = shared_tracker.cli("flush")
    assert cp.stdout == "" and cp.stderr.strip().endswith(
        "connection tracking table has been emptied."), cp.stderr
    assert shared_tracker.cli("count").stdout == "0\n"
    assert shared_tracker.list_proc() == []
    assert shared_tracker.stats()["entries"]["total"] == 0
    # an empty table flushes too; tracking goes on
    assert shared_tracker.cli("flush").returncode == 0
    assert lab.ping("client", lab.server_ip)
    assert int(shared_tracker.cli("count", "-p", "icmp").stdout) == 1


def test_batch_delete_resumes_after_a_vanished_key_and_follows_moved_flows(shared_tracker):
    """Keys read from one table may be gone by the delete (the datapath
    deleted them) or sit in the other table (promoted or demoted meanwhile):
    the batch resumes after a missing key, a moved flow is deleted where it
    is now, and only what was really deleted is counted. Flows made up in
    TEST-NET-2, written straight into the pinned maps."""
    from ctbpf import abi  # noqa: PLC0415
    from ctbpf.datapath import bpfsys, tableops
    from ctbpf.datapath.flowkey import key_from_tuple  # noqa: PLC0415
    from ctbpf.cli.filters import FlowFilter, parse_addr  # noqa: PLC0415

    pin = shared_tracker.pin_dir
    fds = {t: bpfsys.obj_get(str(pin / t)) for t in ("ct_new", "ct_assured")}
    try:
        def put(table, sport):
            key, _ = key_from_tuple("198.51.100.1", "198.51.100.2", 17, sport, 53)
            entry = abi.CtEntry()
            entry.expires = abi.ticks(time.monotonic_ns() + 600 * 10**9)
            entry.flags = abi.const("CT_F_SEEN_REPLY")
            bpfsys.update(fds[table], key, entry)
            return key

        for sport in range(1000, 1006):
            put("ct_new", sport)
        flt = FlowFilter(proto=17, src=parse_addr("198.51.100.1"))
        matches = tableops.scan(pin, flt)
        assert len(matches) == 6
        # after the read: 1002 vanishes, 1004 moves to the other table
        bpfsys.delete(fds["ct_new"], put("ct_new", 1002))
        bpfsys.delete(fds["ct_new"], put("ct_new", 1004))
        put("ct_assured", 1004)
        deleted = tableops.delete(pin, matches)
        assert sorted(m.flow.orig.sport for m in deleted) == [1000, 1001, 1003, 1004, 1005]
        assert tableops.scan(pin, flt) == []
    finally:
        for fd in fds.values():
            os.close(fd)


# --------------------------------------------------------------------------
# errors


def _ctbpf(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CTBPF, *map(str, args)], capture_output=True, text=True,
                          timeout=15, cwd=REPO, env=Lab.traffic_env())


@pytest.mark.parametrize("args, mentions", [
    (["get", "--src", "10.0.0.1", "--dst", "10.0.0.2"], ["-p"]),
    (["get", "-p", "tcp", "--src", "10.0.0.1"], ["--src and --dst"]),
    (["get", "-p", "tcp", "--src", "10.0.0.1", "--dst", "10.0.0.2"], ["--sport and --dport"]),
    (["get", "-p", "tcp", "--src", "10.0.0.0/24", "--dst", "10.0.0.2", "--sport", "1",
      "--dport", "2"], ["10.0.0.0/24", "prefix"]),
    (["get", "-p", "udp", "--src", "10.0.0.1", "--dst", "fd00::2", "--sport", "1",
      "--dport", "2"], ["families"]),
    (["get", "-p", "icmp", "--src", "10.0.0.1", "--dst", "10.0.0.2"], ["--icmp-id"]),
    (["get", "-p", "icmp", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--icmp-type", "0",
      "--icmp-id", "5"], ["--icmp-type 0"]),
    (["get", "-p", "tcp", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--sport", "1",
      "--dport", "2", "--icmp-id", "3"], ["icmp"]),
    (["get", "-p", "tcp", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--sport", "1",
      "--dport", "77777"], ["77777"]),
    (["delete", "-p", "bogus"], ["bogus"]),
    (["delete", "--dport", "http"], ["http"]),
    (["count", "--state", "NOPE"], ["NOPE"]),
    (["count", "--src", "10.0.0.300"], ["10.0.0.300"]),
    (["flush", "--dport", "1"], ["--dport"]),
], ids=["get-no-proto", "get-no-dst", "get-no-ports", "get-prefix", "get-families",
        "get-icmp-no-id", "get-icmp-reply-type", "get-icmp-on-tcp", "get-port-range",
        "delete-proto", "delete-port", "count-state", "count-src", "flush-filter"])
def test_bad_input_is_one_line_exit_2(args, mentions):
    """Checked before the maps are opened (the pin dir does not exist, which would be exit 1)."""
    _one_error_line(_ctbpf(*args, "--pin-dir", MISSING_PIN_DIR), 2, *mentions)


@pytest.mark.parametrize("args", [
    ["get", "-p", "udp", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--sport", "1",
     "--dport", "2"],
    ["delete", "--dport", "1"], ["flush"], ["count"]])
def test_no_tracker_is_one_line_exit_1(shared_tracker, args):
    cp = run_in(shared_tracker.lab, "client", [*CTBPF, *args])
    _one_error_line(cp, 1, "no ctbpf maps")


def test_a_daemon_in_another_namespace_serves_its_pin_dir_from_the_host(tracker):
    """`--pin-dir` may name maps whose daemon runs in another network
    namespace (a router's): the CLI there finds it ready, not "starting"."""
    cp = run_in(None, None, [*CTBPF, "count", "--pin-dir", tracker.pin_dir], timeout=30)
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
    assert int(cp.stdout.split()[-1]) >= 0
    cp = run_in(None, None, [*CTBPF, "config", "-o", "json", "--pin-dir", tracker.pin_dir],
                timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["daemon_pid"] is not None     # its status was found
