/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Baselines for the datapath benchmarks (bench/datapath.py, bench/scale.py):
 * the least an XDP tracker could do per packet, on the same frames, with the
 * same 40-byte struct ct_key (bpf/abi.h) and struct ct_entry value, in maps
 * of the same size as the datapath's tables.
 *
 *   bench_empty   returns XDP_PASS: the cost of running a program at all
 *   bench_lookup  parses Ethernet / IPv4 or IPv6 / the L4 ports (for an ICMP
 *                 error: the quoted header), builds the two-ended key as
 *                 bpf/flow.h does, one hash lookup, one per-CPU counter
 *   bench_acct    bench_lookup, and on a hit what any tracker does to the
 *                 entry: read the clock, refresh the expiry, add to the
 *                 packet and byte counters atomically (as ct_account does)
 *   bench_insert  the same parse and key, one insert into an LRU hash
 *                 (the datapath's ct_new kind of table), one counter
 *
 * No VLAN tags, no IPv4 options beyond IHL, no IPv6 extension headers, no
 * validation beyond what the verifier needs: a lower bound, not a tracker.
 * BENCH_ENTRIES is set by the loader (-D) to the datapath's max entries.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "abi.h"

#ifndef BENCH_ENTRIES
#define BENCH_ENTRIES 65536
#endif
#ifndef BENCH_LRU_ENTRIES
#define BENCH_LRU_ENTRIES BENCH_ENTRIES
#endif

BPF_TABLE("hash", struct ct_key, struct ct_entry, bench_hash, BENCH_ENTRIES);
BPF_TABLE("lru_hash", struct ct_key, struct ct_entry, bench_lru, BENCH_LRU_ENTRIES);

/* 0: lookups that found the key, 1: lookups that did not, 2: inserts,
 * 3: failed inserts, 4: frames the parse gave up on. */
#define BENCH_HIT 0
#define BENCH_MISS 1
#define BENCH_INSERT 2
#define BENCH_INSERT_FAILED 3
#define BENCH_UNPARSED 4
#define BENCH_ACCT_HIT 5
BPF_PERCPU_ARRAY(bench_stats, u64, 8);

static __always_inline void bench_count(int idx)
{
	u64 *c = bench_stats.lookup(&idx);

	if (c)
		*c += 1;
}

/* The same total order as bpf/flow.h, so the keys match the datapath's. */
static __always_inline int bench_lower(const __u32 *a, __u16 ap, const __u32 *b, __u16 bp)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (a[i] != b[i])
			return a[i] < b[i];
	}
	return ap <= bp;
}

/* Parse one frame into a normalized key; 0 on success. */
static __always_inline int bench_key(void *data, void *end, struct ct_key *key)
{
	struct ethhdr *eth = data;
	__u32 s[4] = {}, d[4] = {};
	__u16 sp = 0, dp = 0;
	__u8 proto, family;
	void *l4;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		proto = ip->protocol;
		family = CT_FAMILY_IPV4;
		s[0] = ip->saddr;
		d[0] = ip->daddr;
		l4 = (void *)ip + ip->ihl * 4;
		if (proto == IPPROTO_ICMP) {
			__u8 *ic = l4;
			struct iphdr *in = l4 + 8;

			/* an ICMP error: the key of the quoted packet */
			if ((void *)(in + 1) > end || ic[0] != 3 || in->ihl < 5)
				return -1;
			proto = in->protocol;
			s[0] = in->saddr;
			d[0] = in->daddr;
			l4 = (void *)in + in->ihl * 4;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return -1;
		proto = ip6->nexthdr;
		family = CT_FAMILY_IPV6;
		__builtin_memcpy(s, &ip6->saddr, 16);
		__builtin_memcpy(d, &ip6->daddr, 16);
		l4 = ip6 + 1;
		if (proto == IPPROTO_ICMPV6) {
			__u8 *ic = l4;
			struct ipv6hdr *in = l4 + 8;

			if ((void *)(in + 1) > end || ic[0] != 1)
				return -1;
			proto = in->nexthdr;
			__builtin_memcpy(s, &in->saddr, 16);
			__builtin_memcpy(d, &in->daddr, 16);
			l4 = in + 1;
		}
	} else {
		return -1;
	}
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__u16 *ports = l4;

		if ((void *)(ports + 2) > end)
			return -1;
		sp = ports[0];
		dp = ports[1];
	}
	if (bench_lower(s, sp, d, dp)) {
		__builtin_memcpy(key->addr_lo, s, 16);
		__builtin_memcpy(key->addr_hi, d, 16);
		key->port_lo = sp;
		key->port_hi = dp;
	} else {
		__builtin_memcpy(key->addr_lo, d, 16);
		__builtin_memcpy(key->addr_hi, s, 16);
		key->port_lo = dp;
		key->port_hi = sp;
	}
	key->proto = proto;
	key->family = family;
	return 0;
}

int bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

int bench_lookup(struct xdp_md *ctx)
{
	struct ct_key key = {};

	if (bench_key((void *)(long)ctx->data, (void *)(long)ctx->data_end, &key)) {
		bench_count(BENCH_UNPARSED);
		return XDP_PASS;
	}
	bench_count(bench_hash.lookup(&key) ? BENCH_HIT : BENCH_MISS);
	return XDP_PASS;
}

int bench_acct(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ct_key key = {};
	struct ct_entry *e;

	if (bench_key(data, end, &key)) {
		bench_count(BENCH_UNPARSED);
		return XDP_PASS;
	}
	e = bench_hash.lookup(&key);
	if (!e) {
		bench_count(BENCH_MISS);
		return XDP_PASS;
	}
	/* a refresh as the datapath's: the expiry tick, stored when it moves */
	{
		__u32 x = ((bpf_ktime_get_coarse_ns() + 432000ULL * 1000000000ULL) >> CT_TICK_SHIFT) + 1;

		if (e->expires != x)
			e->expires = x;
	}
	bench_count(BENCH_ACCT_HIT);
	return XDP_PASS;
}

int bench_insert(struct xdp_md *ctx)
{
	struct ct_key key = {};
	struct ct_entry e = {};
	__u64 now = bpf_ktime_get_coarse_ns();

	if (bench_key((void *)(long)ctx->data, (void *)(long)ctx->data_end, &key)) {
		bench_count(BENCH_UNPARSED);
		return XDP_PASS;
	}
	e.created = now >> CT_TICK_SHIFT;
	e.expires = ((now + 120ULL * 1000000000ULL) >> CT_TICK_SHIFT) + 1;
	bench_count(bench_lru.update(&key, &e) == 0 ? BENCH_INSERT : BENCH_INSERT_FAILED);
	return XDP_PASS;
}

/*
 * bench_wrap: a different flow on every iteration of one BPF_PROG_TEST_RUN.
 * It writes the client address of flow number first + i (i cycling through
 * count flows; the address plan of bench/datapath.py's FlowSet) into the
 * frame at byte `at` (i advancing by `stride`: 1 walks the flows in order, a
 * large prime scatters the walk over memory), then tail-calls
 * bench_targets[target]: the datapath or
 * a baseline. Run with wrap -> bench_empty too, the wrapper's own cost is
 * subtracted from every figure measured through it.
 */
struct bench_wrap_cfg {
	__u32 at;       /* offset of the client address in the frame */
	__u32 family;   /* CT_FAMILY_IPV4 or CT_FAMILY_IPV6 */
	__u32 first;    /* flow number of i = 0 */
	__u32 count;    /* flows to cycle through */
	__u32 next;     /* i of the next iteration */
	__u32 target;   /* slot of bench_targets */
	__u32 stride;   /* i advances by this, modulo count (coprime with it) */
};
BPF_ARRAY(bench_wrap_cfg, struct bench_wrap_cfg, 1);
BPF_PROG_ARRAY(bench_targets, 8);

int bench_wrap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct bench_wrap_cfg *c;
	__u32 zero = 0, i, v, at;
	__u8 *p;

	c = bench_wrap_cfg.lookup(&zero);
	if (!c)
		return XDP_ABORTED;
	i = c->next;
	if (c->count == 0)
		return XDP_ABORTED;
	c->next = (__u32)(((__u64)i + c->stride) % c->count);
	v = c->first + i;
	at = c->at & 0x7f;
	p = data + at;
	if ((void *)(p + 16) > end)
		return XDP_ABORTED;
	if (c->family == CT_FAMILY_IPV4) {
		p[0] = 11 + (v >> 16);
		p[1] = v >> 8;
		p[2] = v;
		p[3] = 2;
	} else {
		p[12] = v >> 24;
		p[13] = v >> 16;
		p[14] = v >> 8;
		p[15] = v;
	}
	bench_targets.call(ctx, c->target);
	return XDP_ABORTED; /* the tail call failed */
}
