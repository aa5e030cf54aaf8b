/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The datapath's maps, all pinned under CT_PIN_DIR so that the control plane
 * (and a restarted agent) finds them by path.
 */
#ifndef CTBPF_MAPS_H
#define CTBPF_MAPS_H

/* Unassured flows (NEW, half-open, UDP not yet a stream, ICMP, generic):
 * an LRU, so a flood of new flows can only push out other unassured flows.
 * It is the pool such a flood churns, sized apart (the agent's new_max);
 * an LRU hash is always preallocated. */
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, ct_new,
		 CT_NEW_MAX, CT_PIN_DIR "/ct_new");

/* ASSURED flows: a plain hash that nothing evicts, allocated per element
 * so that its memory follows the flows it holds, as the kernel's does. Its
 * buckets are allocated whole, so it is made for what it holds and the
 * agent grows it, up to conntrack_max (ctbpf/agent/growth.py). */
BPF_TABLE_PINNED("hash", struct ct_key, struct ct_entry, ct_assured,
		 CT_ASSURED_MAX, CT_PIN_DIR "/ct_assured", BPF_F_NO_PREALLOC);

/* Packet and byte counters of the flows made while acct was on
 * (CT_F_ACCT): the kernel's accounting extension, off by default. Sized
 * for the records it holds and grown by the agent, as ct_assured is. */
BPF_TABLE_PINNED("hash", struct ct_key, struct ct_acct, ct_acct,
		 CT_ACCT_MAX, CT_PIN_DIR "/ct_acct", BPF_F_NO_PREALLOC);

/* Live tunables (timeouts, switches), one element read once per packet. */
BPF_TABLE_PINNED("array", __u32, struct ct_config, ct_config, 1,
		 CT_PIN_DIR "/ct_config");

/* Per-CPU counters, one element indexed by enum ct_stat. */
BPF_TABLE_PINNED("percpu_array", __u32, struct ct_counters, ct_stats, 1,
		 CT_PIN_DIR "/ct_stats");

/* Enforce mode: a policy per interface and hook (struct ct_policy, abi.h),
 * and the packets each judged, per state and verdict. */
BPF_TABLE_PINNED("hash", struct ct_policy_key, struct ct_policy, ct_policy,
		 2 * CT_POLICY_SLOTS, CT_PIN_DIR "/ct_policy");
BPF_TABLE_PINNED("percpu_array", __u32, struct ct_verdict_counts, ct_verdicts, 1,
		 CT_PIN_DIR "/ct_verdicts");

/* Enforce mode, fragments: a later fragment has no L4 header and no flow,
 * so it gets the verdict its datagram's first fragment got. Not pinned: a
 * few seconds of datagrams, nothing a restart must keep. */
struct ct_frag_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 id;
	__u8 proto;
	__u8 family;
	__u16 pad;
};
BPF_TABLE("lru_hash", struct ct_frag_key, __u32, ct_frags, CT_FRAG_ENTRIES);

/* NEW / UPDATE / DESTROY events (struct ct_event) for the agent, which
 * relays them to `ctbpf events`. BCC's BPF_RINGBUF_OUTPUT cannot pin, so the
 * table is spelled out as that macro does, with a pinned section name. */
struct ct_events_table_t {
	int key;
	u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	u32 max_entries;
};
__attribute__((section("maps/ringbuf:" CT_PIN_DIR "/ct_events")))
struct ct_events_table_t ct_events = { .max_entries = CT_EVENTS_BYTES };

/* The expiry index's registrations (struct ct_timer, see abi.h), read by
 * the sweeper through mmap. Same spelled-out table as ct_events. */
__attribute__((section("maps/ringbuf:" CT_PIN_DIR "/ct_timers")))
struct ct_events_table_t ct_timers = { .max_entries = CT_TIMERS_BYTES };

#endif /* CTBPF_MAPS_H */
