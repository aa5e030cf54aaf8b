"""A traffic generator for the benchmarks that produces XDP frames without an
skb per packet, so that it costs less per frame than the router it measures.

    python -m bench.livegen --netns NS --out eth0 --dst-mac MAC --src IP --dst IP \\
        --proto udp|tcp --flows 1|1k|100k|new --count N --max-seconds T [--json]

Two ways to send, tried in this order:

- ``live_frames``: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on a
  program that writes flow i into the frame and redirects it to OUT, run
  with ``repeat`` in batches. A kernel or an LSM may refuse the flag; it is
  probed once and the refusal is reported in one line.
- ``xdp_loop``: a private veth pair lgA<->lgB in the sending namespace with
  native XDP on both ends (bench/bpf/livegen.c). A few seed frames sent into
  the pair circulate: on lgA each turn is counted, gets the next flow and is
  sent back by XDP_TX; on lgB it is broadcast through a devmap holding lgB
  itself (the loop goes on) and OUT (one copy leaves per turn). The budget
  ends the loop (XDP_DROP on lgA); a stop flag and the detach end it early.
  The driver seeds again when the loop dies short of its budget.
  The programs are attached through BPF links, which die with the process,
  so even a SIGKILL ends the loop (the veth pair it leaves is deleted by the
  next run). The whole loop runs in the softirq of the CPU that sent the
  seeds (``--cpu`` picks it); so does the receiving end of OUT's peer,
  unless that peer has threaded NAPI (/sys/class/net/<peer>/threaded).

Both need what veth needs for frames sent by ndo_xdp_xmit: the *peer* of
OUT must have an XDP program attached in native mode (or GRO on, which
gives the veth a NAPI), or every frame is dropped at OUT.

``sent`` is the growth of OUT's tx_packets counter (on veth: the frames the
peer took in), ``seconds`` the time between frame 0 and the last frame as
stamped by the BPF program (bpf_ktime_get_ns), or until the stop when
stopped early.

Python API (what bench/forwarding.py can drive like its Blaster)::

    gen = LiveGen(netns="lab-client", out="eth0", dst_mac="..", src="10.0.1.2",
                  dst="10.0.2.2", proto="tcp", flows="100k", count=50_000_000,
                  max_seconds=5).start()     # returns once the first frames are out
    ...                                      # measure a window
    result = gen.stop()                      # or gen.wait(timeout)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.forwarding import CLIENT_ISN, DPORT0, FLOW_SPECS, FRAME, NEW_NET, SERVER_ISN, SPORT0
from ctbpf.lab.netns import pid_alive

ROOT = Path(__file__).resolve().parent.parent
BPF_SRC = Path(__file__).resolve().parent / "bpf" / "livegen.c"
BPF_F_TEST_XDP_LIVE_FRAMES = 2
SEED_ETHERTYPE = 0x88B5          # lg_fan sends these back to lgA unchanged (see livegen.c)
NEW_SPORT0, NEW_DPORT = 1024, 80
TCP_PAYLOAD = 10
DEFAULT_SEEDS = 64
MAX_SEEDS = 200                  # below the 256 frames of a veth ring
RESEED_AFTER_S = 0.05            # no progress for this long: the loop died, seed again
MAX_RESEEDS = 1000
LIVE_BATCH = 1 << 20             # frames per BPF_PROG_TEST_RUN call
ANNOUNCE = "livegen: sending"
IN_NETNS_ENV = "LIVEGEN_IN_NETNS"
FLOW_ALIASES = {"1000": "1k", "100000": "100k"}


BPF_LINK_CREATE = 28
BPF_XDP = 37                     # enum bpf_attach_type


class _LinkCreateAttr(ctypes.Structure):
    """union bpf_attr for BPF_LINK_CREATE (the head of it; zeros after)."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("rest", ctypes.c_uint64 * 6)]


class LiveGenError(Exception):
    """A one-line reason why the generator cannot run (exit 2 on the CLI)."""


# --------------------------------------------------------------------------
# frames


def inet_csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


@dataclass(frozen=True)
class Template:
    """The frame of flow 0 and what the BPF program needs to derive flow i."""

    frame: bytes
    defines: dict

    @property
    def seed(self) -> bytes:
        return self.frame[:12] + struct.pack("!H", SEED_ETHERTYPE) + self.frame[14:]


