"""The namespace lab itself: it comes up, carries traffic, and leaves nothing.

Needs root. Without it these tests skip, except under CI=true where a lab
that cannot be built is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ctbpf.lab.netns import (LAB_NAME_RE, Lab, LabError, ROUTER_IFACES, cleanup_stale,
                             list_namespaces, unavailable_reason)
from ctbpf.lab.traffic import parse_result

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
CLEANUP_SCRIPT = REPO / "scripts" / "cleanup-lab.sh"


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _need_lab():
    reason = unavailable_reason()
    if reason:
        _cannot(f"lab unavailable: {reason}")


@pytest.fixture
def need_ping():
    if shutil.which("ping") is None:
        _cannot("needs the ping command (Debian: iputils-ping)")


def _lab_namespaces(lab: Lab) -> set[str]:
    return {lab.client, lab.router, lab.server} & set(list_namespaces())


@pytest.fixture
def lab():
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()
    assert not _lab_namespaces(the_lab)


def _free_port() -> int:
    return 20000 + secrets.randbelow(20000)


def _start_server(lab: Lab, cmd: str, port: int, *args) -> subprocess.Popen:
    proc = lab.traffic_popen("server", cmd, "--port", port, "--timeout", 10, *args)
    proto = "tcp" if cmd.startswith("tcp") else "udp"
    if not lab.wait_listening("server", port, proto, timeout=5):
        proc.kill()
        out, err = proc.communicate(timeout=5)
        pytest.fail(f"{cmd} did not start listening: {err.strip()}")
    return proc


def _server_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return parse_result(out)


# --------------------------------------------------------------------------


def test_lab_shape(lab):
    assert LAB_NAME_RE.match(lab.client) and LAB_NAME_RE.match(lab.router)
    assert LAB_NAME_RE.match(lab.server)
    assert _lab_namespaces(lab) == {lab.client, lab.router, lab.server}
    assert lab.router_ifaces == ROUTER_IFACES == ("cli0", "srv0")
    assert 1 <= lab.n <= 250
    assert lab.client_ip == f"10.{lab.n}.1.2" and lab.server_ip == f"10.{lab.n}.2.2"
    assert lab.client_ip6 == f"fd00:{lab.n}:1::2" and lab.server_ip6 == f"fd00:{lab.n}:2::2"
    assert lab.setup_seconds < 1.0

    links = json.loads(lab.exec("router", ["ip", "-j", "addr", "show"], check=True).stdout)
    by_name = {link["ifname"]: link for link in links}
    assert set(ROUTER_IFACES) <= set(by_name)
    for ifname, want4, want6 in (("cli0", "10.{n}.1.1", "fd00:{n}:1::1"),
                                 ("srv0", "10.{n}.2.1", "fd00:{n}:2::1")):
        link = by_name[ifname]
        assert link["operstate"] == "UP"
        addrs = {a["local"] for a in link["addr_info"]}
        assert want4.format(n=lab.n) in addrs and want6.format(n=lab.n) in addrs
    assert by_name["lo"]["flags"].count("UP")

    cp = lab.exec("router", ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                             "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.cli0.rp_filter",
                             "net.ipv4.conf.srv0.rp_filter"], check=True)
    assert cp.stdout.split() == ["1", "1", "0", "0", "0"]
    for role in ("client", "server"):
        routes = lab.exec(role, ["ip", "-j", "-6", "route", "show", "default"], check=True).stdout
        assert json.loads(routes), f"no IPv6 default route in {role}"
    # Roles and names both work.
    assert lab.ns("cli") == lab.ns("client") == lab.ns(lab.client) == lab.client
    with pytest.raises(LabError):
        lab.ns("elsewhere")


def test_ping_v4_v6(lab, need_ping):
    t0 = time.monotonic()
    assert lab.warm_up()
    warm = time.monotonic() - t0
    # Neighbour resolution must not stall on a not-yet-active queue (1 s).
    assert warm < 0.9, f"warm_up took {warm:.2f}s"
    assert lab.ping("client", lab.server_ip, count=2)
    assert lab.ping("client", lab.server_ip6, count=2)
    assert lab.ping("server", lab.client_ip)
    assert lab.ping("server", lab.client_ip6)
    assert not lab.ping("client", f"10.{lab.n}.2.99", wait=0.3)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_echo_through_router(lab, family):
    port = _free_port()
    server = _start_server(lab, "tcp-server", port, "--family", family, "--count", 2,
                           "--hold", 0.1)
    host = lab.server_ip if family == 4 else lab.server_ip6
    client_addr = lab.client_ip if family == 4 else lab.client_ip6
    cp = lab.traffic("client", "tcp-client", "--host", host, "--port", port, "--data", 70000)
    assert cp.returncode == 0, cp.stderr
    res = parse_result(cp.stdout)
    assert res["sent"] == res["received"] == 70000
    assert res["src"] == client_addr and res["family"] == family
    cp = lab.traffic("client", "tcp-client", "--host", host, "--port", port, "--data", 10,
                     "--shutdown-first")
    assert cp.returncode == 0, cp.stderr
    assert parse_result(cp.stdout)["received"] == 10

    srv = _server_result(server)
    assert srv["accepted"] == 2 and srv["bytes"] == 70010
    # Routed, not NATed: the server sees the client's own address.
    assert {c["peer"] for c in srv["connections"]} == {client_addr}
    assert all(c["peer_closed"] for c in srv["connections"])


@pytest.mark.parametrize("family", [4, 6])
def test_udp_echo_through_router(lab, family):
    port = _free_port()
    server = _start_server(lab, "udp-server", port, "--family", family, "--count", 5)
    host = lab.server_ip if family == 4 else lab.server_ip6
    cp = lab.traffic("client", "udp-client", "--host", host, "--port", port, "--count", 5,
                     "--interval", 0.01, "--bind-port", port + 1)
    assert cp.returncode == 0, cp.stderr
    res = parse_result(cp.stdout)
    assert res["sent"] == res["received"] == 5 and res["sport"] == port + 1
    srv = _server_result(server)
    assert srv["received"] == 5
    client_addr = lab.client_ip if family == 4 else f"[{lab.client_ip6}]"
    assert srv["peers"] == {f"{client_addr}:{port + 1}": 5}


def test_traffic_failures_are_one_line(lab):
    port = _free_port()
    for cmd, extra in (("tcp-client", ()), ("udp-client", ("--timeout", 1))):
        cp = lab.traffic("client", cmd, "--host", lab.server_ip, "--port", port, *extra)
        assert cp.returncode == 1
        assert cp.stdout == ""
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"labtraffic {cmd}: error:"), cp.stderr
    cp = lab.traffic("server", "tcp-server", "--port", port, "--timeout", 0.2)
    assert cp.returncode == 1 and "accepted 0 of 1" in cp.stderr


def test_nft_ruleset(lab):
    lab.nft("router", "table inet ctlabtest {\n"
                      "  chain forward { type filter hook forward priority 0; counter; }\n"
                      "}\n")
    out = lab.exec("router", ["nft", "list", "table", "inet", "ctlabtest"], check=True).stdout
    assert "counter packets" in out
    with pytest.raises(LabError, match="nft"):
        lab.nft("router", "this is not nft\n")


def test_close_removes_everything():
    lab = Lab()
    names = {lab.client, lab.router, lab.server}
    assert _lab_namespaces(lab) == names
    # A remembered process that ignores SIGTERM, and one that exits at once.
    stubborn = lab.popen("server", ["sh", "-c", "trap '' TERM; sleep 60 & wait"])
    quick = lab.popen("client", ["true"])
    time.sleep(0.1)
    t0 = time.monotonic()
    lab.close()
    elapsed = time.monotonic() - t0
    assert stubborn.poll() is not None and quick.poll() is not None
    assert elapsed < 5.0
    assert not names & set(list_namespaces())
    assert lab.closed
    lab.close()  # idempotent
    with pytest.raises(LabError, match="closed"):
        lab.exec("client", ["true"])


def test_close_after_failure_inside_with():
    class Boom(Exception):
        pass

    seen = {}
    with pytest.raises(Boom):
        with Lab() as lab:
            seen["names"] = {lab.client, lab.router, lab.server}
            seen["proc"] = lab.popen("router", ["sleep", "60"])
            raise Boom("test failure inside the lab")
    assert seen["proc"].poll() is not None
    assert not seen["names"] & set(list_namespaces())


def test_failed_build_leaves_nothing(monkeypatch):
    made = []
    real = Lab._ip_batch

    def failing(self, ns, lines):
        made.extend([self.client, self.router, self.server])
        if ns.endswith("-srv"):
            raise LabError("injected failure")
        return real(self, ns, lines)

    monkeypatch.setattr(Lab, "_ip_batch", failing)
    with pytest.raises(LabError, match="injected"):
        Lab()
    assert made and not set(made) & set(list_namespaces())


def test_two_labs_coexist(need_ping):
    with Lab() as a, Lab() as b:
        assert a.prefix != b.prefix
        assert not {a.client, a.router, a.server} & {b.client, b.router, b.server}
        assert a.warm_up() and b.warm_up()
    assert not _lab_namespaces(a) and not _lab_namespaces(b)


def test_prefix_override_and_clash():
    prefix = "ctt" + secrets.token_hex(3)
    with Lab(prefix) as lab:
        assert lab.client == f"{prefix}-cli"
        with pytest.raises(LabError, match="already exist"):
            Lab(prefix)
        # The failed second lab must not have torn down the first one.
        assert _lab_namespaces(lab) == {lab.client, lab.router, lab.server}
    with pytest.raises(LabError, match="bad lab prefix"):
        Lab("bad prefix!")
    with pytest.raises(LabError, match="1..250"):
        Lab(n=251)


def test_setup_is_fast():
    timings = []
    for _ in range(3):
        t0 = time.monotonic()
        lab = Lab()
        timings.append(time.monotonic() - t0)
        lab.close()
    assert min(timings) < 1.0, timings


def _make_stale() -> tuple[list[str], list[str]]:
    """Namespaces that look left over from a crashed lab, and lookalikes that are not ours."""
    stale_prefix = "ctl" + secrets.token_hex(3)[:5]
    stale = [f"{stale_prefix}-cli", f"{stale_prefix}-rtr"]
    foreign = [f"ctlzz{secrets.token_hex(2)}-cli", f"x{stale_prefix}-srv", f"{stale_prefix}-web"]
    for name in stale + foreign:
        subprocess.run(["ip", "netns", "add", name], check=True)
    return stale, foreign


def _drop(names):
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_cleanup_stale_removes_only_ours():
    stale, foreign = _make_stale()
    try:
        with Lab() as live:  # owned by this live process: kept
            removed = cleanup_stale()
            left = set(list_namespaces())
            # (A concurrent run may have removed them first: check they are gone.)
            assert not set(stale) & left
            assert set(foreign) <= left
            assert {live.client, live.router, live.server} <= left
            assert not {live.client, live.router, live.server} & set(removed)
    finally:
        _drop(stale + foreign)


def test_cleanup_stale_custom_glob():
    names = [f"ctq{secrets.token_hex(2)}-{r}" for r in ("cli", "rtr", "srv")]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert not set(names) & set(cleanup_stale())  # not the default pattern
        assert sorted(cleanup_stale("ctq*")) == sorted(names)
        assert not set(names) & set(list_namespaces())
    finally:
        _drop(names)


def test_cleanup_script():
    stale, foreign = _make_stale()
    # A process inside a stale namespace must not keep it alive.
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale[0], "sleep", "60"],
                               start_new_session=True)
    try:
        time.sleep(0.1)
        cp = subprocess.run(["sh", str(CLEANUP_SCRIPT)], capture_output=True, text=True,
                            timeout=30)
        assert cp.returncode == 0, cp.stderr
        left = set(list_namespaces())
        assert not set(stale) & left
        assert set(foreign) <= left
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        if sleeper.poll() is None:
            os.killpg(sleeper.pid, signal.SIGKILL)
            sleeper.wait(timeout=5)
        _drop(stale + foreign)
