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
#include "scratch.h"
#include "fastpath.h"
#include "conntrack.h"
#include "sweep.h"

/* Headers an ICMP error needs, at most: Ethernet, two VLAN tags, outer IPv6
 * with options, ICMP, inner IPv6, inner L4. */
#define CT_TC_PULL_LEN 256

/* The entry program's verdict when its tracker is missing (an empty slot):
 * the frame passes, counted, as it would with ctbpf not attached. */
static __always_inline void ct_no_tracker(void)
{
	__u32 zero = 0;
	struct ct_counters *st = ct_stats.lookup(&zero);

	if (st)
		ct_count(st, CT_STAT_NO_TRACKER);
}

int ctbpf_xdp(struct xdp_md *ctx)
{
	int v = ct_process(ctx, (void *)(long)ctx->data, (void *)(long)ctx->data_end,
			   ctx->ingress_ifindex, CT_HOOK_IN);

	if (v == CT_VERDICT_FLOW) {
		ct_next_stage(ctx, CT_HOOK_IN, CT_STAGE_ASSURED);
		ct_no_tracker();
		return XDP_PASS;
	}
	/* Dropped here, before the kernel allocates anything for the packet. */
	return v == CT_VERDICT_DROP ? XDP_DROP : XDP_PASS;
}

/* A stage of a flow's frame at XDP (enum ct_stage): dropped, forwarded by
 * the fast path, or passed up the stack. */
static __always_inline int ct_xdp_stage(struct xdp_md *ctx, int stage)
{
	int fwd = CT_FWD_OFF;

	__u32 zero = 0;
	__s32 *handover;

	if (ct_process_flow(ctx, ctx->ingress_ifindex, CT_HOOK_IN, stage, &fwd) == CT_VERDICT_DROP)
		return XDP_DROP;
	if (fwd == CT_FWD_OFF)
		return XDP_PASS;
	/* The fast path is a program of its own: inlined here, the verifier
	 * would walk it again at the end of every path through the tracker. */
	handover = ct_fwd_handover.lookup(&zero);
	if (!handover)
		return XDP_PASS;
	*handover = fwd;
	ct_jump_xdp.call(ctx, CT_JUMP_BASE + CT_STAGE_FWD);
	return XDP_PASS;   /* its slot is empty: up the stack, as without it */
}

int ctbpf_xdp_fwd(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__s32 *cause = ct_fwd_handover.lookup(&zero);

	return cause ? ct_fast_path(ctx, *cause) : XDP_PASS;
}

/* The TC stages (egress: the host's own packets, never fast-pathed). */
#define CT_TC_STAGE(stage)                                                       \
	ct_process_flow(skb, skb->ifindex, CT_HOOK_OUT, stage, 0) == CT_VERDICT_DROP ?    \
		TC_ACT_SHOT : TC_ACT_OK

int ctbpf_xdp_assured(struct xdp_md *ctx) { return ct_xdp_stage(ctx, CT_STAGE_ASSURED); }
int ctbpf_xdp_new(struct xdp_md *ctx) { return ct_xdp_stage(ctx, CT_STAGE_NEW); }
int ctbpf_xdp_fresh(struct xdp_md *ctx) { return ct_xdp_stage(ctx, CT_STAGE_FRESH); }
int ctbpf_tc_assured(struct __sk_buff *skb) { return CT_TC_STAGE(CT_STAGE_ASSURED); }
int ctbpf_tc_new(struct __sk_buff *skb) { return CT_TC_STAGE(CT_STAGE_NEW); }
int ctbpf_tc_fresh(struct __sk_buff *skb) { return CT_TC_STAGE(CT_STAGE_FRESH); }

/* Not attached anywhere: the agent runs it through BPF_PROG_TEST_RUN. */
int ctbpf_sweep(struct xdp_md *ctx)
{
	return sweep_batch((void *)(long)ctx->data, (void *)(long)ctx->data_end);
}

int ctbpf_tc_egress(struct __sk_buff *skb)
{
	__u32 len = skb->len < CT_TC_PULL_LEN ? skb->len : CT_TC_PULL_LEN;
	int v;

	/* A packet that entered through an interface is forwarded: XDP on
	 * that interface has already tracked it. */
	if (skb->ingress_ifindex != 0)
		return TC_ACT_OK;
	bpf_skb_pull_data(skb, len);
	v = ct_process(skb, (void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex,
		       CT_HOOK_OUT);
	if (v == CT_VERDICT_FLOW) {
		ct_next_stage(skb, CT_HOOK_OUT, CT_STAGE_ASSURED);
		ct_no_tracker();
		return TC_ACT_OK;
	}
	return v == CT_VERDICT_DROP ? TC_ACT_SHOT : TC_ACT_OK;
}
