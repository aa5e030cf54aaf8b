/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The fast path: a packet of an ESTABLISHED, ASSURED flow, once tracked and
 * accepted, is forwarded at XDP instead of going up the kernel's stack, as
 * nftables' flowtables do after the kernel's forward hooks have seen a
 * flow's first packets. Tracking has already happened (state, window,
 * timeouts, counters, events); only the kernel's routing and neighbour
 * output are skipped, and its forward hooks with them.
 *
 * Whatever the kernel must see still goes up (enum ct_fwd_stat says why).
 * The next hop comes from bpf_fib_lookup on every packet, so a route or
 * neighbour change is followed at the next packet.
 */
#ifndef CTBPF_FASTPATH_H
#define CTBPF_FASTPATH_H

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Attached interfaces: ifindex -> slot in ct_fwd_ports and ct_fwd_stats
 * with enum ct_fwd_iface flags,
 * filled by the agent where it attaches (ctbpf/datapath/fastpath.py). Not
 * pinned: each load's programs have their own, refilled on a rebuild. */
BPF_TABLE("hash", __u32, __u32, ct_fwd_ifaces, CT_FWD_SLOTS);
BPF_DEVMAP(ct_fwd_ports, CT_FWD_SLOTS);
/* The cause ct_fwd_cause() gave, handed to the fast path's own program
 * (ctbpf_xdp_fwd), which the stages tail-call: a tail call keeps no stack. */
BPF_TABLE("percpu_array", __u32, __s32, ct_fwd_handover, 1);
/* Pinned, for `ctbpf stats` and the metrics to read. */
BPF_TABLE_PINNED("percpu_array", __u32, struct ct_fwd_counters, ct_fwd_stats, CT_FWD_SLOTS,
		 CT_PIN_DIR "/ct_fwd_stats");

/* What ct_process_flow tells the XDP stage: the fast path is off, or the
 * packet may be forwarded, or else the enum ct_fwd_stat cause it goes up. */
#define CT_FWD_OFF (-2)
#define CT_FWD_GO (-1)

/* Counters of an attached interface, 0 when it has none. */
static __always_inline struct ct_fwd_counters *ct_fwd_counters_of(__u32 ifindex, __u32 *slot,
								__u32 *flags)
{
	__u32 *v = ct_fwd_ifaces.lookup(&ifindex);

	if (!v)
		return 0;
	*flags = *v;
	*slot = *v & CT_FWD_IF_SLOT_MASK;
	return ct_fwd_stats.lookup(slot);
}

/* A packet the fast path leaves to the kernel, counted by cause. */
static __always_inline int ct_fwd_pass(struct ct_fwd_counters *c, int cause)
{
	if (c && cause >= 0 && cause < CT_FWD_STAT_MAX)
		c->count[cause]++; /* per-CPU */
	return XDP_PASS;
}

/* The cause for a bpf_fib_lookup result other than success. */
static __always_inline int ct_fwd_fib_cause(int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return CT_FWD_PASS_NO_NEIGH;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return CT_FWD_PASS_MTU;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return CT_FWD_PASS_LOCAL;
	default: /* blackhole, unreachable, prohibit, lwt, unsupported */
		return CT_FWD_PASS_NO_ROUTE;
	}
}

/* IPv6 next headers that are extension headers: their packets go up. */
static __always_inline int ct_fwd_ipv6_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 135 ||
	       nh == 139 || nh == 140;
}

/* L4 bytes whose checksum the fast path checks: a veth's MTU frames. */
#define CT_FWD_CSUM_MAX 1536

/* One's complement sum of `len` packet bytes at p (at most CT_FWD_CSUM_MAX),
 * added to `sum`, in constant-size steps the verifier can bound; -1 when
 * the bytes are not all there. */
