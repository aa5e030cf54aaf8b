/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ctbpf datapath entry points: XDP on every attached interface, and an
 * optional TC egress program for packets the host itself sends.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_vlan.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

/* struct vlan_hdr and struct frag_hdr live in kernel-internal headers. */
struct vlan_hdr {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

struct frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

#include "abi.h"
#include "config.h"
#include "maps.h"
#include "parse.h"
#include "flow.h"
#include "track.h"
#include "tcp.h"
#include "udp.h"
#include "icmp.h"
#include "policy.h"
#include "conntrack.h"
#include "sweep.h"

/* Headers an ICMP error needs, at most: Ethernet, two VLAN tags, outer IPv6
 * with options, ICMP, inner IPv6, inner L4. */
#define CT_TC_PULL_LEN 256

int ctbpf_xdp(struct xdp_md *ctx)
{
	/* Dropped here, before the kernel allocates anything for the packet. */
	if (ct_process(ctx, (void *)(long)ctx->data, (void *)(long)ctx->data_end,
		       ctx->ingress_ifindex, CT_HOOK_IN) == CT_VERDICT_DROP)
		return XDP_DROP;
	return XDP_PASS;
}

/* Not attached anywhere: the agent runs it through BPF_PROG_TEST_RUN. */
int ctbpf_sweep(struct xdp_md *ctx)
{
	return sweep_batch((void *)(long)ctx->data, (void *)(long)ctx->data_end);
}

int ctbpf_tc_egress(struct __sk_buff *skb)
{
	__u32 len = skb->len < CT_TC_PULL_LEN ? skb->len : CT_TC_PULL_LEN;

	/* A packet that entered through an interface is forwarded: XDP on
	 * that interface has already tracked it. */
	if (skb->ingress_ifindex != 0)
		return TC_ACT_OK;
	bpf_skb_pull_data(skb, len);
	if (ct_process(skb, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex,
		       CT_HOOK_OUT) == CT_VERDICT_DROP)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
