"""Attach a native XDP program that drops (and counts) every TCP and UDP
frame to interfaces of the current network namespace, print one ready line,
and hold it until SIGINT/SIGTERM or --max-seconds; detach on the way out and
print the count as one JSON line. The forwarding benchmark's generator cells
use it as the server's sink: the frames are dropped before any skb is made
(nothing answers them), and a veth with an XDP program in native mode takes
frames redirected into it by its peer (ndo_xdp_xmit), which the fast path
needs.

    python3 bench/traffic/xdp_drop.py --iface eth0 [--mode native|generic]
"""

import ctypes
import json
import sys

from xdp_pass import hold   # this script's directory is on sys.path

SRC = r"""
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>

BPF_PERCPU_ARRAY(drops, u64, 1);

int xdp_drop(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    int k = 0;

    if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
        return XDP_PASS;
    u64 *n = drops.lookup(&k);
    if (n)
        *n += 1;
    return XDP_DROP;
}
"""


def main() -> int:
    b = hold(SRC, "xdp_drop")
    dropped = sum(b[b"drops"][ctypes.c_int(0)])
    print(json.dumps({"dropped": dropped}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
