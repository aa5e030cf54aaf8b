"""`ctbpf demo` (`make demo`): ctbpf tracking real traffic in a lab.

A short script of steps, each under its own title:

  1. build a lab of three network namespaces: client -- router -- server;
  2. start `ctbpf run --iface cli0 --iface srv0` in the router;
  3. send real traffic through the router: TCP kept open, TCP closed,
     TCP refused, UDP, ping (IPv4 and IPv6), TCP over IPv6;
  4. show the table as the spec prints it (`ctbpf list`), then
     `conntrack -L`-style with counters, then a few counters;
  5. say where to look, to do it yourself: only commands that work when
     they are read. With --keep the lab and the tracker stay (the tracker
     in a session of its own, its log in a file) until `ctbpf demo
     --cleanup`; on a terminal the demo waits for Enter (at most WAIT_S)
     before it removes them; otherwise it names --keep;
  6. stop the tracker with SIGINT and remove the lab and the pinned maps.

Bounded: every wait has a deadline, the whole demo takes a few seconds and
gives up after DEADLINE_S. On failure it prints one line and exits 1; the
lab and the pins go away in every case (unless --keep).

Longer than 500 lines because it is one script meant to be read top to
bottom: the demo's steps in the order it prints them.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ctbpf.errors import CtbpfError
from ctbpf.lab.netns import Lab, LabError, PACKAGE_ROOT, RUN_DIR, cleanup_stale

DEADLINE_S = 30.0        # the whole demo, set-up to teardown
READY_S = 15.0           # ctbpf run: compile, load, attach
STOP_S = 5.0             # ctbpf run: detach and exit after SIGINT
STEP_S = 10.0            # any one command
HOLD_S = 25              # the kept-open TCP connection outlives the demo's traffic
WAIT_S = 600.0           # on a terminal: how long the lab waits for Enter

# Ports on the server (the lab is new, so they are free).
TCP_OPEN, TCP_CLOSED, TCP_REFUSED, TCP6, UDP = 8080, 8081, 8082, 8443, 5353
TCP_INBOUND = 2222      # the server's attempt at the client, refused by the policy


class DemoError(Exception):
    """A step failed; str() is the one line the user sees."""


class _Interrupted(BaseException):
    """SIGTERM while the demo runs: unwind through the cleanup like Ctrl-C."""


def main(keep: bool = False, cleanup: bool = False, interactive: bool | None = None) -> int:
    """Run the demo (or, with cleanup, remove the labs --keep left); 0 on
    success, 1 (one line on stderr) on failure."""
    if os.geteuid() != 0:
        print("ctbpf demo: error: needs root (network namespaces and BPF); "
              "run it as root, e.g. `sudo make demo`", file=sys.stderr)
        return 1
    if cleanup:
        return cleanup_kept()
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    demo = _Demo(keep, interactive)
    rc = 0
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        demo.run()
    except (DemoError, LabError, CtbpfError, OSError, subprocess.SubprocessError) as e:
        rc = _fail(e)
    except (KeyboardInterrupt, _Interrupted):
        print("ctbpf demo: interrupted; cleaning up", file=sys.stderr)
        rc = 130
    finally:
        # Cleaning up must not be cut short: a second Ctrl-C or SIGTERM waits.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            demo.teardown()
        except Exception as e:  # noqa: BLE001 - reported as one line
            if rc == 0:
                rc = _fail(f"cleanup failed: {e}")
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)
    return rc


def _on_sigterm(_signum, _frame):
    raise _Interrupted()


def _fail(e: object) -> int:
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"ctbpf demo: error: {text}", file=sys.stderr, flush=True)
    return 1


def _title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _say(text: str = "") -> None:
    print(f"   {text}" if text else "", flush=True)


def _row(proto: str, what: str, result: str) -> None:
    _say(f"{proto:<5} {what:<46} -> {result}")


def _ctbpf_command() -> str:
    """How the user runs ctbpf: on PATH, or this venv's console script."""
    if shutil.which("ctbpf"):
        return "ctbpf"
    script = Path(sys.executable).with_name("ctbpf")
    return str(script) if script.exists() else f"{sys.executable} -m ctbpf"


def _kept_file(prefix: str) -> Path:
    return RUN_DIR / f"{prefix}.demo.json"


