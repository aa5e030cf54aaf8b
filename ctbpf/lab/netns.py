"""A three-namespace lab: client -- router -- server.

Used by the demo, the integration tests and the conformance suite. Traffic
only ever flows between namespaces that the lab created::

    <prefix>-cli                 <prefix>-rtr                  <prefix>-srv
    eth0 10.N.1.2/24 ---- cli0 10.N.1.1/24   srv0 10.N.2.1/24 ---- eth0 10.N.2.2/24
         fd00:N:1::2/64        fd00:N:1::1/64  fd00:N:2::1/64        fd00:N:2::2/64

The router-side interface names, ``cli0`` and ``srv0``, are stable: that is
where ctbpf attaches its XDP and TC programs.  The router forwards IPv4 and
IPv6 with reverse-path filtering off; client and server have default routes
through it.  IPv6 duplicate address detection is off everywhere, so every
address (link-local included) is usable the moment the lab is up.

The module shells out to ``ip``, ``sysctl`` and ``nft`` (iproute2, procps,
nftables) and has no Python dependency.  Everything is root-only.

Typical use::

    with Lab() as lab:
        lab.warm_up()
        lab.popen(lab.server, lab.traffic_argv("tcp-server", "--port", 8080))
        lab.wait_listening(lab.server, 8080)
        cp = lab.exec(lab.client, lab.traffic_argv("tcp-client", "--host", lab.server_ip, "--port", 8080))

A lab builds itself in the constructor (20-30 ms here) and removes itself
in :meth:`Lab.close`, which ``with`` calls even when the block raised.
:func:`cleanup_stale` removes what a crashed run left behind.

Longer than 500 lines because Lab is one class whose namespaces, links,
processes and files share the state that makes its teardown complete even
when the code using it fails.
"""

from __future__ import annotations

import atexit
import errno
import fnmatch
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

__all__ = [
    "Lab",
    "LabError",
    "DEFAULT_PREFIX_GLOB",
    "LAB_NAME_RE",
    "ROUTER_IFACES",
    "cleanup_stale",
    "list_namespaces",
    "unavailable_reason",
]

#: Router-side interface names: client side, server side.
ROUTER_IFACES = ("cli0", "srv0")
#: Their ifindexes inside the router namespace (stable, see Lab._build).
ROUTER_IFINDEXES = (11, 12)
#: ifindex of eth0 inside the client and the server namespaces.
CLIENT_IFINDEX, SERVER_IFINDEX = 21, 22
#: Interface name inside the client and the server namespaces.
HOST_IFACE = "eth0"
#: Namespace name suffixes, in build order.
ROLES = ("cli", "rtr", "srv")
#: Names of namespaces made with a default prefix (what cleanup may touch).
LAB_NAME_RE = re.compile(r"^ctl[0-9a-f]{5}-(cli|rtr|srv)$")
#: fnmatch pattern for default prefixes ("ctl" + 5 lowercase hex digits).
DEFAULT_PREFIX_GLOB = "ctl" + "[0-9a-f]" * 5
#: Where a live lab records its owner pid, so cleanup leaves it alone.
RUN_DIR = Path("/run/ctbpf-lab")
#: Root of the source tree holding the ``ctbpf`` package (for PYTHONPATH).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,19}$")
_ROLE_ALIASES = {
    "client": "cli", "cli": "cli",
    "router": "rtr", "rtr": "rtr",
    "server": "srv", "srv": "srv",
}
# Seconds: how long teardown waits for processes after SIGTERM, then SIGKILL.
_TERM_WAIT = 2.0
_KILL_WAIT = 1.0
# Seconds: default bound on every command run through exec()/nft().
_EXEC_TIMEOUT = 60.0


class LabError(RuntimeError):
    """A lab could not be built, used or removed; the message says why."""


# --------------------------------------------------------------------------
# small helpers