def build_template(*, dst_mac: str, src_mac: str, src: str, dst: str, proto: str,
                   flows: str, seq: int | None = None, ack: int | None = None,
                   new_net: str | None = None, tcp_ack: bool = False) -> Template:
    """Frame 0 of a run, checksums included. Established modes: UDP or TCP
    ACK+PSH with 10 bytes of 0x61, padded (UDP) to 64 bytes; `new`: UDP, or a
    TCP SYN with no data (54 bytes over IPv4), source 10.200.0.0 over IPv4
    (`new_net` "A.B": A.B.0.0 instead). tcp_ack (TCP `new` only): a bare ACK
    instead of the SYN, whose sequence and acknowledgement numbers the BPF
    program varies frame by frame (an ACK flood of no connection)."""
    if flows not in FLOW_SPECS:
        raise ValueError(f"--flows: choose among {', '.join(FLOW_SPECS)}, not {flows!r}")
    if proto not in ("udp", "tcp"):
        raise ValueError(f"--proto: choose udp or tcp, not {proto!r}")
    sa, da = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if sa.version != da.version:
        raise ValueError(f"--src {src} and --dst {dst} are not of the same IP version")
    v6 = sa.version == 6
    new = flows == "new"
    if tcp_ack and not (new and proto == "tcp"):
        raise ValueError("--tcp-ack: only with --proto tcp --flows new")
    if new and not v6:
        net = new_net or NEW_NET
        try:
            sa = ipaddress.IPv4Address(f"{net}.0.0")
        except ValueError:
            raise ValueError(f"--new-net: want A.B (a /16 of IPv4), not {net!r}") from None
    if new:
        sa = ipaddress.ip_address(int(sa) & ~0xFFFF)      # the low 16 bits carry the flow
        sport, dport, nsp, ndp = NEW_SPORT0, NEW_DPORT, 1, 1
        seq = CLIENT_ISN if seq is None else seq
        ack = 0 if ack is None else ack
    else:
        _, nsp, ndp = FLOW_SPECS[flows]
        sport, dport = SPORT0, DPORT0
        seq = CLIENT_ISN + 1 if seq is None else seq
        ack = SERVER_ISN + 1 if ack is None else ack
    l3len = 40 if v6 else 20
    if proto == "tcp":
        syn = new
        payload = b"" if syn else b"\x61" * TCP_PAYLOAD
    else:
        syn = False
        payload = b"\x61" * max(0, FRAME - 14 - l3len - 8)
    if proto == "tcp":
        flags = 0x02 if syn else 0x18                       # SYN, or ACK+PSH
        if tcp_ack:
            flags, syn, ack = 0x10, False, (ack or SERVER_ISN)   # a bare ACK, no data
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF,
                         (ack if not syn else 0) & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
        l4proto = 6
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
        l4proto = 17
    seg = l4 + payload
    if v6:
        pseudo = sa.packed + da.packed + struct.pack("!IxxxB", len(seg), l4proto)
    else:
        pseudo = sa.packed + da.packed + struct.pack("!xBH", l4proto, len(seg))
    c4 = inet_csum(pseudo + seg)
    if proto == "udp" and c4 == 0:
        c4 = 0xFFFF
    coff = 16 if proto == "tcp" else 6
    seg = seg[:coff] + struct.pack("!H", c4) + seg[coff + 2:]
    if v6:
        l3 = struct.pack("!IHBB", 6 << 28, len(seg), l4proto, 64) + sa.packed + da.packed
        ipc = 0
    else:
        hdr = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, l4proto, 0)
        hdr += sa.packed + da.packed
        ipc = inet_csum(hdr)
        l3 = hdr[:10] + struct.pack("!H", ipc) + hdr[12:]
    eth = _mac(dst_mac) + _mac(src_mac) + struct.pack("!H", 0x86DD if v6 else 0x0800)
    frame = eth + l3 + seg
    defines = {"LG_FRAME_LEN": len(frame), "LG_ETH_P": 0x86DD if v6 else 0x0800,
               "LG_IPV6": int(v6), "LG_TCP": int(proto == "tcp"), "LG_NEW": int(new),
               "LG_NSP": nsp, "LG_NDP": ndp, "LG_SPORT0": sport, "LG_DPORT0": dport,
               "LG_SALO0": int(sa) & 0xFFFF, "LG_L4CSUM0": c4, "LG_IPCSUM0": ipc,
               "LG_ACKF": int(tcp_ack), "LG_SEQ0": f"{seq & 0xFFFFFFFF}U",
               "LG_ACK0": f"{(ack or 0) & 0xFFFFFFFF}U"}
    return Template(frame, defines)


