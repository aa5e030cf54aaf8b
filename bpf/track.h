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

/* Times in ct_entry are ticks of 2^CT_TICK_SHIFT ns (abi.h) of ct_now(). */
static __always_inline __u32 ct_tick(__u64 ns)
{
	return ns >> CT_TICK_SHIFT;
}

/* The expiry of an entry refreshed at `now` for `timeout_ns`: the first
 * tick at which it counts as absent, so that it lives at least the whole
 * timeout (and at most a tick more). */
static __always_inline __u32 ct_deadline(__u64 now, __u64 timeout_ns)
{
	return ct_tick(now + timeout_ns) + 1;
}

/* The store is skipped when the expiry does not move: at high packet
 * rates most refreshes fall in the tick of the one before, and the entry's
 * cache line then stays clean for the other CPUs reading it. */
static __always_inline void ct_set_expiry(struct ct_entry *e, __u32 expires)
{
	if (e->expires != expires)
		e->expires = expires;
}

#endif /* CTBPF_TRACK_H */