static __always_inline __s64 ct_fwd_sum(void *p, void *end, __u32 len, __s64 sum)
{
	__u32 tail = 0;

#pragma unroll
	for (int i = 0; i < 3; i++) {
		if (len >= 512) {
			if (p + 512 > end)
				return -1;
			sum = bpf_csum_diff(0, 0, p, 512, sum);
			p += 512;
			len -= 512;
		}
	}
#pragma unroll
	for (int step = 256; step >= 4; step >>= 1) {
		if (len >= step) {
			if (p + step > end)
				return -1;
			sum = bpf_csum_diff(0, 0, p, step, sum);
			p += step;
			len -= step;
		}
	}
	/* 0 to 3 bytes left: summed as if padded with zeros. */
	if (len >= 1) {
		if (p + 1 > end)
			return -1;
		((__u8 *)&tail)[0] = *(__u8 *)p;
	}
	if (len >= 2) {
		if (p + 2 > end)
			return -1;
		((__u8 *)&tail)[1] = *(__u8 *)(p + 1);
	}
	if (len >= 3) {
		if (p + 3 > end)
			return -1;
		((__u8 *)&tail)[2] = *(__u8 *)(p + 2);
	}
	return bpf_csum_diff(0, 0, &tail, 4, sum);
}

/* Whether a TCP or UDP segment's checksum holds, with its pseudo-header's
 * sum `seed`: the sum of it all folds to 0xffff. */
static __always_inline int ct_fwd_csum_ok(void *l4, void *end, __u32 len, __u8 proto,
					  int ipv4, __s64 seed)
{
	__s64 sum;
	__u32 f;

	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return 0;
		if (uh->check == 0 && ipv4)   /* no checksum: allowed over IPv4 only */
			return 1;
	} else if (proto != IPPROTO_TCP) {
		return 0;
	}
	if (len > CT_FWD_CSUM_MAX || seed < 0)
		return 0;
	sum = ct_fwd_sum(l4, end, len, seed);
	if (sum < 0)
		return 0;
	f = (__u32)sum;
	f = (f & 0xffff) + (f >> 16);
	f = (f & 0xffff) + (f >> 16);
	return f == 0xffff;
}

/* Pseudo-headers, for the checksums. */
struct ct_fwd_pseudo4 {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

struct ct_fwd_pseudo6 {
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

/* Whether the frame's L4 checksum holds (eth: a frame the fast path has
 * checked to be IPv4 without options, or IPv6 without extension headers). */
static __always_inline int ct_fwd_csum_check(struct ethhdr *eth, void *end)
{
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		struct ct_fwd_pseudo4 ph = {};
		__u32 len;

		if ((void *)(ip + 1) > end)
			return 0;
		len = bpf_ntohs(ip->tot_len);
		if (len < sizeof(*ip))
			return 0;
		len -= sizeof(*ip);
		ph.saddr = ip->saddr;
		ph.daddr = ip->daddr;
		ph.proto = ip->protocol;
		ph.len = bpf_htons(len);
		return ct_fwd_csum_ok(ip + 1, end, len, ip->protocol, 1,
				      bpf_csum_diff(0, 0, (void *)&ph, sizeof(ph), 0));
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct ct_fwd_pseudo6 ph = {};
		__u32 len;

		if ((void *)(ip6 + 1) > end)
			return 0;
		len = bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(ph.saddr, &ip6->saddr, sizeof(ph.saddr));
		__builtin_memcpy(ph.daddr, &ip6->daddr, sizeof(ph.daddr));
		ph.len = bpf_htonl(len);
		ph.nexthdr = ip6->nexthdr;
		return ct_fwd_csum_ok(ip6 + 1, end, len, ip6->nexthdr, 0,
				      bpf_csum_diff(0, 0, (void *)&ph, sizeof(ph), 0));
	}
}

/* Whether a tracked, judged packet may take the fast path: `eligible` says
 * its entry is ESTABLISHED and ASSURED and stays in ct_assured. */
static __always_inline int ct_fwd_cause(int eligible, int state, int verdict,
					const struct ct_pkt *pkt)
{
	/* First: a FIN or RST also ends the entry's ASSURED rest in ct_assured. */
	if (pkt->t.proto == IPPROTO_TCP && (pkt->tcp_flags & (TCPF_SYN | TCPF_FIN | TCPF_RST)))
		return CT_FWD_PASS_TCP_FLAGS;
	if (!eligible || state != CT_PKT_ESTABLISHED || verdict != CT_VERDICT_ACCEPT)
		return CT_FWD_PASS_NOT_ASSURED;
	return CT_FWD_GO;
}

/**
 * ct_fast_path - forward an accepted packet of an ESTABLISHED, ASSURED flow
 * (`cause` < 0), or count why it goes up the stack (`cause`, an enum
 * ct_fwd_stat). Returns the XDP action.
 */
static __always_inline int ct_fast_path(struct xdp_md *ctx, int cause)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup fib = {};
	struct ct_fwd_counters *in, *out;
	struct ethhdr *eth = data;
	__u32 slot_in = 0, slot_out = 0, flags_in = 0, flags_out = 0;
	__u16 l3_len;
	int rc, ok;