def flow_of(tmpl: Template, i: int) -> tuple[int, int, int]:
    """(low 16 bits of the source address, source port, destination port) of
    frame i: what the BPF program writes (for checks)."""
    d = tmpl.defines
    if d["LG_NEW"]:
        return i & 0xFFFF, NEW_SPORT0 + (i >> 16) % 64512, d["LG_DPORT0"]
    return d["LG_SALO0"], d["LG_SPORT0"] + i % d["LG_NSP"], d["LG_DPORT0"] + i % d["LG_NDP"]


def parse_flows(text: str) -> str:
    name = FLOW_ALIASES.get(text, text)
    if name not in FLOW_SPECS:
        raise ValueError(f"--flows: choose among {', '.join(FLOW_SPECS)}, not {text!r}")
    return name


# --------------------------------------------------------------------------
# the kernel side


def _sysfs(iface: str, name: str) -> str:
    try:
        return Path(f"/sys/class/net/{iface}/{name}").read_text().strip()
    except OSError:
        raise LiveGenError(f"no interface {iface!r} in this network namespace") from None


def tx_counters(iface: str) -> tuple[int, int]:
    return (int(_sysfs(iface, "statistics/tx_packets")),
            int(_sysfs(iface, "statistics/tx_dropped")))


def _ip(*args: str) -> None:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if cp.returncode != 0:
        raise LiveGenError(f"ip {' '.join(args)}: {cp.stderr.strip()}")


def remove_stale_loops() -> list[str]:
    """Delete lgA<pid> veths whose generator is gone (killed with SIGKILL)."""
    gone = []
    for p in Path("/sys/class/net").iterdir():
        name = p.name
        if name.startswith("lgA") and name[3:].isdigit() and not pid_alive(int(name[3:])):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=20)
            gone.append(name)
    return gone


