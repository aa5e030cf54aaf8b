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

	if (!e || e->expires_ns > now)
		return 0;
	ct_destroy(key, e, assured, CT_DESTROY_EXPIRED, CT_STAT_SWEPT, cfg, st);
	return 1;
}

/**
 * sweep_batch - delete the still-expired entries among the request's keys.
 * Returns how many were deleted.
 */
static __always_inline int sweep_batch(void *data, void *data_end)
{
	struct ct_sweep_header *hdr = data;
	__u32 zero = 0, count;
	struct ct_counters *st = ct_stats.lookup(&zero);
	struct ct_config *cfg = ct_config.lookup(&zero);
	__u64 now = bpf_ktime_get_ns();
	int deleted = 0;

	if (!st || !cfg || (void *)(hdr + 1) > data_end)
		return 0;
	count = hdr->count;
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