	in = ct_fwd_counters_of(ctx->ingress_ifindex, &slot_in, &flags_in);
	if (!in)
		return XDP_PASS;   /* not an interface the agent set up for it */
	if (cause >= 0)
		return ct_fwd_pass(in, cause);
	if ((void *)(eth + 1) > data_end)
		return ct_fwd_pass(in, CT_FWD_PASS_IP_HEADER);
	fib.ifindex = ctx->ingress_ifindex;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return ct_fwd_pass(in, CT_FWD_PASS_IP_HEADER);
		/* Options and fragments: the kernel's job (and the parser's). */
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return ct_fwd_pass(in, CT_FWD_PASS_IP_HEADER);
		if (ip->ttl <= 1)
			return ct_fwd_pass(in, CT_FWD_PASS_TTL);
		l3_len = bpf_ntohs(ip->tot_len);
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.tot_len = l3_len;
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return ct_fwd_pass(in, CT_FWD_PASS_IP_HEADER);
		if (ct_fwd_ipv6_ext(ip6->nexthdr))
			return ct_fwd_pass(in, CT_FWD_PASS_IP_HEADER);
		if (ip6->hop_limit <= 1)
			return ct_fwd_pass(in, CT_FWD_PASS_TTL);
		l3_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		fib.family = AF_INET6;
		fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
		fib.l4_protocol = ip6->nexthdr;
		fib.tot_len = l3_len;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, sizeof(fib.ipv6_dst));
	} else {
		return ct_fwd_pass(in, CT_FWD_PASS_IP_HEADER);   /* VLAN tags */
	}

	/* The kernel's own FIB, neighbours and MTU (tot_len is checked). */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return ct_fwd_pass(in, ct_fwd_fib_cause(rc));
	out = ct_fwd_counters_of(fib.ifindex, &slot_out, &flags_out);
	if (!out)
		return ct_fwd_pass(in, CT_FWD_PASS_NOT_ATTACHED);
	/* A native program redirects an XDP frame: a driver that cannot send
	 * one would drop it. A generic one redirects the skb, which goes. */
	if ((flags_in & CT_FWD_IF_NATIVE) && !(flags_out & CT_FWD_IF_XMIT))
		return ct_fwd_pass(in, CT_FWD_PASS_NO_XMIT);
	if (flags_in & CT_FWD_IF_CSUM) {
		ok = ct_fwd_csum_check(eth, data_end);
		if (!ok)
			return ct_fwd_pass(in, CT_FWD_PASS_CHECKSUM);
	}

	/* The bounds were checked above, but on another path for the verifier. */
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 check;

		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		/* TTL - 1 in the checksum: +0x0100 in one's complement (RFC 1624). */
		check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	in->count[CT_FWD_RX_PACKETS]++;
	in->count[CT_FWD_RX_BYTES] += l3_len;
	out->count[CT_FWD_TX_PACKETS]++;
	out->count[CT_FWD_TX_BYTES] += l3_len;
	/* Should the slot have lost its device, the packet still goes up. */
	return ct_fwd_ports.redirect_map(slot_out, XDP_PASS);
}

#endif /* CTBPF_FASTPATH_H */