def _run(argv: Sequence[str], *, input: str | None = None,
         timeout: float = _EXEC_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """Run a host command, capture its output, raise LabError on failure."""
    try:
        cp = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]} (install it)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and cp.returncode != 0:
        detail = (cp.stderr or cp.stdout).strip().replace("\n", "; ")
        raise LabError(f"{shlex.join(argv)} failed (exit {cp.returncode}): {detail}")
    return cp


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    cp = _run(["ip", "netns", "list"])
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def unavailable_reason() -> str | None:
    """Why a lab cannot be built on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "sysctl"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command"
    return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_file(prefix: str) -> Path:
    return RUN_DIR / f"{prefix}.pid"


def _owner_alive(prefix: str) -> bool:
    """True if a live process recorded itself as owner of the lab ``prefix``."""
    try:
        pid = int(_owner_file(prefix).read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def _kill_namespace_pids(names: Iterable[str]) -> None:
    """SIGKILL every process still inside the given namespaces."""
    for name in names:
        cp = _run(["ip", "netns", "pids", name], check=False, timeout=10)
        for tok in cp.stdout.split():
            try:
                os.kill(int(tok), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def _delete_namespaces(names: Sequence[str]) -> None:
    """Delete namespaces (missing ones are fine); processes are killed first."""
    if not names:
        return
    _kill_namespace_pids(names)
    batch = "".join(f"netns del {name}\n" for name in names)
    # -force: go on after a line fails (a namespace already gone).
    _run(["ip", "-force", "-batch", "-"], input=batch, check=False, timeout=30)


def cleanup_stale(prefix_glob: str = DEFAULT_PREFIX_GLOB, *, force: bool = False) -> list[str]:
    """Remove namespaces left behind by crashed labs; return their names.

    A namespace is removed when its name is ``<prefix>-(cli|rtr|srv)`` with
    ``prefix`` matching the fnmatch pattern ``prefix_glob``; by default that
    is exactly the labs with generated prefixes (``^ctl[0-9a-f]{5}-(cli|rtr|srv)$``).
    Labs whose owning process is still alive are left alone unless ``force``.
    Nothing else is touched.
    """
    doomed: list[str] = []
    prefixes: set[str] = set()
    for name in list_namespaces():
        prefix, sep, role = name.rpartition("-")
        if not sep or role not in ROLES or not fnmatch.fnmatchcase(prefix, prefix_glob):
            continue
        if prefix_glob == DEFAULT_PREFIX_GLOB and not LAB_NAME_RE.match(name):
            continue
        if not force and _owner_alive(prefix):
            log.debug("lab %s is owned by a live process, kept", prefix)
            continue
        doomed.append(name)
        prefixes.add(prefix)
    _delete_namespaces(doomed)
    for prefix in prefixes:
        try:
            _owner_file(prefix).unlink()
        except OSError:
            pass
    left = set(doomed) & set(list_namespaces())
    if left:
        raise LabError(f"could not remove namespaces: {', '.join(sorted(left))}")
    if doomed:
        log.info("removed stale lab namespaces: %s", ", ".join(doomed))
    return doomed


def _lab_number(prefix: str) -> int:
    """The N in 10.N.x.y / fd00:N:x::y, 1..250, derived from the prefix."""
    return zlib.crc32(prefix.encode()) % 250 + 1


# --------------------------------------------------------------------------
# the lab


class Lab:
    """Client, router and server network namespaces joined by two veth pairs.

    Attributes (all plain strings):
      ``prefix``; ``client``, ``router``, ``server`` (namespace names);
      ``client_ip``, ``server_ip``, ``router_client_ip``, ``router_server_ip``
      and their ``*_ip6`` IPv6 twins; ``n`` (the lab number in the addresses);
      ``router_ifaces`` = ("cli0", "srv0"); ``host_iface`` = "eth0";
      ``setup_seconds`` (wall time the build took).

    Namespace arguments of the methods take a namespace name or a role
    ("client"/"cli", "router"/"rtr", "server"/"srv").
    """

    router_ifaces = ROUTER_IFACES
    host_iface = HOST_IFACE

    def __init__(self, prefix: str | None = None, *, n: int | None = None) -> None:
        """Build the lab now; on any failure remove what was made and raise LabError.

        ``prefix`` defaults to ``ctl`` + 5 random hex digits (unused so far);
        ``n`` (1..250) defaults to a number derived from the prefix.
        """
        # Closed until there is something to remove; close() is then a no-op.
        self._closed = True
        self._procs: list[tuple[subprocess.Popen, bool]] = []
        self._made: list[str] = []
        reason = unavailable_reason()
        if reason:
            raise LabError(f"cannot build a lab: {reason}")
        existing = set(list_namespaces())
        if prefix is None:
            for _ in range(20):
                prefix = "ctl" + secrets.token_hex(3)[:5]
                if not any(f"{prefix}-{r}" in existing for r in ROLES):
                    break
            else:  # pragma: no cover - a million names, twenty tries
                raise LabError("could not pick an unused lab prefix")
        elif not _PREFIX_RE.match(prefix):
            raise LabError(f"bad lab prefix {prefix!r}: want [A-Za-z0-9][A-Za-z0-9_.-]{{0,19}}")
        if n is None:
            n = _lab_number(prefix)
        if not 1 <= n <= 250:
            raise LabError(f"lab number must be 1..250, not {n}")
        self.prefix = prefix
        self.n = n
        self.client, self.router, self.server = (f"{prefix}-{r}" for r in ROLES)
        clash = {self.client, self.router, self.server} & existing
        if clash:
            raise LabError(f"namespaces already exist: {', '.join(sorted(clash))}"
                           " (another lab, or a stale one: see cleanup_stale())")
        self.client_ip, self.router_client_ip = f"10.{n}.1.2", f"10.{n}.1.1"
        self.server_ip, self.router_server_ip = f"10.{n}.2.2", f"10.{n}.2.1"
        self.client_ip6, self.router_client_ip6 = f"fd00:{n}:1::2", f"fd00:{n}:1::1"
        self.server_ip6, self.router_server_ip6 = f"fd00:{n}:2::2", f"fd00:{n}:2::1"
        self.setup_seconds = 0.0
        self._closed = False
        atexit.register(self.close)
        t0 = time.monotonic()
        try:
            self._build()
        except BaseException:
            try:
                self.close()
            except LabError as exc:
                log.warning("%s", exc)
            raise
        self.setup_seconds = time.monotonic() - t0
        log.debug("lab %s up in %.3f s", prefix, self.setup_seconds)

    # -- building ----------------------------------------------------------

    def _build(self) -> None:
        self._write_owner()
        cli, rtr, srv = self.client, self.router, self.server
        c_if, s_if = ROUTER_IFACES
        # Namespaces first (recorded before they exist, so a half-made lab is
        # still removed), then the veth pairs created straight inside them.
        # Explicit, distinct ifindexes: left to itself each namespace numbers
        # its veth 2, and a veth whose ifindex equals its peer's makes the
        # carrier-on event "not urgent" for linkwatch, which then activates
        # the queue up to 1 s later: frames sent meanwhile (the first ARP or
        # NDP reply) are dropped, and the first ping takes 1 s or fails.
        self._made = [cli, rtr, srv]
        _run(["ip", "-batch", "-"], input=(
            f"netns add {cli}\n"
            f"netns add {rtr}\n"
            f"netns add {srv}\n"
            f"link add {HOST_IFACE} index {CLIENT_IFINDEX} netns {cli} type veth"
            f" peer name {c_if} index {ROUTER_IFINDEXES[0]} netns {rtr}\n"
            f"link add {s_if} index {ROUTER_IFINDEXES[1]} netns {rtr} type veth"
            f" peer name {HOST_IFACE} index {SERVER_IFINDEX} netns {srv}\n"
        ))
        # Sysctls before any link is up: no DAD (addresses usable at once),
        # forwarding and no reverse-path filter on the router.
        def no_dad(ifaces: Sequence[str]) -> list[str]:
            return [f"net.ipv6.conf.{i}.accept_dad=0" for i in ("all", "default", *ifaces)]

        for ns in (cli, srv):
            self._sysctl(ns, no_dad([HOST_IFACE]))
        self._sysctl(rtr, [
            *no_dad(ROUTER_IFACES),
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            *(f"net.ipv4.conf.{i}.rp_filter=0" for i in ("all", "default", *ROUTER_IFACES)),
        ])
        self._ip_batch(cli, [
            "link set lo up",
            f"addr add {self.client_ip}/24 dev {HOST_IFACE}",
            f"addr add {self.client_ip6}/64 dev {HOST_IFACE} nodad",
            f"link set {HOST_IFACE} up",
            f"route add 0.0.0.0/0 via {self.router_client_ip}",
            f"route add ::/0 via {self.router_client_ip6}",
        ])
        self._ip_batch(rtr, [
            "link set lo up",
            f"addr add {self.router_client_ip}/24 dev {c_if}",
            f"addr add {self.router_client_ip6}/64 dev {c_if} nodad",
            f"addr add {self.router_server_ip}/24 dev {s_if}",
            f"addr add {self.router_server_ip6}/64 dev {s_if} nodad",
            f"link set {c_if} up",
            f"link set {s_if} up",
        ])
        self._ip_batch(srv, [
            "link set lo up",
            f"addr add {self.server_ip}/24 dev {HOST_IFACE}",
            f"addr add {self.server_ip6}/64 dev {HOST_IFACE} nodad",
            f"link set {HOST_IFACE} up",
            f"route add 0.0.0.0/0 via {self.router_server_ip}",
            f"route add ::/0 via {self.router_server_ip6}",
        ])

    def _write_owner(self) -> None:
        try:
            RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            _owner_file(self.prefix).write_text(f"{os.getpid()}\n")
        except OSError as exc:  # only protects against concurrent cleanup
            log.debug("cannot record lab owner: %s", exc)

    def _sysctl(self, ns: str, settings: Sequence[str]) -> None:
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings])

    def _ip_batch(self, ns: str, lines: Sequence[str]) -> None:
        _run(["ip", "-n", ns, "-batch", "-"], input="".join(f"{l}\n" for l in lines))

    # -- using -------------------------------------------------------------

    def ns(self, name: str) -> str:
        """The namespace name for a role or a namespace name of this lab."""
        role = _ROLE_ALIASES.get(name)
        if role is not None:
            return f"{self.prefix}-{role}"
        if name in (self.client, self.router, self.server):
            return name
        raise LabError(f"{name!r} is not a namespace of lab {self.prefix}")

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {getattr(self, 'prefix', '?')} is closed")

    def _argv(self, ns: str, argv: Sequence[str] | str) -> list[str]:
        self._check_open()
        if isinstance(argv, str):
            argv = shlex.split(argv)
        return ["ip", "netns", "exec", self.ns(ns), *map(str, argv)]

    def exec(self, ns: str, argv: Sequence[str] | str, **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` inside namespace ``ns`` and wait for it.

        Keyword arguments go to :func:`subprocess.run`. Defaults: output
        captured as text (unless ``stdout``/``stderr`` are given), a timeout of
        60 s, ``check=False``.
        """
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", _EXEC_TIMEOUT)
        return subprocess.run(self._argv(ns, argv), **kwargs)

    def popen(self, ns: str, argv: Sequence[str] | str, **kwargs) -> subprocess.Popen:
        """Start ``argv`` in the background inside ``ns``; teardown kills it.

        Keyword arguments go to :class:`subprocess.Popen`. Defaults: stdout and
        stderr piped as text, stdin from /dev/null, a new session (so teardown
        can signal the whole process group).
        """
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self._argv(ns, argv), **kwargs)
        self._procs.append((proc, bool(kwargs["start_new_session"])))
        return proc

    def nft(self, ns: str, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) in ``ns``; LabError on failure."""
        cp = self.exec(ns, ["nft", "-f", "-"], input=ruleset)
        if cp.returncode != 0:
            raise LabError(f"nft -f in {self.ns(ns)} failed (exit {cp.returncode}): "
                           + cp.stderr.strip().replace("\n", "; "))

    def sysctl(self, ns: str, **settings: object) -> None:
        """Set sysctls in ``ns``: ``lab.sysctl("router", net__ipv4__ip_forward=1)``
        (double underscores stand for dots)."""
        self._check_open()
        self._sysctl(self.ns(ns), [f"{k.replace('__', '.')}={v}" for k, v in settings.items()])

    def traffic_argv(self, cmd: str, *args: object) -> list[str]:
        """argv running ``python3 -m ctbpf.lab.traffic cmd args...`` with this
        interpreter; use with :meth:`exec`/:meth:`popen` and ``env=lab.traffic_env()``
        when ctbpf is not installed."""
        return [sys.executable, "-m", "ctbpf.lab.traffic", cmd, *map(str, args)]

    @staticmethod
    def traffic_env(base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which ``-m ctbpf.lab.traffic`` imports this source tree."""
        env = dict(os.environ if base is None else base)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{PACKAGE_ROOT}{os.pathsep}{path}" if path else str(PACKAGE_ROOT)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def traffic(self, ns: str, cmd: str, *args: object, **kwargs) -> subprocess.CompletedProcess:
        """Run a labtraffic command in ``ns`` and wait (see :meth:`exec`)."""
        kwargs.setdefault("env", self.traffic_env())
        return self.exec(ns, self.traffic_argv(cmd, *args), **kwargs)

    def traffic_popen(self, ns: str, cmd: str, *args: object, **kwargs) -> subprocess.Popen:
        """Start a labtraffic command in ``ns`` in the background (see :meth:`popen`)."""
        kwargs.setdefault("env", self.traffic_env())
        return self.popen(ns, self.traffic_argv(cmd, *args), **kwargs)

    def wait_listening(self, ns: str, port: int, proto: str = "tcp",
                       timeout: float = 5.0) -> bool:
        """Poll until a socket listens on ``port`` (tcp or udp) in ``ns``."""
        flag = {"tcp": "-Hltn", "udp": "-Hlun"}[proto]
        deadline = time.monotonic() + timeout
        while True:
            cp = self.exec(ns, ["ss", flag, f"sport = :{int(port)}"], timeout=timeout)
            if cp.returncode == 0 and cp.stdout.strip():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def ping(self, src: str, dst: str, *, count: int = 1, wait: float = 2.0) -> bool:
        """True if ``count`` echo requests from ``src`` (a namespace) to ``dst``
        (an address) were answered; bounded by ``-W wait`` per reply."""
        six = ":" in dst
        cp = self.exec(src, ["ping", "-6" if six else "-4", "-n", "-q", "-c", str(count),
                             "-i", "0.2", "-W", f"{wait:g}", dst],
                       timeout=count * (wait + 0.2) + 5)
        return cp.returncode == 0

    def warm_up(self) -> bool:
        """Ping client -> server once over IPv4 and IPv6 so every neighbour
        entry on the path exists; True if both answered."""
        if shutil.which("ping") is None:
            raise LabError("needs the 'ping' command (Debian: iputils-ping)")
        ok4 = self.ping("client", self.server_ip)
        ok6 = self.ping("client", self.server_ip6)
        return ok4 and ok6

    # -- teardown ----------------------------------------------------------

    def _stop_processes(self) -> None:
        procs, self._procs = self._procs, []
        live = [(p, grp) for p, grp in procs if p.poll() is None]

        def signal_all(sig: int) -> None:
            for p, grp in live:
                if p.poll() is not None:
                    continue
                try:
                    if grp:
                        os.killpg(p.pid, sig)
                    else:
                        p.send_signal(sig)
                except (ProcessLookupError, PermissionError):
                    pass

        for sig, wait in ((signal.SIGTERM, _TERM_WAIT), (signal.SIGKILL, _KILL_WAIT)):
            if not any(p.poll() is None for p, _ in live):
                break
            signal_all(sig)
            deadline = time.monotonic() + wait
            for p, _ in live:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for p, _ in procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            if p.poll() is None:
                log.warning("process %d did not die", p.pid)

    def hand_over(self, pid: int) -> None:
        """Leave the lab running after this process exits, owned by ``pid``
        (a tracker kept by `ctbpf demo --keep`): stale-lab cleanup leaves it
        alone while that process lives."""
        atexit.unregister(self.close)
        self._closed = True
        self._procs = []
        _owner_file(self.prefix).write_text(f"{pid}\n")

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces (and so its
        veths). Idempotent; raises LabError only if a namespace survived."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._stop_processes()
        finally:
            made = self._made
            self._made = []
            _delete_namespaces(made)
            try:
                _owner_file(self.prefix).unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.debug("cannot remove owner file: %s", exc)
        left = set(made) & set(list_namespaces())
        if left:
            raise LabError(f"lab {self.prefix}: namespaces left behind: {', '.join(sorted(left))}")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except LabError:
            if exc_type is None:
                raise
            log.exception("lab teardown failed while handling another error")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Lab {getattr(self, 'prefix', '?')} n={getattr(self, 'n', '?')} {state}>"
