"""Does a per-flow cache of the fast path's next hop pay? The price of
bpf_fib_lookup beside the price of the lookup a cache would need. See NOTES."""

from __future__ import annotations

import ctypes
import secrets
import socket
import struct
import subprocess
import sys

from bench.common import MIN_RUNS, ROOT, spread, target_row

HELP = "fast path: bpf_fib_lookup per packet vs a per-flow next-hop cache lookup"

NOTES = """\
**What is measured.** ns per packet of three XDP programs, run by
`BPF_PROG_TEST_RUN` (repeat 2,000,000) on a 64-byte IPv4 UDP frame in a
private namespace with two veths, a route and a resolved neighbour, as the
fast path finds them: `parse` (the Ethernet and IPv4 checks every
variant does), `fib` (those checks plus `bpf_fib_lookup`, what the fast
path does for every packet), and `cache` (the checks plus a lookup of
the flow's 40-byte key in a hash map of 100,000 flows holding a next hop:
what a per-flow cache would cost where the entry has no room for one).
The figures are net of `parse`, the median of the runs with min and max.

**Reading it.** A cache pays only if its lookup, plus the generation check
and the upkeep (the agent bumping a generation on every route and
neighbour change, and the cache refilled after), costs less than the FIB
lookup it saves. Keeping the next hop in the flow's entry instead (no extra
lookup) would add 16 bytes to every entry (MACs and ifindex): 64 to 80
bytes, against issue 15's memory targets.
"""

SRC = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

struct key40 { __u32 w[10]; };
struct hop { __u8 dmac[6]; __u8 smac[6]; __u32 ifindex; __u32 gen; };
BPF_TABLE("hash", struct key40, struct hop, hops, 131072);

static __always_inline struct iphdr *ip_of(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return 0;
	return ip;
}

int parse(struct xdp_md *ctx)
{
	struct iphdr *ip = ip_of(ctx);

	return ip && ip->ttl > 1 ? XDP_TX : XDP_DROP;
}

int fib(struct xdp_md *ctx)
{
	struct iphdr *ip = ip_of(ctx);
	struct bpf_fib_lookup f = {};

	if (!ip || ip->ttl <= 1)
		return XDP_DROP;
	f.family = 2;
	f.tos = ip->tos;
	f.l4_protocol = ip->protocol;
	f.tot_len = bpf_ntohs(ip->tot_len);
	f.ipv4_src = ip->saddr;
	f.ipv4_dst = ip->daddr;
	f.ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, &f, sizeof(f), 0) == BPF_FIB_LKUP_RET_SUCCESS ? XDP_TX : XDP_DROP;
}

int cache(struct xdp_md *ctx)
{
	struct iphdr *ip = ip_of(ctx);
	struct key40 k = {};
	struct hop *h;

	if (!ip || ip->ttl <= 1)
		return XDP_DROP;
	k.w[0] = ip->saddr;
	k.w[4] = ip->daddr;
	k.w[8] = 7;
	k.w[9] = ip->protocol;
	h = hops.lookup(&k);
	return h && h->gen == 1 ? XDP_TX : XDP_DROP;
}
"""

NS_PREFIX = "ctbpf-fib-"
FLOWS = 100_000


def add_arguments(g) -> None:
    g.add_argument("--fibcache-runs", type=int, default=MIN_RUNS, metavar="N",
                   help=f"runs of each program (default {MIN_RUNS})")


def _sh(ns: str, *cmds: str) -> None:
    for c in cmds:
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", c], check=True, timeout=20,
                       capture_output=True)


class _Md(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32)]


def _measure(runs: int) -> dict:
    """In the namespace: every program `runs` times, interleaved."""
    from bcc import BPF

    from ctbpf.datapath import bpfsys

    b = BPF(text=SRC)
    hops = b[b"hops"]
    for i in range(FLOWS):
        k = (ctypes.c_uint32 * 10)()
        k[0], k[4], k[8], k[9] = socket.htonl(0x0A090000 + i), 0, 7, 17
        if i == 0:   # the frame's own flow
            k[0] = struct.unpack("=I", socket.inet_aton("10.9.1.2"))[0]
            k[4] = struct.unpack("=I", socket.inet_aton("10.9.2.2"))[0]
        v = (ctypes.c_uint8 * 20)()
        v[16] = 1
        hops[k] = v
    frame = bytearray(64)
    frame[12:14] = b"\x08\x00"
    frame[14:34] = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 50, 0, 0x4000, 64, 17, 0,
                               socket.inet_aton("10.9.1.2"), socket.inet_aton("10.9.2.2"))
    md = bytes(_Md(data=0, data_end=64, ingress_ifindex=socket.if_nametoindex("f0")))
    fds = {n: b.load_func(n.encode(), BPF.XDP).fd for n in ("parse", "fib", "cache")}
    out: dict[str, list[int]] = {n: [] for n in fds}
    for _ in range(runs):
        for name, fd in fds.items():
            r = bpfsys.prog_test_run(fd, bytes(frame), repeat=2_000_000, ctx=md)
            if r.retval != 3:   # XDP_TX: the route, the neighbour or the flow was missed
                raise RuntimeError(f"{name} returned {r.retval}")
            out[name].append(r.duration_ns)
    return out


def run(args) -> dict:
    ns = NS_PREFIX + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        _sh(ns, "ip link add f0 type veth peer name f1", "ip link add g0 type veth peer name g1",
            "for i in f0 f1 g0 g1; do ip link set $i up; done",
            "ip addr add 10.9.1.1/24 dev f0", "ip addr add 10.9.2.1/24 dev g0",
            "ip neigh add 10.9.2.2 lladdr 02:00:00:00:00:02 dev g0",
            "sysctl -qw net.ipv4.ip_forward=1")
        cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                             f"import json, bench.fibcache as m; "
                             f"print(json.dumps(m._measure({int(args.fibcache_runs)})))"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
        if cp.returncode != 0:
            raise RuntimeError(cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else
                               f"exit {cp.returncode}")
        raw = __import__("json").loads(cp.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20)
    net = {n: spread([v - p for v, p in zip(raw[n], raw["parse"])]) for n in ("fib", "cache")}
    saved = net["fib"]["median"] - net["cache"]["median"]
    targets = [target_row(
        "next hop per packet: bpf_fib_lookup vs a per-flow cache lookup", "ns/packet",
        net["fib"], "a cache only if it saves more than it costs", None,
        baseline=net["cache"], baseline_name="cache lookup (100k flows)",
        note=f"a cache would save at most {saved:.0f} ns of the fib lookup, before its "
             f"generation check and upkeep; the fast path looks the next hop up on every "
             f"packet (docs/fastpath.md)")]
    return {"raw_ns": raw, "net_ns": net, "parse_ns": spread(raw["parse"]), "targets": targets}


def summary(result: dict) -> str:
    n = result["net_ns"]
    p = result["parse_ns"]
    f = lambda s: f"{s['median']:g} [{s['min']:g}, {s['max']:g}]"  # noqa: E731
    return (f"ns/packet, net of the parse ({f(p)} ns):\n"
            f"  bpf_fib_lookup              {f(n['fib'])}\n"
            f"  cache lookup (40-byte key)  {f(n['cache'])}")
