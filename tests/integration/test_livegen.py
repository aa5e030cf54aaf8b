"""bench/livegen.py, the XDP traffic generator of the forwarding benchmark:
the frames it sends arrive, in the number and over the flows asked, with
correct checksums; it is bounded by time and by signals; and it cleans up.

Each test has a private network namespace with a veth pair out0 <-> rcv0.
The generator sends out of out0; rcv0 carries a native XDP program (needed
there for frames sent by ndo_xdp_xmit) that counts frames per flow, keeps
the first few frames, and drops everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctbpf.lab.netns import Lab, list_namespaces

REPO = Path(__file__).resolve().parents[2]
LIVEGEN = [sys.executable, "-m", "bench.livegen"]
SRC4, DST4 = "10.77.0.1", "10.77.0.2"
CLONE_NEWNET = 0x40000000
SAMPLES = 4       # frames the receiver keeps (see RECEIVER)

RECEIVER = r"""
struct sample { u32 len; u8 b[124]; };
BPF_HASH(flows, u64, u64, 262144);
BPF_ARRAY(total, u64, 2);            /* [0] all frames, [1] not IPv4 */
BPF_ARRAY(samples, struct sample, SAMPLES);

int receive(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int k = 0;
    u64 *t = total.lookup(&k);
    if (!t)
        return XDP_DROP;
    u64 n = __sync_fetch_and_add(t, 1);
    /* keep frames 0, 1, 777 and 4321 (flows past the first wrap of a counter) */
    u32 idx = n < 2 ? (u32)n : n == 777 ? 2 : n == 4321 ? 3 : SAMPLES;
    if (idx < SAMPLES) {
        struct sample *s = samples.lookup(&idx);
        if (s) {
            u32 j;
#pragma unroll
            for (j = 0; j < sizeof(s->b); j++) {
                if (data + j + 1 > data_end)
                    break;
                s->b[j] = ((u8 *)data)[j];
            }
            s->len = j;
        }
    }
    u8 *p = data;
    if (data + 38 > data_end || p[12] != 0x08 || p[13] != 0x00) {
        int one = 1;
        u64 *o = total.lookup(&one);
        if (o)
            __sync_fetch_and_add(o, 1);
        return XDP_DROP;
    }
    /* (low 16 bits of the source address, source port, destination port) */
    u64 key = ((u64)p[28] << 40) | ((u64)p[29] << 32) | ((u64)p[34] << 24) |
              ((u64)p[35] << 16) | ((u64)p[36] << 8) | p[37];
    flows.atomic_increment(key);
    return XDP_DROP;
}
"""


# --------------------------------------------------------------------------
# a namespace with a receiver


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _in_netns(ns: str):
    """This thread in network namespace ns for the block (BCC attaches by name
    through a netlink socket of the calling thread's namespace)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(own)


def _ip(*args: str) -> str:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    assert cp.returncode == 0, f"ip {' '.join(args)}: {cp.stderr.strip()}"
    return cp.stdout


class Receiver:
    def __init__(self, ns: str, b) -> None:
        self.ns, self.b = ns, b
        self.out_mac = self._mac("out0")
        self.rcv_mac = self._mac("rcv0")

    def _mac(self, iface: str) -> str:
        return json.loads(_ip("-n", self.ns, "-j", "link", "show", "dev", iface))[0]["address"]

    def reset(self) -> None:
        self.b[b"flows"].clear()
        for i in range(2):
            self.b[b"total"][ctypes.c_int(i)] = ctypes.c_uint64(0)
        for i in range(SAMPLES):
            self.b[b"samples"][ctypes.c_int(i)] = self.b[b"samples"].Leaf()

    def total(self) -> int:
        return self.b[b"total"][ctypes.c_int(0)].value

    def not_ipv4(self) -> int:
        return self.b[b"total"][ctypes.c_int(1)].value

    def flows(self) -> dict[tuple[int, int, int], int]:
        return {(k.value >> 32, (k.value >> 16) & 0xFFFF, k.value & 0xFFFF): v.value
                for k, v in self.b[b"flows"].items()}

    def samples(self) -> list[bytes]:
        out = []
        for i in range(SAMPLES):
            s = self.b[b"samples"][ctypes.c_int(i)]
            if s.len:
                out.append(bytes(s.b[:s.len]))
        return out

    def loop_veths(self) -> list[str]:
        text = _ip("-n", self.ns, "-o", "link", "show")
        return [ln.split(":")[1].strip() for ln in text.splitlines()
                if ln.split(":")[1].strip().startswith(("lgA", "lgB"))]


@pytest.fixture
def receiver(need_root, need_bpf):
    from bcc import BPF  # noqa: PLC0415

    ns = f"lgt-{secrets.token_hex(4)}"
    b = None
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", "out0", "type", "veth", "peer", "name", "rcv0")
        for dev in ("out0", "rcv0"):
            _ip("-n", ns, "link", "set", "dev", dev, "addrgenmode", "none")
            _ip("-n", ns, "link", "set", "dev", dev, "up")
        b = BPF(text=RECEIVER.encode(), cflags=[f"-DSAMPLES={SAMPLES}"])
        fn = b.load_func(b"receive", BPF.XDP)
        with _in_netns(ns):
            b.attach_xdp(b"rcv0", fn, BPF.XDP_FLAGS_DRV_MODE)
        yield Receiver(ns, b)
    finally:
        if b is not None:
            b.cleanup()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
    assert ns not in list_namespaces(), f"namespace {ns} left behind"


def livegen(ns: str | None, *args: object, timeout: float = 60.0) -> subprocess.CompletedProcess:
    argv = [*LIVEGEN, *(["--netns", ns] if ns else []), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=Lab.traffic_env(), cwd=REPO)


# --------------------------------------------------------------------------
# frame checks


def check_frame(raw: bytes, rx: Receiver, proto: str, flows: str) -> None:
    from scapy.layers.inet import IP, TCP, UDP  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    from bench.forwarding import CLIENT_ISN, DPORT0, SERVER_ISN, SPORT0  # noqa: PLC0415

    new = flows == "new"
    p = Ether(raw)
    assert p.dst == rx.rcv_mac and p.src == rx.out_mac, p.summary()
    ip = p[IP]
    assert ip.ttl == 64 and ip.flags.DF and ip.len == len(raw) - 14, ip.show(dump=True)
    assert ip.dst == DST4
    assert ip.src.startswith("10.200.") if new else ip.src == SRC4
    l4cls = TCP if proto == "tcp" else UDP
    l4 = p[l4cls]
    # checksums: what scapy computes from scratch must equal what was sent
    q = Ether(raw)
    del q[IP].chksum
    del q[l4cls].chksum
    q = Ether(bytes(q))
    assert q[IP].chksum == ip.chksum, f"IPv4 checksum {ip.chksum:#x}, want {q[IP].chksum:#x}"
    assert q[l4cls].chksum == l4.chksum, f"L4 checksum {l4.chksum:#x}, want {q[l4cls].chksum:#x}"
    if proto == "tcp" and new:
        assert len(raw) == 54 and str(l4.flags) == "S" and l4.seq == CLIENT_ISN
        assert l4.dport == 80 and l4.window == 65535
    elif proto == "tcp":
        assert len(raw) == 64 and str(l4.flags) == "PA", l4.show(dump=True)
        assert (l4.seq, l4.ack, l4.window) == (CLIENT_ISN + 1, SERVER_ISN + 1, 65535)
        assert bytes(l4.payload) == b"a" * 10
        assert SPORT0 <= l4.sport and DPORT0 <= l4.dport
    else:
        assert len(raw) == 64 and bytes(l4.payload) == b"a" * 22
        assert l4.len == 30


def check_run(rx: Receiver, result: dict, *, count: int, proto: str, flows: str,
              want_flows: int | None) -> None:
    assert result["mode"] in ("xdp_loop", "live_frames"), result
    if result["mode"] == "xdp_loop":
        assert result["refused"] and result["refused"].startswith("live frames: refused"), result
    got = rx.total()
    assert rx.not_ipv4() == 0, f"{rx.not_ipv4()} frames that are not IPv4"
    assert result["sent"] == got, f"reported {result['sent']} sent, the receiver saw {got}"
    assert count * 0.99 <= got <= count, f"asked for {count}, {got} arrived: {result}"
    seen = rx.flows()
    assert sum(seen.values()) == got
    if want_flows is not None:
        assert len(seen) == want_flows, f"{len(seen)} distinct flows, want {want_flows}"
    samples = rx.samples()
    assert len(samples) == SAMPLES
    for raw in samples:
        check_frame(raw, rx, proto, flows)


# --------------------------------------------------------------------------
# the tests


def test_udp_1k_cli(receiver):
    count = 20_000
    cp = livegen(receiver.ns, "--out", "out0", "--dst-mac", receiver.rcv_mac, "--src", SRC4,
                 "--dst", DST4, "--proto", "udp", "--flows", "1k", "--count", count,
                 "--max-seconds", 20, "--json")
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stderr
    lines = cp.stdout.splitlines()
    assert len(lines) == 1, cp.stdout
    result = json.loads(lines[0])
    assert result["stopped"] == "budget", result
    check_run(receiver, result, count=count, proto="udp", flows="1k", want_flows=1000)
    assert set(receiver.flows().values()) == {count // 1000}, "every flow 20 frames"
    assert receiver.loop_veths() == []


def test_tcp_100k_api(receiver):
    from bench.livegen import LiveGen  # noqa: PLC0415

    count = 20_000
    gen = LiveGen(netns=receiver.ns, out="out0", dst_mac=receiver.rcv_mac, src=SRC4, dst=DST4,
                  proto="tcp", flows="100k", count=count, max_seconds=20).start()
    result = gen.wait(60)
    assert result["stopped"] == "budget", result
    # fewer frames than flows: every frame its own flow
    check_run(receiver, result, count=count, proto="tcp", flows="100k",
              want_flows=receiver.total())
    assert receiver.loop_veths() == []


def test_tcp_new_cli(receiver):
    count = 5_000
    cp = livegen(receiver.ns, "--out", "out0", "--dst-mac", receiver.rcv_mac, "--src", SRC4,
                 "--dst", DST4, "--proto", "tcp", "--flows", "new", "--count", count,
                 "--max-seconds", 20, "--json")
    assert cp.returncode == 0, cp.stderr
    result = json.loads(cp.stdout)
    check_run(receiver, result, count=count, proto="tcp", flows="new",
              want_flows=receiver.total())


def test_bounded_by_time_and_by_sigint(receiver):
    """A budget it cannot reach: --max-seconds ends it; so does stop()."""
    from bench.livegen import LiveGen  # noqa: PLC0415

    t0 = time.monotonic()
    cp = livegen(receiver.ns, "--out", "out0", "--dst-mac", receiver.rcv_mac, "--src", SRC4,
                 "--dst", DST4, "--count", 10**12, "--max-seconds", 0.5, "--json")
    assert cp.returncode == 0, cp.stderr
    result = json.loads(cp.stdout)
    assert result["stopped"] == "time", result
    assert time.monotonic() - t0 < 30
    assert result["sent"] == receiver.total() > 0
    assert receiver.loop_veths() == []

    receiver.reset()
    gen = LiveGen(netns=receiver.ns, out="out0", dst_mac=receiver.rcv_mac, src=SRC4, dst=DST4,
                  count=10**12, max_seconds=60).start()
    time.sleep(0.3)
    assert gen.running
    result = gen.stop()
    assert result["stopped"] == "signal", result
    assert result["sent"] == receiver.total() > 0
    assert result["pps"] > 0
    assert receiver.loop_veths() == []


def test_bad_flows_one_line_exit_2(need_root):
    cp = livegen(None, "--out", "eth0", "--dst-mac", "02:00:00:00:00:01", "--src", SRC4,
                 "--dst", DST4, "--flows", "bogus", "--count", 10, "--max-seconds", 1)
    assert cp.returncode == 2, cp
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and "bogus" in lines[0] and "Traceback" not in cp.stderr, cp.stderr
    assert cp.stdout == ""


def test_missing_namespace_one_line_exit_2(need_root):
    cp = livegen(f"lgt-none-{secrets.token_hex(3)}", "--out", "eth0", "--dst-mac",
                 "02:00:00:00:00:01", "--src", SRC4, "--dst", DST4, "--count", 10,
                 "--max-seconds", 1)
    assert cp.returncode == 2, cp
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and "no network namespace" in lines[0], cp.stderr


@pytest.mark.parametrize("proto,flows,v6", [("udp", "100k", False), ("tcp", "100k", False),
                                            ("udp", "new", False), ("tcp", "new", False),
                                            ("tcp", "1k", True), ("udp", "new", True)])
def test_rewrite_checksums_far_into_the_run(need_root, need_bpf, proto, flows, v6):
    """The BPF rewrite of frame i, run by BPF_PROG_TEST_RUN (no live frames)
    with the turn counter set to i: ports, addresses and checksums as scapy
    computes them, also past the wraps of the port and address counters."""
    from scapy.layers.inet import IP, TCP, UDP  # noqa: PLC0415
    from scapy.layers.inet6 import IPv6  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    from bench import livegen  # noqa: PLC0415
    from ctbpf.datapath.bpfsys import BPF_PROG_TEST_RUN, TestRunAttr, _bpf  # noqa: PLC0415

    src, dst = ("fd00:77::1", "fd00:77::2") if v6 else (SRC4, DST4)
    tmpl = livegen.build_template(dst_mac="02:00:00:00:00:02", src_mac="02:00:00:00:00:01",
                                  src=src, dst=dst, proto=proto, flows=flows)
    b = livegen.load_bpf({**tmpl.defines, "LG_BUDGET": "1000000000ULL", "LG_OUT_IFINDEX": 1})
    try:
        fn = livegen.load_func(b, "lg_live")
        frame = tmpl.frame
        for i in (0, 1, 3124, 3125, 65535, 65536, 99_999, 100_000, 123_456_789):
            b[b"lg_state"][ctypes.c_int(0)] = b[b"lg_state"].Leaf(count=i)
            inp = ctypes.create_string_buffer(frame, len(frame))
            out = ctypes.create_string_buffer(256)
            attr = TestRunAttr(prog_fd=fn.fd, data_size_in=len(frame),
                               data_in=ctypes.addressof(inp), data_size_out=256,
                               data_out=ctypes.addressof(out), repeat=1)
            _bpf(BPF_PROG_TEST_RUN, attr, "test run")
            assert attr.retval == 4, f"XDP_REDIRECT expected, got {attr.retval}"  # XDP_REDIRECT
            raw = out.raw[:attr.data_size_out]
            assert len(raw) == len(frame)
            l3, l4cls = (IPv6 if v6 else IP), (TCP if proto == "tcp" else UDP)
            p = Ether(raw)
            salo, sport, dport = livegen.flow_of(tmpl, i)
            assert (p[l4cls].sport, p[l4cls].dport) == (sport, dport), (i, p.summary())
            addr = p[l3].src
            if v6:
                assert int(ipaddress.ip_address(addr)) & 0xFFFF == salo
            else:
                assert int(addr.split(".")[2]) * 256 + int(addr.split(".")[3]) == salo
            q = Ether(raw)
            if not v6:
                del q[IP].chksum
            del q[l4cls].chksum
            q = Ether(bytes(q))
            if not v6:
                assert q[IP].chksum == p[IP].chksum, f"frame {i}: IPv4 checksum"
            assert q[l4cls].chksum == p[l4cls].chksum, f"frame {i}: L4 checksum"
    finally:
        b.cleanup()
