/* SPDX-License-Identifier: GPL-2.0 */
/*
 * UDP tracker (nf_conntrack_udp_packet): udp_timeout until the flow has
 * been answered and is still alive two seconds after it began; from then on
 * udp_timeout_stream and [ASSURED].
 */
#ifndef CTBPF_UDP_H
#define CTBPF_UDP_H

static __always_inline int udp_track(struct ct_entry *e, const struct ct_config *cfg, __u64 now)
{
	__u64 timeout = ct_timeout_ns(cfg, CT_CFG_UDP_TIMEOUT);

	/* SEEN_REPLY is set after the first reply has been tracked, so the
	 * first reply itself still gets the short timeout, as in the kernel. */
	if ((e->flags & CT_F_SEEN_REPLY) && ct_tick(now) > e->created + CT_UDP_STREAM_AFTER_TICKS) {
		timeout = ct_timeout_ns(cfg, CT_CFG_UDP_TIMEOUT_STREAM);
		e->flags |= CT_F_ASSURED;
	}
	ct_set_expiry(e, ct_deadline(now, timeout));
	return CT_TRACK_ACCEPT;
}

#endif /* CTBPF_UDP_H */