@contextlib.contextmanager
def _stderr_to(path: str):
    """fd 2 to a file for the duration (libbcc prints compiler output there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def load_bpf(defines: dict):
    """Compile bench/bpf/livegen.c with BCC; a failure is one line."""
    try:
        from bcc import BPF  # noqa: PLC0415
    except ImportError:
        raise LiveGenError("BCC is missing (Debian python3-bpfcc)") from None
    cflags = [f"-D{k}={v}" for k, v in defines.items()]
    with tempfile.NamedTemporaryFile(prefix="livegen-cc-", suffix=".log") as log:
        try:
            with _stderr_to(log.name):
                return BPF(src_file=str(BPF_SRC).encode(), cflags=cflags)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exceptions
            text = Path(log.name).read_text(errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
            why = lines[0] if lines else str(e).splitlines()[0]
            raise LiveGenError(f"the generator's BPF program did not load: {why}") from None


def load_func(b, name: str):
    """Load one XDP program of the object; the verifier's refusal is one line
    (its log goes to a file, not to our stderr)."""
    from bcc import BPF  # noqa: PLC0415

    with tempfile.NamedTemporaryFile(prefix="livegen-vf-", suffix=".log") as log:
        try:
            with _stderr_to(log.name):
                return b.load_func(name.encode(), BPF.XDP)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exceptions
            text = Path(log.name).read_text(errors="replace").strip().splitlines()
            why = next((ln for ln in reversed(text) if ln and not ln.startswith(
                ("processed", ";"))), str(e))
            raise LiveGenError(f"the kernel refused the generator's {name} program: "
                               f"{why.strip()}") from None


def probe_live_frames(b, frame: bytes) -> str | None:
    """None if BPF_F_TEST_XDP_LIVE_FRAMES runs here, else the one-line refusal."""
    from ctbpf.datapath.bpfsys import BPF_PROG_TEST_RUN, BpfError, TestRunAttr, _bpf  # noqa: PLC0415

    fn = load_func(b, "lg_probe")
    buf = ctypes.create_string_buffer(frame, len(frame))
    attr = TestRunAttr(prog_fd=fn.fd, data_size_in=len(frame), data_in=ctypes.addressof(buf),
                       repeat=1, flags=BPF_F_TEST_XDP_LIVE_FRAMES)
    try:
        _bpf(BPF_PROG_TEST_RUN, attr, "live frames probe")
    except BpfError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        return f"live frames: refused by this kernel ({name}); using the XDP loop generator"
    return None


# --------------------------------------------------------------------------
# one run, in the current network namespace


class _Run:
    """Everything one run made, undone by close() whatever happened."""

    def __init__(self, *, out: str, dst_mac: str, src: str, dst: str, proto: str, flows: str,
                 count: int, max_seconds: float, seeds: int, cpu: int | None, mode: str,
                 seq: int | None, ack: int | None, stop: threading.Event,
                 new_net: str | None = None, tcp_ack: bool = False,
                 announce=None) -> None:
        self.out, self.count, self.max_seconds = out, count, max_seconds
        self.seeds, self.cpu, self.mode_wanted, self.stop = seeds, cpu, mode, stop
        self.announce = announce
        self.out_ifindex = int(_sysfs(out, "ifindex"))
        src_mac = _sysfs(out, "address")
        self.tmpl = build_template(dst_mac=dst_mac, src_mac=src_mac, src=src, dst=dst,
                                   proto=proto, flows=flows, seq=seq, ack=ack,
                                   new_net=new_net, tcp_ack=tcp_ack)
        self.info = {"proto": proto, "flows": flows, "count": count, "tcp_ack": tcp_ack,
                     "frame_bytes": len(self.tmpl.frame)}
        self.b = None
        self.veths: list[str] = []
        self.attached: list[tuple[str, int]] = []
        self.links: list[int] = []

    # -- set up and tear down ----------------------------------------------

    def close(self) -> None:
        from bcc import BPF  # noqa: PLC0415

        if self.b is not None:
            with contextlib.suppress(Exception):
                self.b[b"lg_ctl"][ctypes.c_int(0)] = ctypes.c_uint32(1)
        for iface, flags in reversed(self.attached):
            with contextlib.suppress(Exception):
                BPF.remove_xdp(iface.encode(), flags)
        self.attached.clear()
        for fd in self.links:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.links.clear()
        for v in self.veths:
            subprocess.run(["ip", "link", "del", v], capture_output=True, timeout=20)
        self.veths.clear()
        if self.b is not None:
            with contextlib.suppress(Exception):
                self.b.cleanup()
            self.b = None

    def _state(self):
        return self.b[b"lg_state"][ctypes.c_int(0)]

    # -- the run -----------------------------------------------------------

    def run(self) -> dict:
        budget = self.count
        remove_stale_loops()
        self.b = load_bpf({**self.tmpl.defines, "LG_BUDGET": f"{budget}ULL",
                           "LG_OUT_IFINDEX": self.out_ifindex})
        refused = None
        mode = self.mode_wanted
        if mode in ("auto", "live_frames"):
            refused = probe_live_frames(self.b, self.tmpl.frame)
            if refused and mode == "live_frames":
                raise LiveGenError(refused.split(";")[0])
            mode = "xdp_loop" if refused else "live_frames"
        tx0, drop0 = tx_counters(self.out)
        if mode == "live_frames":
            extra = self._live()
        else:
            extra = self._loop()
        tx1, drop1 = self._settle()
        st = self._state()
        sent = tx1 - tx0
        if extra.pop("t_end", None) is not None and st.t1:
            seconds = (st.t1 - st.t0) / 1e9
        else:
            seconds = (extra.pop("t_stop") - st.t0) / 1e9 if st.t0 else 0.0
        extra.pop("t_stop", None)
        turns = min(int(st.count), budget)
        if turns and not sent:
            raise LiveGenError(f"{turns} frames were sent into {self.out} and none came out: "
                               f"its peer needs an XDP program in native mode (or GRO on)")
        return {"mode": mode, "refused": refused, "sent": sent,
                "seconds": round(seconds, 6), "pps": round(sent / seconds, 1) if seconds else 0.0,
                "turns": turns, "out_tx_dropped": drop1 - drop0, "bad_frames": int(st.bad),
                **self.info, **extra}

    def _settle(self) -> tuple[int, int]:
        """OUT's counters once they stop moving (bounded)."""
        last = tx_counters(self.out)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            time.sleep(0.005)
            now = tx_counters(self.out)
            if now == last:
                return now
            last = now
        return last

    def _finished(self, t_start: float) -> str | None:
        if self.stop.is_set():
            return "signal"
        if time.monotonic() - t_start >= self.max_seconds:
            return "time"
        return None

    def _live(self) -> dict:
        from ctbpf.datapath.bpfsys import BPF_PROG_TEST_RUN, TestRunAttr, _bpf  # noqa: PLC0415

        fn = load_func(self.b, "lg_live")
        frame = self.tmpl.frame
        buf = ctypes.create_string_buffer(frame, len(frame))
        t_start = time.monotonic()
        if self.announce:
            self.announce()
        why = None
        while True:
            done = int(self._state().count)
            if done >= self.count:
                why = "budget"
                break
            why = self._finished(t_start)
            if why:
                break
            attr = TestRunAttr(prog_fd=fn.fd, data_size_in=len(frame),
                               data_in=ctypes.addressof(buf), flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                               repeat=min(LIVE_BATCH, self.count - done), batch_size=64)
            _bpf(BPF_PROG_TEST_RUN, attr, "live frames run")
        return {"stopped": why, "t_stop": time.monotonic_ns(),
                "t_end": True if why == "budget" else None}

    def _loop(self) -> dict:
        a, bdev = f"lgA{os.getpid()}", f"lgB{os.getpid()}"
        self.veths.append(a)
        _ip("link", "add", a, "type", "veth", "peer", "name", bdev)
        for v in (a, bdev):
            # no link-local address, no router solicitations or MLD into the loop
            _ip("link", "set", "dev", v, "addrgenmode", "none")
            _ip("link", "set", "dev", v, "up")
        loop_fn, fan_fn = load_func(self.b, "lg_loop"), load_func(self.b, "lg_fan")
        ports = self.b[b"lg_ports"]
        ports[ctypes.c_int(0)] = ctypes.c_int(int(_sysfs(bdev, "ifindex")))
        ports[ctypes.c_int(1)] = ctypes.c_int(self.out_ifindex)
        for iface, fn in ((bdev, fan_fn), (a, loop_fn)):
            self._attach(iface, fn)
        seed = self.tmpl.seed
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((a, 0))
            return self._drive(sock, seed)
        finally:
            sock.close()

    def _attach(self, iface: str, fn) -> None:
        """Native XDP through a BPF link where the kernel has them: the link
        dies with this process, so even SIGKILL ends the loop. Else netlink
        (BCC), detached by close()."""
        from bcc import BPF  # noqa: PLC0415
        from ctbpf.datapath.bpfsys import BpfError, _bpf  # noqa: PLC0415

        ifindex = int(_sysfs(iface, "ifindex"))
        attr = _LinkCreateAttr(prog_fd=fn.fd, target_ifindex=ifindex, attach_type=BPF_XDP,
                               flags=BPF.XDP_FLAGS_DRV_MODE)
        try:
            self.links.append(_bpf(BPF_LINK_CREATE, attr, f"XDP link on {iface}"))
            return
        except BpfError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise LiveGenError(f"native XDP attach to {iface} failed: "
                                   f"{os.strerror(e.errno)}") from None
        try:
            self.b.attach_xdp(iface.encode(), fn, BPF.XDP_FLAGS_DRV_MODE)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exceptions
            raise LiveGenError(f"native XDP attach to a veth failed: "
                               f"{str(e).splitlines()[0]}") from None
        self.attached.append((iface, BPF.XDP_FLAGS_DRV_MODE))

    def _seed(self, sock, seed: bytes) -> int:
        saved = None
        if self.cpu is not None:
            saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})
        n = 0
        try:
            for _ in range(self.seeds):
                try:
                    sock.send(seed)
                    n += 1
                except OSError as e:
                    if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
        finally:
            if saved is not None:
                os.sched_setaffinity(0, saved)
        return n

    def _drive(self, sock, seed: bytes) -> dict:
        t_start = time.monotonic()
        seeded = self._seed(sock, seed)
        if self.announce:
            self.announce()
        reseeds = 0
        last, last_move = -1, time.monotonic()
        why = None
        while True:
            time.sleep(0.002)
            n = int(self._state().count)
            now = time.monotonic()
            if n >= self.count:
                why = "budget"
                break
            why = self._finished(t_start)
            if why:
                break
            if n != last:
                last, last_move = n, now
            elif now - last_move >= RESEED_AFTER_S and reseeds < MAX_RESEEDS:
                seeded += self._seed(sock, seed)
                reseeds += 1
                last_move = now
        t_stop = time.monotonic_ns()
        self.b[b"lg_ctl"][ctypes.c_int(0)] = ctypes.c_uint32(1)
        return {"stopped": why, "seeds": seeded, "reseeds": reseeds, "cpu": self.cpu,
                "t_stop": t_stop, "t_end": True if why == "budget" else None}


