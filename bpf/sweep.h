/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The sweeper's in-kernel half. The agent finds expired entries with batch
 * reads, then hands their keys to this program through BPF_PROG_TEST_RUN
 * (struct ct_sweep_header + keys as the "packet"). The program deletes an
 * entry only if it is still expired when it looks: a flow that saw traffic
 * since the agent's read has a new expiry and is left alone. The check and
 * the delete are not one atomic step; a packet landing between them, a
 * window of nanoseconds on an entry idle for its whole timeout, recreates
 * the flow as new, which is what the kernel's own GC race does too.
 */
#ifndef CTBPF_SWEEP_H
#define CTBPF_SWEEP_H

static __always_inline int sweep_one(struct ct_key *key, int assured, __u64 now,
				     const struct ct_config *cfg, struct ct_counters *st)
{
	struct ct_entry *e = assured ? ct_assured.lookup(key) : ct_new.lookup(key);

	if (!e || e->expires > ct_tick(now))
		return 0;
	ct_destroy(key, e, assured, CT_DESTROY_EXPIRED, CT_STAT_SWEPT, cfg, st);
	return 1;
}

/* A user's delete: the key goes from whichever table holds it. */
static __always_inline int user_delete_one(struct ct_key *key, const struct ct_config *cfg,
					   struct ct_counters *st)
{
	struct ct_entry *e = ct_assured.lookup(key);

	if (e) {
		ct_destroy(key, e, 1, CT_DESTROY_USER, CT_STAT_USER_DELETE, cfg, st);
		return 1;
	}
	e = ct_new.lookup(key);
	if (e) {
		ct_destroy(key, e, 0, CT_DESTROY_USER, CT_STAT_USER_DELETE, cfg, st);
		return 1;
	}
	return 0;
}

/* A key the expiry index says is due: deleted if still expired, else its
 * current expiry for the index (CT_DUE_* in abi.h). */
static __always_inline __u64 due_one(struct ct_key *key, __u64 now,
				     const struct ct_config *cfg, struct ct_counters *st)
{
	/* ct_new first: most flows end there (unreplied, UDP, closing TCP). */
	int assured = 0;
	struct ct_entry *e = ct_new.lookup(key);

	if (!e) {
		assured = 1;
		e = ct_assured.lookup(key);
		if (!e)
			return CT_DUE_GONE;
	}
	if (e->expires > ct_tick(now))
		return e->expires;
	ct_destroy(key, e, assured, CT_DESTROY_EXPIRED, CT_STAT_SWEPT, cfg, st);
	return CT_DUE_DELETED;
}

/**
 * sweep_batch - delete the request's keys its mode allows (CT_SWEEP_USER
 * also writes one result byte per key). Returns how many were deleted.
 */
static __always_inline int sweep_batch(void *data, void *data_end)
{
	struct ct_sweep_header *hdr = data;
	__u32 zero = 0, count;
	struct ct_counters *st = ct_stats.lookup(&zero);
	struct ct_config *cfg = ct_config.lookup(&zero);
	__u64 now = ct_now();
	int deleted = 0;

	if (!st || !cfg || (void *)(hdr + 1) > data_end)
		return 0;
	count = hdr->count;
	if (count > CT_SWEEP_BATCH)
		return 0;
	/* One loop per mode: a branch inside the loop would double what the
	 * verifier explores per key. */
	if (hdr->mode == CT_SWEEP_USER) {
		/* Results sit after a full batch of key slots: a fixed offset. */
		__u8 *results = data + sizeof(*hdr) + CT_SWEEP_BATCH * sizeof(struct ct_key);

		if ((void *)(results + CT_SWEEP_BATCH) > data_end)
			return 0;
		for (int i = 0; i < CT_SWEEP_BATCH; i++) {
			struct ct_key key;
			void *k = data + sizeof(*hdr) + i * sizeof(key);
			int done;

			if (i >= count || k + sizeof(key) > data_end)
				break;
			__builtin_memcpy(&key, k, sizeof(key));
			done = user_delete_one(&key, cfg, st);
			results[i] = done;
			deleted += done;
		}
		return deleted;
	}
	if (hdr->mode == CT_SWEEP_DUE) {
		__u64 *results = data + sizeof(*hdr) + CT_SWEEP_BATCH * sizeof(struct ct_key);

		if ((void *)(results + CT_SWEEP_BATCH) > data_end)
			return 0;
		for (int i = 0; i < CT_SWEEP_BATCH; i++) {
			struct ct_key key;
			void *k = data + sizeof(*hdr) + i * sizeof(key);
			__u64 r;

			if (i >= count || k + sizeof(key) > data_end)
				break;
			__builtin_memcpy(&key, k, sizeof(key));
			r = due_one(&key, now, cfg, st);
			results[i] = r;
			deleted += r == CT_DUE_DELETED;
		}
		return deleted;
	}
	for (int i = 0; i < CT_SWEEP_BATCH; i++) {
		struct ct_key key;
		void *k = data + sizeof(*hdr) + i * sizeof(key);

		if (i >= count || k + sizeof(key) > data_end)
			break;
		__builtin_memcpy(&key, k, sizeof(key));
		deleted += sweep_one(&key, hdr->table == CT_TABLE_ASSURED, now, cfg, st);
	}
	return deleted;
}

#endif /* CTBPF_SWEEP_H */
