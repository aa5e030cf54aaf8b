"""Blind injection against live connections: ctbpf enforce vs nf_conntrack.

`python -m bench injection` (or `python -m bench.injection`, which prints
only). The attack of tests/integration/test_window_injection.py, measured:
crafted segments sent, INVALID counted, the entry's state after, whether an
idle connection is alive after 12 s, and a bulk transfer's MB/s with and
without the attack.
"""

from __future__ import annotations

import json
import re
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import MIN_RUNS, ROOT, spread, target_row
from ctbpf.lab.inject import FIREWALL, TTL, WATCH, kernel_ruleset

HELP = "blind RST/data/ACK injection into live TCP connections: ctbpf enforce vs nf_conntrack"

NOTES = """\
**What is measured.** An attacker in the client namespace who knows a
connection's addresses and ports, not its sequence numbers, sends crafted
segments for its 4-tuple from the client's side (`python -m ctbpf.lab.inject
attack`): RSTs beyond the receiver's window, RST+ACKs below the last ack,
64-byte data segments beyond the window, and ACKs of data never sent, each
3/8 to 7/16 of the sequence space away from the live numbers (which it
learns by sniffing the client's eth0). Two connections are attacked
through the lab's router:

- a bulk download (`--injection-bytes`, 1 GB by default, window scaling on,
  Linux defaults) while `--injection-segments` (10,000) crafted segments
  are spread over 0.25 s from its first packets; it is timed against the
  same download without an attack, run after run (`--injection-runs`,
  interleaved);
- an idle echo connection: 3,000 crafted segments, then 12 s in which the
  connection sends nothing (longer than tcp_timeout_close, 10 s: an entry
  that a RST had moved to CLOSE would be gone), then one exchange of data
  both ways. The bulk runs go on meanwhile, on their own connections.

**Configurations** (the router namespace): `ctbpf-enforce`, `ctbpf run
--config FILE` with the spec's firewall in enforce mode (INVALID dropped at
XDP on cli0, generic XDP on veth); `nf_conntrack`, the same firewall as the
nftables ruleset `ctbpf policy --explain` gives (prerouting, `ct state`),
`nf_conntrack_tcp_loose = 0`. INVALID is ctbpf's per-reason counters
(`ctbpf stats`) and the kernel's `conntrack -S` invalid, before and after
the attack; "own packets INVALID" is INVALID beyond the crafted segments,
over every transfer (the plain ones too) and the idle connection: the
connections' real packets, which should never be INVALID; "reached server"
counts the crafted segments (marked by their IP TTL) that the server
namespace received.

**Targets.** Every crafted segment INVALID and dropped, none reaching the
server, the entry ESTABLISHED throughout, the idle connection alive after
12 s, in both configurations; the transfer's throughput under attack is
reported next to its throughput without.
"""

CONFIGS = ("ctbpf-enforce", "nf_conntrack")
INJECT = [sys.executable, "-m", "ctbpf.lab.inject"]
BPFFS = Path("/sys/fs/bpf")
SILENCE = 12.0
#: Seconds the crafted segments of one attacked transfer are spread over.
ATTACK_SPREAD = 0.25
IDLE_SEGMENTS = 3000


def add_arguments(g) -> None:
    g.add_argument("--injection-runs", type=int, default=MIN_RUNS, metavar="N",
                   help=f"transfers with and without the attack per config (default {MIN_RUNS})")
    g.add_argument("--injection-bytes", type=int, default=1_000_000_000, metavar="B",
                   help="bytes of each bulk transfer (default 1000000000)")
    g.add_argument("--injection-segments", type=int, default=10_000, metavar="N",
                   help="crafted segments per attacked transfer (default 10000)")
    g.add_argument("--injection-configs", default=",".join(CONFIGS), metavar="LIST",
                   help=f"among {', '.join(CONFIGS)} (default all)")