def generate(*, out: str, dst_mac: str, src: str, dst: str, proto: str = "udp",
             flows: str = "1", count: int = 1_000_000, max_seconds: float = 10.0,
             seeds: int = DEFAULT_SEEDS, cpu: int | None = None, mode: str = "auto",
             seq: int | None = None, ack: int | None = None,
             stop: threading.Event | None = None, announce=None,
             new_net: str | None = None, tcp_ack: bool = False) -> dict:
    """One bounded run in the *current* network namespace; the result dict.
    Everything it made (veths, XDP attachments) is gone when it returns."""
    run = _Run(out=out, dst_mac=dst_mac, src=src, dst=dst, proto=proto, flows=flows,
               count=count, max_seconds=max_seconds, seeds=seeds, cpu=cpu, mode=mode,
               seq=seq, ack=ack, stop=stop or threading.Event(), announce=announce,
               new_net=new_net, tcp_ack=tcp_ack)
    try:
        return run.run()
    finally:
        run.close()


# --------------------------------------------------------------------------
# the background API


class LiveGen:
    """The generator as a child process in network namespace `netns`
    (``ip netns exec``), for a benchmark that measures a window meanwhile.

    start() returns once frames are being sent (after the BPF compile and
    the probe); stop() interrupts it (SIGINT: it detaches and reports);
    wait() lets it run to its count or its max_seconds. Both return the
    result dict (also in .result): mode, refused, sent, seconds, pps, turns,
    out_tx_dropped, stopped ("budget", "time" or "signal"), and more.
    A failed run raises LiveGenError with the child's one-line reason."""

    def __init__(self, *, netns: str | None, out: str, dst_mac: str, src: str, dst: str,
                 proto: str = "udp", flows: str = "1", count: int = 1_000_000,
                 max_seconds: float = 10.0, seeds: int = DEFAULT_SEEDS, cpu: int | None = None,
                 mode: str = "auto", seq: int | None = None, ack: int | None = None,
                 new_net: str | None = None, tcp_ack: bool = False) -> None:
        flows = parse_flows(str(flows))
        self.argv = [sys.executable, "-m", "bench.livegen", "--out", out, "--dst-mac", dst_mac,
                     "--src", src, "--dst", dst, "--proto", proto, "--flows", flows,
                     "--count", str(count), "--max-seconds", str(max_seconds),
                     "--seeds", str(seeds), "--mode", mode, "--json", "--announce"]
        if netns:
            self.argv += ["--netns", netns]
        if cpu is not None:
            self.argv += ["--cpu", str(cpu)]
        if seq is not None:
            self.argv += ["--seq", str(seq)]
        if ack is not None:
            self.argv += ["--ack", str(ack)]
        if new_net is not None:
            self.argv += ["--new-net", new_net]
        if tcp_ack:
            self.argv.append("--tcp-ack")
        self.max_seconds = max_seconds
        self.proc: subprocess.Popen | None = None
        self.result: dict | None = None
        self.refused: str | None = None

    def start(self, timeout: float = 60.0) -> "LiveGen":
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise LiveGenError(f"the generator was not sending within {timeout:g}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(ANNOUNCE):
                    return self
                if line.startswith("{"):         # finished before we looked (tiny count)
                    self.result = json.loads(line)
                    return self
                if not line:
                    self._finish()               # raises with the child's reason
                    return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> dict:
        if timeout is None:
            timeout = self.max_seconds + 30
        return self._finish(timeout)

    def stop(self, timeout: float = 20.0) -> dict:
        if self.running:
            self.proc.send_signal(signal.SIGINT)
        return self._finish(timeout)

    def _kill(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def _finish(self, timeout: float = 20.0) -> dict:
        assert self.proc is not None, "start() first"
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise LiveGenError(f"the generator did not finish within {timeout:g}s") from None
        for line in out.splitlines():
            if line.startswith("{"):
                self.result = json.loads(line)
        errs = [ln for ln in err.splitlines() if ln.strip()]
        if self.proc.returncode != 0 or self.result is None:
            why = errs[-1] if errs else f"exit {self.proc.returncode}"
            raise LiveGenError(why.removeprefix("livegen: "))
        self.refused = self.result.get("refused")
        return self.result


# --------------------------------------------------------------------------
# the command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"livegen: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        v = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600]: {text!r}")
    return v


def _flows(text: str) -> str:
    try:
        return parse_flows(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--flows: ")) from None


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m bench.livegen",
                 description="XDP traffic generator for the forwarding benchmarks")
    ap.add_argument("--netns", help="network namespace to send from (ip netns name)")
    ap.add_argument("--out", required=True, help="interface the frames leave by")
    ap.add_argument("--dst-mac", required=True, help="destination MAC (the router's)")
    ap.add_argument("--src", required=True, help="source address (IPv4 or IPv6)")
    ap.add_argument("--dst", required=True, help="destination address")
    ap.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    ap.add_argument("--flows", type=_flows, default="1", help="1, 1k, 100k or new")
    ap.add_argument("--count", type=_positive_int, required=True, help="frames to send")
    ap.add_argument("--max-seconds", type=_seconds, required=True,
                    help="bound on the sending time; the run stops there")
    ap.add_argument("--seeds", type=_positive_int, default=DEFAULT_SEEDS,
                    help=f"frames circulating in the XDP loop (default {DEFAULT_SEEDS}, "
                         f"at most {MAX_SEEDS})")
    ap.add_argument("--cpu", type=int, help="CPU to seed the loop from (the loop runs there)")
    ap.add_argument("--mode", choices=("auto", "xdp_loop", "live_frames"), default="auto")
    ap.add_argument("--seq", type=int, help="TCP sequence number (default by --flows)")
    ap.add_argument("--ack", type=int, help="TCP acknowledgment number (default by --flows)")
    ap.add_argument("--new-net", metavar="A.B",
                    help=f"--flows new over IPv4: sources in A.B.0.0/16 (default {NEW_NET})")
    ap.add_argument("--tcp-ack", action="store_true",
                    help="--proto tcp --flows new: bare ACKs with sequence and acknowledgement "
                         "numbers varied frame by frame (an ACK flood), not SYNs")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--announce", action="store_true", help=argparse.SUPPRESS)
    return ap


def _check(a) -> None:
    try:
        _mac(a.dst_mac)
        sa, da = ipaddress.ip_address(a.src), ipaddress.ip_address(a.dst)
    except ValueError as e:
        raise LiveGenError(str(e)) from None
    if sa.version != da.version:
        raise LiveGenError(f"--src {a.src} and --dst {a.dst} are not of the same IP version")
    if a.seeds > MAX_SEEDS:
        raise LiveGenError(f"--seeds: at most {MAX_SEEDS} (a veth ring holds 256 frames)")
    if a.cpu is not None and a.cpu not in os.sched_getaffinity(0):
        raise LiveGenError(f"--cpu {a.cpu}: not a CPU this process may run on")
    if os.geteuid() != 0:
        raise LiveGenError("needs root (BPF and network namespaces)")


def _enter_netns(ns: str) -> None:
    """Re-run this command inside `ns` (ip netns exec also gives it the
    namespace's /sys, where OUT's counters are)."""
    if os.environ.get(IN_NETNS_ENV) == ns:
        return
    if "/" in ns or not Path("/run/netns", ns).exists():
        raise LiveGenError(f"no network namespace {ns!r}")
    env = dict(os.environ)
    env[IN_NETNS_ENV] = ns
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    sys.stdout.flush()
    os.execvpe("ip", ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.livegen",
                      *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    try:
        _check(a)
        if a.netns:
            _enter_netns(a.netns)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, on_signal)

        def announce():
            if a.announce:
                print(ANNOUNCE, flush=True)

        result = generate(out=a.out, dst_mac=a.dst_mac, src=a.src, dst=a.dst, proto=a.proto,
                          flows=a.flows, count=a.count, max_seconds=a.max_seconds,
                          seeds=a.seeds, cpu=a.cpu, mode=a.mode, seq=a.seq, ack=a.ack,
                          new_net=a.new_net, tcp_ack=a.tcp_ack,
                          stop=stop, announce=announce)
    except LiveGenError as e:
        print(f"livegen: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"livegen: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"livegen: {e.strerror or e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(result), flush=True)
    else:
        if result["refused"]:
            print(result["refused"], flush=True)
        print(f"livegen: {result['mode']}: sent {result['sent']:,} frames in "
              f"{result['seconds']:.3f} s: {result['pps']:,.0f} pps "
              f"({result['proto']}/{result['flows']}, stopped by {result['stopped']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
