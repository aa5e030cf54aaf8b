/* SPDX-License-Identifier: GPL-2.0 */
/* What a protocol tracker tells the driver to do with a packet and its entry. */
#ifndef CTBPF_TRACK_H
#define CTBPF_TRACK_H

enum ct_track_result {
	CT_TRACK_ACCEPT = 0,     /* valid: the tracker updated the entry and its expiry */
	CT_TRACK_KEEP = 1,       /* valid, but the entry's state and expiry stay as they were */
	CT_TRACK_INVALID = 2,    /* INVALID: the entry must not change */
	CT_TRACK_DELETE = 3,     /* valid, and the entry dies now (RST as the only reply) */
	CT_TRACK_REOPEN = 4,     /* the entry dies and the packet starts a new flow */
	CT_TRACK_NOREFRESH = 5,  /* valid and tracked, but neither its expiry nor its counters move */
};

static __always_inline __u64 ct_timeout_ns(const struct ct_config *cfg, int idx)
{
	if (idx < 0 || idx >= CT_CFG_MAX)
		return 0;
	/* The mask, too, behind a barrier clang cannot see through: it may
	 * test one copy of idx and index with another, which the verifier
	 * cannot relate. */
	asm volatile("" : "+r"(idx));
	return cfg->value[idx & (CT_CFG_MAX - 1)] * CT_NSEC_PER_SEC;
}

#endif /* CTBPF_TRACK_H */