class Bench:
    """One lab and one router configuration."""

    def __init__(self, config: str) -> None:
        from ctbpf.lab.netns import Lab  # noqa: PLC0415

        self.config = config
        self.lab = Lab()
        self.tracker: subprocess.Popen | None = None
        self.pin_dir: Path | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="ctbpf-bench-inj-"))
        self.port = 42000 + secrets.randbelow(2000) * 4
        try:
            if not self.lab.warm_up():
                raise RuntimeError(f"lab {self.lab.prefix}: the client cannot ping the server")
            self.lab.nft("server", WATCH)
            if config == "nf_conntrack":
                self.lab.nft("router", kernel_ruleset())
                self.lab.sysctl("router", net__netfilter__nf_conntrack_tcp_loose=0)
            else:
                self._start_ctbpf()
        except BaseException:
            self.close()
            raise

    # -- the router ----------------------------------------------------------

    def _start_ctbpf(self) -> None:
        conf = self.tmp / "firewall.toml"
        conf.write_text(FIREWALL)
        self.pin_dir = BPFFS / f"ctbpf-bench-inj-{secrets.token_hex(4)}"
        argv = [sys.executable, "-m", "ctbpf", "run", "--iface", "cli0", "--iface", "srv0",
                "--pin-dir", str(self.pin_dir), "--metrics-addr", "none", "--config", str(conf)]
        self.tracker = self.lab.popen("router", argv, env=self.lab.traffic_env(), cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.tracker.poll() is not None:
                err = self.tracker.stderr.read()[-500:] if self.tracker.poll() is not None else ""
                raise RuntimeError(f"ctbpf run never became ready: {err.strip()}")
            ready, _, _ = select.select([self.tracker.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.tracker.stdout.readline()
                if line.startswith("ctbpf: tracking on "):
                    self.ready_line = line.strip()
                    return

    def close(self) -> None:
        if self.tracker is not None and self.tracker.poll() is None:
            self.tracker.send_signal(signal.SIGINT)
            try:
                self.tracker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.tracker.kill()
                for iface in ("cli0", "srv0"):
                    self.lab.exec("router", ["ip", "link", "set", "dev", iface, "xdp", "off"],
                                  timeout=10)
        if self.pin_dir is not None:
            from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

            remove_pins(self.pin_dir)
        self.lab.close()

    def invalid_reasons(self) -> dict[str, int]:
        """INVALID so far: per reason (ctbpf), or the kernel's one count."""
        if self.config == "nf_conntrack":
            cp = self.lab.exec("router", ["conntrack", "-S"], timeout=10)
            return {"invalid": sum(int(n) for n in re.findall(r"\binvalid=(\d+)", cp.stdout))}
        from ctbpf.datapath import stats  # noqa: PLC0415

        return dict(stats.summary(stats.read_counters(self.pin_dir), {})["invalid"])

    def invalid(self) -> int:
        return sum(self.invalid_reasons().values())

    @staticmethod
    def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}

    def state(self, sport: int, dport: int) -> str | None:
        lab = self.lab
        if self.config == "nf_conntrack":
            cp = lab.exec("router", ["conntrack", "-L", "-p", "tcp", "--orig-port-src",
                                     str(sport), "--orig-port-dst", str(dport)], timeout=10)
            for line in cp.stdout.splitlines():
                if f"sport={sport} dport={dport}" in line:
                    return line.split()[3]
            return None
        from ctbpf.datapath import tableops  # noqa: PLC0415

        spec = tableops.TupleSpec(6, lab.client_ip, lab.server_ip, sport, dport)
        for _ in range(2):
            m = tableops.lookup(self.pin_dir, spec)
            if m is not None:
                return m.flow.state
        return None

    def reached_server(self) -> int:
        cp = self.lab.exec("server", ["nft", "list", "table", "ip", "injwatch"], timeout=10)
        return int(re.search(r"counter packets (\d+)", cp.stdout)[1])

    # -- the tools -------------------------------------------------------------

    def ports(self) -> tuple[int, int]:
        self.port += 2
        return self.port, self.port + 1

    def start(self, ns: str, *args: object, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        return self.lab.popen(ns, [*INJECT, *map(str, args)], env=self.lab.traffic_env(),
                              cwd=ROOT, stdin=stdin)

    @staticmethod
    def line(proc: subprocess.Popen, timeout: float, what: str) -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        text = proc.stdout.readline() if ready else ""
        if not text:
            proc.kill()
            raise RuntimeError(f"{what} said nothing within {timeout:g}s")
        return json.loads(text)

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float, what: str) -> dict:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"{what} did not finish within {timeout:g}s") from None
        lines = [json.loads(t) for t in out.splitlines() if t.startswith("{")]
        if not lines:
            raise RuntimeError(f"{what} exited {proc.returncode}: {err.strip()[-300:]}")
        return lines[-1]

    def attacker(self, sport: int, dport: int, count: int, seconds: float) -> subprocess.Popen:
        lab = self.lab
        proc = self.start("client", "attack", "--src", lab.client_ip, "--dst", lab.server_ip,
                          "--sport", sport, "--dport", dport, "--count", count,
                          "--seconds", seconds, "--ttl", TTL, "--learn-timeout", 15)
        if self.line(proc, 10, "attacker").get("event") != "ready":
            raise RuntimeError("attacker not ready")
        return proc

    # -- the measurements --------------------------------------------------------

    def transfer(self, nbytes: int, segments: int) -> dict:
        """One bulk download, attacked by `segments` crafted ones (0: none)."""
        dport, sport = self.ports()
        server = self.start("server", "bulk-server", "--port", dport, "--bytes", nbytes,
                            "--timeout", 60)
        self.line(server, 10, "bulk server")
        inv0, reached0 = self.invalid_reasons(), self.reached_server()
        attack = self.attacker(sport, dport, segments, ATTACK_SPREAD) if segments else None
        client = self.start("client", "bulk-client", "--host", self.lab.server_ip,
                            "--port", dport, "--bytes", nbytes, "--bind-port", sport,
                            "--timeout", 60)
        states: dict[str, int] = {}
        polls: list[tuple[float, str | None]] = []
        done = threading.Event()

        def poll() -> None:
            end = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < end:
                s = self.state(sport, dport)
                polls.append((time.monotonic(), s))
                done.wait(0.01)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            got = self.finish(client, 70, "bulk client")
        finally:
            done.set()
            poller.join(timeout=15)
        att = self.finish(attack, 20, "attacker") if attack else {"sent": 0}
        fin = self.finish(server, 10, "bulk server")
        # From the first poll that found the entry established (the poller
        # may catch the handshake) to the server's FIN.
        first = next((i for i, (_, s) in enumerate(polls) if s == "ESTABLISHED"), len(polls))
        for t, s in polls[first:]:
            if t < fin["t_fin"]:
                states[str(s)] = states.get(str(s), 0) + 1
        reasons = self.moved(inv0, self.invalid_reasons())
        return {"mb_per_s": got["mb_per_s"], "seconds": got["seconds"],
                "intact": got["intact"] and got["received"] == nbytes,
                "sent": att["sent"], "invalid": sum(reasons.values()), "invalid_by": reasons,
                "kinds": att.get("kinds", {}),
                "reached_server": self.reached_server() - reached0,
                "states_during": states, "state_after": self.state(sport, dport),
                "attack_inside_transfer": (not attack) or
                (got["t_start"] < att["t_first"] and att["t_last"] < got["t_end"])}

    def idle_start(self) -> dict:
        """An echo connection, attacked once: what to check after the silence."""
        dport, sport = self.ports()
        server = self.start("server", "echo-server", "--port", dport, "--timeout", 300)
        self.line(server, 10, "echo server")
        client = self.start("client", "echo-client", "--host", self.lab.server_ip,
                            "--port", dport, "--bind-port", sport, "--timeout", 300,
                            stdin=subprocess.PIPE)
        self.line(client, 10, "echo client")
        idle = {"client": client, "server": server, "sport": sport, "dport": dport}
        if not self.ping(idle, 1000):
            raise RuntimeError("the idle connection does not work before the attack")
        inv0, reached0 = self.invalid_reasons(), self.reached_server()
        attack = self.attacker(sport, dport, IDLE_SEGMENTS, 0.5)
        self.ping(idle, 100)
        att = self.finish(attack, 20, "attacker")
        time.sleep(0.2)
        reasons = self.moved(inv0, self.invalid_reasons())
        idle.update(sent=att["sent"], invalid=sum(reasons.values()), invalid_by=reasons,
                    reached_server=self.reached_server() - reached0,
                    state_after_attack=self.state(sport, dport), quiet_from=time.monotonic())
        return idle

    def ping(self, idle: dict, n: int) -> bool:
        idle["client"].stdin.write(f"ping {n}\n")
        idle["client"].stdin.flush()
        return bool(self.line(idle["client"], 10, "echo client").get("ok"))

    def idle_finish(self, idle: dict) -> dict:
        left = idle["quiet_from"] + SILENCE - time.monotonic()
        if left > 0:
            time.sleep(left)
        silent = round(time.monotonic() - idle["quiet_from"], 1)
        state_before = self.state(idle["sport"], idle["dport"])
        alive = self.ping(idle, 2000)
        state_after_ping = self.state(idle["sport"], idle["dport"])
        idle["client"].stdin.write("quit\n")
        idle["client"].stdin.flush()
        return {"sent": idle["sent"], "invalid": idle["invalid"], "invalid_by": idle["invalid_by"],
                "reached_server": idle["reached_server"],
                "state_after_attack": idle["state_after_attack"],
                "silent_s": silent, "state_after_silence": state_before,
                "alive_after_silence": alive,
                "state_after_ping": state_after_ping}


def measure(config: str, args) -> dict:
    b = Bench(config)
    try:
        idle = b.idle_start()
        plain, attacked = [], []
        for _ in range(args.injection_runs):
            plain.append(b.transfer(args.injection_bytes, 0))
            attacked.append(b.transfer(args.injection_bytes, args.injection_segments))
        out = {"idle": b.idle_finish(idle), "plain": plain, "attacked": attacked}
        if config != "nf_conntrack":
            out["ready_line"] = b.ready_line
        return out
    finally:
        b.close()


def run(args) -> dict:
    configs = [c.strip() for c in args.injection_configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise ValueError(f"unknown config {', '.join(bad)}; choose from {', '.join(CONFIGS)}")
    raw = {c: measure(c, args) for c in configs}
    figures, targets = {}, []
    for c, r in raw.items():
        att = r["attacked"]
        f = {
            "segments_sent": sum(a["sent"] for a in att) + r["idle"]["sent"],
            "invalid_counted": sum(a["invalid"] for a in att) + r["idle"]["invalid"],
            "reached_server": sum(a["reached_server"] for a in att) + r["idle"]["reached_server"],
            # INVALID beyond the crafted ones: the connections' own packets
            # (plain transfers included), which should never be INVALID
            "own_packets_invalid": sum(t["invalid"] - t["sent"]
                                       for t in att + r["plain"] + [r["idle"]]),
            "states_during": sorted({s for a in att for s in a["states_during"]}),
            "state_after_idle_attack": r["idle"]["state_after_attack"],
            "idle_alive_after_12s": r["idle"]["alive_after_silence"],
            "idle_state_after_12s": r["idle"]["state_after_silence"],
            "all_intact": all(a["intact"] for a in att + r["plain"]),
            "mb_per_s": spread([p["mb_per_s"] for p in r["plain"]], digits=1),
            "mb_per_s_attacked": spread([a["mb_per_s"] for a in att], digits=1),
            "seconds": spread([p["seconds"] for p in r["plain"]], digits=3),
            "seconds_attacked": spread([a["seconds"] for a in att], digits=3),
            "idle_silent_s": r["idle"]["silent_s"],
        }
        figures[c] = f
        ok = (f["invalid_counted"] == f["segments_sent"] and f["reached_server"] == 0
              and f["own_packets_invalid"] == 0
              and f["states_during"] == ["ESTABLISHED"] and f["idle_alive_after_12s"]
              and f["state_after_idle_attack"] == "ESTABLISHED" and f["all_intact"])
        targets.append(target_row(f"blind injection, {c}: crafted segments INVALID", "of sent",
                                  f["invalid_counted"], "all, none reaching the server, entry "
                                  "ESTABLISHED, idle connection alive after 12 s", ok,
                                  baseline=f["segments_sent"], baseline_name="sent"))
        targets.append(target_row(f"bulk transfer under attack, {c}", "MB/s",
                                  f["mb_per_s_attacked"], "reported", None,
                                  baseline=f["mb_per_s"], baseline_name="no attack",
                                  note="no target: the price of the attack"))
    return {"figures": figures, "raw": raw, "targets": targets, "plots": [],
            "params": {"runs": args.injection_runs, "bytes": args.injection_bytes,
                       "segments": args.injection_segments, "idle_segments": IDLE_SEGMENTS,
                       "silence_s": SILENCE}}


def summary(result: dict) -> str:
    from bench.common import format_value  # noqa: PLC0415

    gb = result["params"]["bytes"] / 1e9
    lines = ["| config | crafted sent | INVALID counted | own packets INVALID | "
             "reached server | entry during "
             "attack | idle entry after attack | idle alive after >= 12 s silent | "
             "MB/s no attack | MB/s attacked | s no attack | s attacked |", "|---" * 12 + "|"]
    for c, f in result["figures"].items():
        lines.append(f"| {c} | {f['segments_sent']} | {f['invalid_counted']} | "
                     f"{f.get('own_packets_invalid', '?')} | {f['reached_server']} | "
                     f"{','.join(f['states_during'])} | "
                     f"{f['state_after_idle_attack']} | {f['idle_alive_after_12s']} after "
                     f"{f.get('idle_silent_s', '?')} s ({f['idle_state_after_12s']}) | "
                     f"{format_value(f['mb_per_s'])} | {format_value(f['mb_per_s_attacked'])} | "
                     f"{format_value(f.get('seconds'))} | "
                     f"{format_value(f.get('seconds_attacked'))} |")
    return "\n".join(lines) + f"\n(transfers of {gb:g} GB; MB/s and s: median [min, max])"


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.injection`: run and print, save nothing."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m bench.injection", description=HELP)
    add_arguments(ap)
    args = ap.parse_args(argv)
    result = run(args)
    print(json.dumps(result["figures"], indent=1))
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
