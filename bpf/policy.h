/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Enforce mode: the verdict of the interface's policy on a packet, from its
 * user-land state (see struct ct_policy in abi.h). The tracker asks before
 * it commits anything, so a dropped packet creates and changes no entry.
 */
#ifndef CTBPF_POLICY_H
#define CTBPF_POLICY_H

_Static_assert(CT_VERDICT_COUNTS == CT_POLICY_SLOTS * CT_PKT_STATES * CT_VERDICT_MAX,
	       "CT_VERDICT_COUNTS must cover every slot, state and verdict");

/* What the tracker learnt about the verdict on the way (CT_VERDICT_*), or
 * -1 when nothing was decided yet and the final state decides. */
struct ct_vctx {
	const struct ct_policy *pol;
	int verdict;
	int fwd;   /* the entry is ESTABLISHED, ASSURED and stays in ct_assured (fast path) */
};

/* Branch-free on purpose: the verifier walks this once per rule on every
 * path that may ask for a NEW verdict, and each branch would double it. */
static __always_inline __u32 pol_addr_diff(const __u32 *addr, const __u32 *net,
					   const __u32 *mask)
{
	return ((addr[0] ^ net[0]) & mask[0]) | ((addr[1] ^ net[1]) & mask[1]) |
	       ((addr[2] ^ net[2]) & mask[2]) | ((addr[3] ^ net[3]) & mask[3]);
}

static __always_inline int pol_rule_match(const struct ct_new_rule *r, const struct ct_pkt *pkt)
{
	__u16 dport = bpf_ntohs(pkt->t.dport);
	__u32 diff = pol_addr_diff(pkt->t.saddr, r->src, r->src_mask) |
		     pol_addr_diff(pkt->t.daddr, r->dst, r->dst_mask);

	/* A zero family or protocol matches any (its mask is zero); a port
	 * range only exists on tcp/udp rules, whose protocol must match. */
	diff |= (r->family ^ pkt->t.family) & r->family_mask;
	diff |= (r->proto ^ pkt->t.proto) & r->proto_mask;
	diff |= (__u16)(dport - r->dport_lo) > (__u16)(r->dport_hi - r->dport_lo);
	return diff == 0;
}

/* The spec's "NEW not SYN": a TCP packet starting a flow must be a bare SYN. */
static __always_inline int pol_new_ok(const struct ct_policy *pol, const struct ct_pkt *pkt)
{
	if ((pol->flags & CT_POL_NEW_SYN_ONLY) && pkt->t.proto == IPPROTO_TCP &&
	    (pkt->tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST | TCPF_FIN)) != TCPF_SYN)
		return 0;
	if (!(pol->flags & CT_POL_NEW_RULES))
		return 1;
	for (int i = 0; i < CT_POLICY_RULES; i++) {
		if (i >= pol->nrules)
			break;
		if (pol_rule_match(&pol->rules[i], pkt))
			return 1;
	}
	return 0;
}

/**
 * ct_verdict - the policy's verdict on a packet in user-land state `state`
 * (enum ct_pkt_state). No policy, or a frame with no state: accept.
 */
static __always_inline int ct_verdict(const struct ct_policy *pol, int state,
				      const struct ct_pkt *pkt)
{
	int ok;

	if (!pol || state < 0 || state >= CT_PKT_STATES)
		return CT_VERDICT_ACCEPT;
	/* Neighbour discovery and MLD (untracked ICMPv6) are IPv6's ARP: they
	 * pass like non-IP frames, or no policy could keep IPv6 working. */
	if (state == CT_PKT_UNTRACKED && pkt->t.proto == IPPROTO_ICMPV6)
		return CT_VERDICT_ACCEPT;
	ok = pol->accept & (1 << state);
	if (ok && state == CT_PKT_NEW)
		ok = pol_new_ok(pol, pkt);
	if (ok || pol->default_verdict == CT_VERDICT_ACCEPT)
		return CT_VERDICT_ACCEPT;
	return (pol->flags & CT_POL_ENFORCE) ? CT_VERDICT_DROP : CT_VERDICT_WOULD_DROP;
}

/* Decide now, before a commit: true when the packet must go (enforce mode). */
static __always_inline int ct_refuse(struct ct_vctx *vc, int state, const struct ct_pkt *pkt)
{
	int v = ct_verdict(vc->pol, state, pkt);

	if (v == CT_VERDICT_ACCEPT)
		return 0;
	vc->verdict = v;
	return v == CT_VERDICT_DROP;
}

static __always_inline void ct_frag_key(const struct ct_pkt *pkt, struct ct_frag_key *k)
{
	__builtin_memcpy(k->saddr, pkt->t.saddr, sizeof(k->saddr));
	__builtin_memcpy(k->daddr, pkt->t.daddr, sizeof(k->daddr));
	k->id = pkt->frag_id;
	k->proto = pkt->t.proto;
	k->family = pkt->t.family;
	k->pad = 0;
}

/**
 * ct_frag_verdict - the verdict of a fragment, given `verdict` for its own
 * state: a first fragment's is remembered for its datagram, a later one
 * takes what its first fragment got (the kernel judges the reassembled
 * datagram once). A later fragment whose first one was not seen (lost, or
 * out of order) is judged as untracked.
 */
static __always_inline int ct_frag_verdict(const struct ct_pkt *pkt, int verdict)
{
	struct ct_frag_key k = {};
	__u32 v = verdict, *seen;
	int frag = ct_frag_of(pkt);

	if (frag == CT_FRAG_NONE)
		return verdict;
	ct_frag_key(pkt, &k);
	if (frag == CT_FRAG_FIRST) {
		ct_frags.update(&k, &v);
		return verdict;
	}
	seen = ct_frags.lookup(&k);
	return (seen && *seen < CT_VERDICT_MAX) ? *seen : verdict;
}

static __always_inline void ct_count_verdict(const struct ct_policy *pol, int state, int verdict)
{
	__u32 zero = 0, i;
	struct ct_verdict_counts *vc;

	if (!pol || state < 0 || state >= CT_PKT_STATES || pol->slot >= CT_POLICY_SLOTS)
		return;
	vc = ct_verdicts.lookup(&zero);
	if (!vc)
		return;
	i = (pol->slot * CT_PKT_STATES + state) * CT_VERDICT_MAX + verdict;
	if (i < CT_VERDICT_COUNTS)
		vc->count[i]++;
}

#endif /* CTBPF_POLICY_H */
