/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ICMP and ICMPv6 queries (echo, timestamp, information, address mask, node
 * information): keyed by id, never ASSURED, icmp_timeout / icmpv6_timeout.
 * Errors are handled by the driver: they relate to a flow, never own one.
 */
#ifndef CTBPF_ICMP_H
#define CTBPF_ICMP_H

/* Only a request starts a query flow; its requester side carries the id. */
static __always_inline int icmp_can_start(struct ct_pkt *pkt)
{
	if (pkt->icmp_reply) {
		pkt->reason = CT_INV_ICMP_TYPE;
		return 0;
	}
	return 1;
}

static __always_inline int icmp_track(struct ct_entry *e, const struct ct_config *cfg,
				      __u64 now, int v6)
{
	ct_set_expiry(e, ct_deadline(now, ct_timeout_ns(cfg, v6 ? CT_CFG_ICMPV6_TIMEOUT
									 : CT_CFG_ICMP_TIMEOUT)));
	return CT_TRACK_ACCEPT;
}

/* Any other protocol: one entry per address pair and protocol. */
static __always_inline int generic_track(struct ct_entry *e, const struct ct_config *cfg, __u64 now)
{
	ct_set_expiry(e, ct_deadline(now, ct_timeout_ns(cfg, CT_CFG_GENERIC_TIMEOUT)));
	return CT_TRACK_ACCEPT;
}

#endif /* CTBPF_ICMP_H */
