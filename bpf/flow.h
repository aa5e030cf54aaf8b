/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The two-ended flow key: both directions of a flow map to one key, so one
 * hash lookup finds a flow whichever way the packet travels.
 */
#ifndef CTBPF_FLOW_H
#define CTBPF_FLOW_H

/* Is endpoint (a, ap) ordered before (b, bp)? Words compare as host-order
 * integers: any total order works, as long as both directions and the
 * control plane use the same one (ctbpf/datapath/flowkey.py mirrors it). */
static __always_inline int flow_endpoint_is_lower(const __u32 *a, __u16 ap,
						  const __u32 *b, __u16 bp)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (a[i] != b[i])
			return a[i] < b[i];
	}
	return ap <= bp;
}

static __always_inline int flow_addr_equal(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/**
 * flow_key_from_tuple - build the normalized key of a tuple.
 * Returns 1 when the tuple's source is the key's hi side, else 0.
 */
static __always_inline int flow_key_from_tuple(const struct ct_tuple *t, struct ct_key *key)
{
	int src_is_hi = !flow_endpoint_is_lower(t->saddr, t->sport, t->daddr, t->dport);

	if (src_is_hi) {
		__builtin_memcpy(key->addr_lo, t->daddr, 16);
		__builtin_memcpy(key->addr_hi, t->saddr, 16);
		key->port_lo = t->dport;
		key->port_hi = t->sport;
	} else {
		__builtin_memcpy(key->addr_lo, t->saddr, 16);
		__builtin_memcpy(key->addr_hi, t->daddr, 16);
		key->port_lo = t->sport;
		key->port_hi = t->dport;
	}
	key->proto = t->proto;
	key->family = t->family;
	key->icmp_query = t->icmp_query;
	return src_is_hi;
}

/* Direction of a packet whose source is (or is not) the key's hi side. */
static __always_inline int flow_dir(const struct ct_entry *e, int src_is_hi)
{
	int orig_is_hi = !!(e->flags & CT_F_ORIG_IS_HI);

	return src_is_hi == orig_is_hi ? CT_DIR_ORIGINAL : CT_DIR_REPLY;
}

#endif /* CTBPF_FLOW_H */