def cleanup_kept() -> int:
    """`ctbpf demo --cleanup`: stop the trackers of the labs `--keep` left,
    then remove those labs and their maps. One line per lab."""
    from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

    found = sorted(RUN_DIR.glob("*.demo.json")) if RUN_DIR.is_dir() else []
    if not found:
        print("ctbpf demo: no kept demo lab to remove")
        return 0
    rc = 0
    for path in found:
        try:
            kept = json.loads(path.read_text())
            prefix, pid, pin_dir = kept["prefix"], int(kept["pid"]), Path(kept["pin_dir"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            rc = _fail(f"{path.name}: unreadable ({e}); remove it by hand")
            continue
        _stop_pid(pid)
        cleanup_stale(prefix, force=True)
        remove_pins(pin_dir)
        for leftover in (path, Path(kept.get("log", ""))):
            if leftover.name:
                leftover.unlink(missing_ok=True)
        print(f"ctbpf demo: removed lab {prefix}, its tracker (pid {pid}) and {pin_dir}")
    return rc


def _stop_pid(pid: int) -> None:
    """SIGINT a kept tracker (it detaches and exits), SIGKILL after STOP_S."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Demo:
    def __init__(self, keep: bool, interactive: bool = False) -> None:
        self.keep = keep
        self.interactive = interactive
        self.log_path: Path | None = None
        self.log_pos = 0
        self.deadline = time.monotonic() + DEADLINE_S
        self.lab: Lab | None = None
        self.tracker: subprocess.Popen | None = None
        self.pin_dir: Path | None = None

    # -- the script --------------------------------------------------------

    def run(self) -> None:
        print("ctbpf demo: connection tracking in XDP, on real traffic through a lab router")

        _title("1. Lab: three network namespaces, client -- router -- server")
        lab = self.lab = Lab()
        if not lab.warm_up():
            raise DemoError(f"lab {lab.prefix}: the client cannot ping the server")
        _say(f"client  {lab.client:<14} {lab.client_ip:<12} {lab.client_ip6}")
        _say(f"router  {lab.router:<14} cli0 {lab.router_client_ip} / srv0 {lab.router_server_ip}")
        _say(f"server  {lab.server:<14} {lab.server_ip:<12} {lab.server_ip6}")

        _title("2. Tracker: ctbpf run --iface cli0 --iface srv0, in the router")
        self.start_tracker()

        _title("3. Traffic through the router")
        self.traffic()

        _title("4. The table, as /proc/net/ip_conntrack shows it: ctbpf list")
        print(self.ctbpf("list").stdout, end="", flush=True)

        _title("5. The same with counters, like conntrack -L: ctbpf list -o conntrack")
        cp = self.ctbpf("list", "-o", "conntrack")
        print(cp.stdout, end="")
        print(cp.stderr.strip(), flush=True)

        _title("6. Counters: ctbpf stats")
        self.show_stats(json.loads(self.ctbpf("stats", "-o", "json").stdout))

        _title("7. Enforce mode, the spec's firewall: only ESTABLISHED/RELATED back in")
        self.enforce()

        _title("8. Where to look")
        self.hints()
        if self.keep:
            self.hand_over()
            return
        if self.interactive:
            self.wait_for_enter()

        _title("9. Stop the tracker (SIGINT) and clean up")
        self.stop_tracker()

    # -- steps ---------------------------------------------------------------

    def start_tracker(self) -> None:
        lab = self.lab
        from ctbpf.datapath import pins  # noqa: PLC0415 - needs no BCC

        # The router's default pin dir, as `ip netns exec <router> ctbpf ...` finds it.
        self.pin_dir = pins.bpffs_root(mount=True) / f"ctbpf@{lab.router}"
        # Its output goes to a file, not a pipe: a tracker kept by --keep
        # outlives the demo, and a pipe with no reader would end it.
        RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.log_path = RUN_DIR / f"{lab.prefix}.demo.log"
        with open(self.log_path, "w", encoding="utf-8") as out:
            self.tracker = lab.popen("router", [sys.executable, "-m", "ctbpf", "run",
                                                "--iface", "cli0", "--iface", "srv0"],
                                     env=lab.traffic_env(), cwd=PACKAGE_ROOT,
                                     stdout=out, stderr=subprocess.STDOUT)
        line = self.read_ready_line(min(READY_S, self.left()))
        _say(line)
        # Per-flow counters are off by default, as nf_conntrack_acct is;
        # the listing below shows them.
        _say("ctbpf set acct=1      # per-flow packet/byte counters (off by default, as "
             "nf_conntrack_acct)")
        self.ctbpf("set", "acct=1")

    def log_lines(self) -> list[str]:
        """Lines the tracker has written since the last call."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            f.seek(self.log_pos)
            text = f.read()
        done = text.rfind("\n") + 1
        self.log_pos += len(text[:done].encode())
        return [line.strip() for line in text[:done].splitlines() if line.strip()]

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no message"
        return lines[-1] if lines else "no message"

    def read_ready_line(self, timeout: float) -> str:
        proc = self.tracker
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout * 10) + 2):
            for line in self.log_lines():
                if line.startswith("ctbpf: tracking on "):
                    return line
            if proc.poll() is not None:
                raise DemoError(f"ctbpf run exited ({proc.returncode}): {self.last_log_line()}")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        raise DemoError(f"ctbpf run was not ready within {timeout:.0f} s")

    def traffic(self) -> None:
        lab = self.lab
        s4, s6 = lab.server_ip, lab.server_ip6

        # TCP kept open: the client holds the connection after its echo.
        self.server("tcp-server", "--port", TCP_OPEN, "--timeout", HOLD_S + 5)
        lab.traffic_popen("client", "tcp-client", "--host", s4, "--port", TCP_OPEN,
                          "--hold", HOLD_S)
        self.wait_flow(6, TCP_OPEN, "ESTABLISHED")
        _row("TCP", f"{s4} port {TCP_OPEN}, echo, kept open", "ESTABLISHED [ASSURED]")

        # TCP closed: echo, then the client closes first.
        server = self.server("tcp-server", "--port", TCP_CLOSED)
        self.client_ok("tcp-client", "--host", s4, "--port", TCP_CLOSED)
        self.wait_exit(server, "tcp-server")
        self.wait_flow(6, TCP_CLOSED, "TIME_WAIT")
        _row("TCP", f"{s4} port {TCP_CLOSED}, echo, closed", "TIME_WAIT [ASSURED]")

        # TCP refused: nobody listens, the server's RST is the only answer.
        cp = lab.traffic("client", "tcp-client", "--host", s4, "--port", TCP_REFUSED,
                         "--timeout", 3, timeout=self.left(STEP_S))
        if cp.returncode == 0 or "refused" not in cp.stderr:
            raise DemoError(f"expected a refused connection to port {TCP_REFUSED}: "
                            f"{cp.stderr.strip() or cp.stdout.strip()}")
        if self.flows(6, TCP_REFUSED):
            raise DemoError(f"the refused connection to port {TCP_REFUSED} is still in the table")
        _row("TCP", f"{s4} port {TCP_REFUSED}, nobody listens: RST", "entry removed at once")

        # UDP request and response.
        server = self.server("udp-server", "--port", UDP, "--count", 2, proto="udp")
        self.client_ok("udp-client", "--host", s4, "--port", UDP, "--count", 2)
        self.wait_exit(server, "udp-server")
        _row("UDP", f"{s4} port {UDP}, 2 requests, 2 responses", "replied, 30 s")

        # ping, both families.
        for addr in (s4, s6):
            if not lab.ping("client", addr, count=2):
                raise DemoError(f"ping {addr} from the client got no answer")
        _row("ICMP", f"ping {s4} and {s6}, 2 each", "echo entries, 30 s")

        # TCP over IPv6.
        server = self.server("tcp-server", "--port", TCP6, "--family", 6)
        self.client_ok("tcp-client", "--host", s6, "--port", TCP6)
        self.wait_exit(server, "tcp-server")
        self.wait_flow(6, TCP6, "TIME_WAIT")
        _row("TCP", f"[{s6}] port {TCP6}, echo, closed", "TIME_WAIT [ASSURED]")

    def enforce(self) -> None:
        lab = self.lab
        _say("ctbpf policy set --mode enforce cli0 accept=new,established,related "
             "new_requires_syn=1 -- srv0 accept=established,related")
        self.ctbpf("policy", "set", "--mode", "enforce", "cli0",
                   "accept=new,established,related", "new_requires_syn=1", "--",
                   "srv0", "accept=established,related")
        # From the inside out: NEW, then its answers, pass.
        if not lab.ping("client", lab.server_ip, count=1):
            raise DemoError("with the policy on, the client's ping got no answer")
        _row("ICMP", f"client pings {lab.server_ip}", "NEW out, answer back: passes")
        # From the outside in: the server's SYN is dropped at XDP on srv0.
        listener = lab.traffic_popen("client", "tcp-server", "--port", TCP_INBOUND,
                                     "--timeout", 4, cwd=PACKAGE_ROOT)
        try:
            if not lab.wait_listening("client", TCP_INBOUND, "tcp", timeout=self.left(5)):
                raise DemoError(f"tcp-server on port {TCP_INBOUND} did not start")
            cp = lab.traffic("server", "tcp-client", "--host", lab.client_ip, "--port",
                             TCP_INBOUND, "--timeout", 1.5, timeout=self.left(STEP_S))
        finally:
            listener.kill()
            listener.wait()
        if cp.returncode == 0 or "timed out" not in cp.stderr:
            raise DemoError(f"the server reached the client through the firewall: "
                            f"{cp.stderr.strip() or cp.stdout.strip()}")
        if self.flows(6, TCP_INBOUND):
            raise DemoError("a dropped SYN left an entry")
        _row("TCP", f"server connects to {lab.client_ip} port {TCP_INBOUND}",
             "NEW from outside: dropped, no entry")
        _say()
        print(self.ctbpf("policy").stdout, end="", flush=True)
        _say("As nft (ctbpf policy --explain), the srv0 chain:")
        nft = self.ctbpf("policy", "--explain").stdout.splitlines()
        at = next(i for i, line in enumerate(nft) if "chain in_srv0" in line)
        for line in nft[at:at + 5]:
            _say("  " + line.strip())

    def show_stats(self, s: dict) -> None:
        p, e, n = s["packets"], s["events"], s["entries"]
        _say("packets  " + "  ".join(f"{k} {v}" for k, v in p.items()))
        _say(f"entries  assured {n['assured']}  new {n['new']}  total {n['total']}")
        _say(f"events   created {e['insert']}  promoted to assured {e['promote']}  "
             f"removed by the datapath {e['delete']} (the refused connection)")

    def hints(self) -> None:
        lab, ct = self.lab, _ctbpf_command()
        rtr = f"ip netns exec {lab.router}"
        if not (self.keep or self.interactive):
            # Printed after the lab is gone: no command that names it.
            _say("This lab and its maps are removed when the demo ends. To try it yourself:")
            _say(f"  {ct} demo --keep       # the same, but the lab and the tracker stay")
            _say(f"  {ct} demo --cleanup    # then remove them")
            _say(f"  {ct} run --iface eth0  # on your own host: track an interface")
            return
        _say("Try it, as root, in another terminal (pins are found per network namespace):")
        _say(f"  {rtr} {ct} list                # the table, as above")
        _say(f"  {rtr} {ct} list -o conntrack   # with counters")
        _say(f"  {rtr} {ct} stats               # counters, like conntrack -S")
        _say(f"  {rtr} {ct} events              # NEW, UPDATE, DESTROY as they happen")
        _say(f"  {rtr} {ct} policy --explain    # the firewall, as an nft ruleset")
        _say(f"  {rtr} curl -s 127.0.0.1:9476/metrics   # Prometheus metrics")
        _say(f"  ip netns exec {lab.client} ping {lab.server_ip}   # traffic through the router")
        _say(f"Maps: {self.pin_dir} (bpftool map show pinned {self.pin_dir}/ct_new)")
        if self.keep:
            _say(f"The lab and the tracker stay (--keep); the tracker logs to {self.log_path}.")
            _say(f"Remove them with: {ct} demo --cleanup")

    def hand_over(self) -> None:
        """--keep: the tracker and the lab outlive the demo."""
        pid = self.tracker.pid
        _kept_file(self.lab.prefix).write_text(json.dumps(
            {"prefix": self.lab.prefix, "pid": pid, "pin_dir": str(self.pin_dir),
             "log": str(self.log_path)}) + "\n")
        self.lab.hand_over(pid)
        self.tracker = None
        self.lab = None

    def wait_for_enter(self) -> None:
        _say(f"Press Enter to stop the tracker and remove the lab "
             f"(it goes by itself in {WAIT_S / 60:.0f} minutes).")
        ready, _, _ = select.select([sys.stdin], [], [], WAIT_S)
        if ready:
            sys.stdin.readline()
        # The wait is the user's: the stop gets its own time again.
        self.deadline = time.monotonic() + STOP_S + STEP_S

    def stop_tracker(self) -> None:
        proc, self.tracker = self.tracker, None
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=min(STOP_S, self.left()))
        except subprocess.TimeoutExpired:
            self.tracker = proc  # teardown kills it
            raise DemoError(f"ctbpf run did not stop within {STOP_S:.0f} s of SIGINT") from None
        if rc != 0:
            raise DemoError(f"ctbpf run exited {rc}: {self.last_log_line()}")
        left = [i for i in ("cli0", "srv0") if self.xdp_on(i)]
        if left:
            raise DemoError(f"XDP still attached to {', '.join(left)} after the tracker stopped")
        _say("ctbpf run exited 0; XDP detached from cli0 and srv0")

    def teardown(self) -> None:
        """Whatever happened: no tracker, and unless --keep no lab, no pins."""
        if self.tracker is not None and self.tracker.poll() is None:
            self.tracker.send_signal(signal.SIGINT)
            try:
                self.tracker.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.tracker.kill()
                self.tracker.wait(timeout=STOP_S)
        if self.log_path is not None and self.lab is not None and not self.keep:
            self.log_path.unlink(missing_ok=True)
        if self.lab is None:
            return
        if self.keep:
            atexit.unregister(self.lab.close)  # the lab would close itself at exit
            _say(f"lab {self.lab.prefix} and {self.pin_dir} kept (--keep)")
            return
        try:
            self.lab.close()
        finally:
            if self.pin_dir is not None:
                from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

                remove_pins(self.pin_dir)
                if self.pin_dir.exists():
                    raise DemoError(f"could not remove {self.pin_dir}")
        _say(f"lab {self.lab.prefix} and {self.pin_dir} removed")

    # -- helpers -------------------------------------------------------------

    def left(self, step: float = DEADLINE_S) -> float:
        """Seconds this step may take: its own bound, within the demo's."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DemoError(f"the demo took longer than {DEADLINE_S:.0f} s")
        return min(step, remaining)

    def ctbpf(self, *args: str) -> subprocess.CompletedProcess:
        """`ip netns exec <router> ctbpf ARGS`, no --pin-dir: found as a user would."""
        cp = self.lab.exec("router", [sys.executable, "-m", "ctbpf", *args],
                           env=self.lab.traffic_env(), cwd=PACKAGE_ROOT,
                           timeout=self.left(STEP_S))
        if cp.returncode != 0:
            raise DemoError(f"ctbpf {' '.join(args)} failed: {cp.stderr.strip()}")
        return cp

    def server(self, cmd: str, *args: object, proto: str = "tcp") -> subprocess.Popen:
        port = args[args.index("--port") + 1]
        if "--timeout" not in args:
            args = (*args, "--timeout", STEP_S)
        proc = self.lab.traffic_popen("server", cmd, *args, cwd=PACKAGE_ROOT)
        if not self.lab.wait_listening("server", port, proto, timeout=self.left(5)):
            raise DemoError(f"{cmd} on port {port} did not start")
        return proc

    def client_ok(self, cmd: str, *args: object) -> None:
        cp = self.lab.traffic("client", cmd, *args, cwd=PACKAGE_ROOT, timeout=self.left(STEP_S))
        if cp.returncode != 0:
            raise DemoError(cp.stderr.strip() or f"{cmd} exited {cp.returncode}")

    def wait_exit(self, proc: subprocess.Popen, what: str) -> None:
        try:
            _, err = proc.communicate(timeout=self.left(STEP_S))
        except subprocess.TimeoutExpired:
            raise DemoError(f"{what} did not finish") from None
        if proc.returncode != 0:
            raise DemoError(err.strip() or f"{what} exited {proc.returncode}")

    def flows(self, proto: int, dport: int) -> list:
        """The router's flows of proto to dport (the pinned maps, read in-process)."""
        from ctbpf.datapath import table  # noqa: PLC0415

        return [f for f in table.read_flows(self.pin_dir)
                if f.proto == proto and f.orig.dport == dport]

    def wait_flow(self, proto: int, dport: int, state: str, timeout: float = 5.0) -> None:
        """Poll the router's table until the flow to dport is in state (bounded)."""
        deadline = time.monotonic() + self.left(timeout)
        seen = "no entry"
        for _ in range(int(timeout / 0.05) + 2):
            for f in self.flows(proto, dport):
                seen = f.state or "an entry"
                if f.state == state:
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise DemoError(f"the flow to port {dport} did not reach {state} (last seen: {seen})")

    def xdp_on(self, iface: str) -> bool:
        cp = self.lab.exec("router", ["ip", "-d", "link", "show", "dev", iface],
                           timeout=self.left(STEP_S))
        return "prog/xdp" in cp.stdout
