/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The tracker's driver: find the flow, let its protocol tracker judge the
 * packet, create, promote, delete entries and count what happened.
 */
#ifndef CTBPF_CONNTRACK_H
#define CTBPF_CONNTRACK_H

/* ct_process() result for frames that carry no user-land state. */
#define CT_PKT_NONE 0xff

/* ct_process() result for the frame of a flow: the tracker program judges it. */
#define CT_VERDICT_FLOW 0x10

static __always_inline void ct_count(struct ct_counters *st, int idx)
{
	if (idx >= 0 && idx < CT_STAT_MAX)
		st->count[idx]++; /* per-CPU: no atomic needed */
}

static __always_inline int ct_invalid(struct ct_counters *st, __u8 reason)
{
	ct_count(st, CT_STAT_INVALID_BASE + (reason & (CT_INV_REASON_MAX - 1)));
	ct_count(st, CT_STAT_PKT_INVALID);
	return CT_PKT_INVALID;
}

/* The clock of every timeout: CLOCK_MONOTONIC at tick precision. Timeouts
 * are whole seconds, and the coarse read costs a fraction of the precise
 * one (which a VM pays for with a paravirtual clock read per packet). */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* A new flow's counters, its first packet counted. A record left by an
 * entry that ct_new's LRU evicted (no DESTROY path runs then) is reset. */
static __always_inline int ct_acct_start(const struct ct_key *key, const struct ct_pkt *pkt)
{
	struct ct_acct a = { .packets = { 1, 0 }, .bytes = { pkt->l3_len, 0 } };

	return ct_acct.update((struct ct_key *)key, &a);
}

/* A flow's counters into an event, zero when it has none. */
static __always_inline void ct_acct_copy(const struct ct_key *key, const struct ct_entry *e,
					 struct ct_acct *out)
{
	struct ct_acct *a = (e->flags & CT_F_ACCT) ? ct_acct.lookup((struct ct_key *)key) : 0;

	if (a)
		__builtin_memcpy(out, a, sizeof(*out));
	else
		__builtin_memset(out, 0, sizeof(*out));
}

/**
 * ct_emit - report an event on a flow, when events are on and someone
 * listens (the kernel builds events only for listeners: the daemon says
 * how many clients it relays to). A full ring buffer loses the event
 * (counted), never the packet.
 */
static __always_inline void ct_emit(const struct ct_config *cfg, struct ct_counters *st,
				    const struct ct_key *key, const struct ct_entry *e,
				    __u8 type, __u8 reason)
{
	struct ct_event *ev;

	if (!cfg->value[CT_CFG_EVENTS] || !cfg->value[CT_CFG_EVENT_LISTENERS])
		return;
	ev = ct_events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		ct_count(st, CT_STAT_EVENT_LOST);
		return;
	}
	ev->timestamp_ns = ct_now();   /* the clock of the entry's ticks */
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	__builtin_memcpy(&ev->entry, e, sizeof(*e));
	ct_acct_copy(key, e, &ev->acct);
	ev->type = type;
	ev->reason = reason;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	ct_events.ringbuf_submit(ev, 0);
}

/**
 * ct_register - index an entry under its expiry (see struct ct_timer). A
 * full ring loses the record, counted; the sweeper then rebuilds the index.
 */
static __always_inline void ct_register(const struct ct_key *key, __u32 expires,
				       struct ct_counters *st)
{
	struct ct_timer *t = ct_timers.ringbuf_reserve(sizeof(*t));

	if (!t) {
		ct_count(st, CT_STAT_TIMER_LOST);
		return;
	}
	__builtin_memcpy(&t->key, key, sizeof(*key));
	t->expires = expires;
	/* The sweeper reads the ring by mmap when it sweeps: nobody waits. */
	ct_timers.ringbuf_submit(t, BPF_RB_NO_WAKEUP);
}

/**
 * ct_destroy - report an entry's end and delete it from its table; `stat`
 * says which counter records why (expired, deleted, swept).
 */
static __always_inline void ct_destroy(struct ct_key *key, const struct ct_entry *e,
				       int in_assured, __u8 reason, int stat,
				       const struct ct_config *cfg, struct ct_counters *st)
{
	ct_emit(cfg, st, key, e, CT_EVENT_DESTROY, reason);
	if (e->flags & CT_F_ACCT)
		ct_acct.delete(key);
	if (in_assured)
		ct_assured.delete(key);
	else
		ct_new.delete(key);
	ct_count(st, stat);
}

/**
 * ct_find_in - the live entry of a key in one table (ct_assured when
 * in_assured, a constant at each call, else ct_new). An expired entry
 * counts as absent and is removed here; the sweeper only reclaims what no
 * packet revisits.
 */
static __always_inline struct ct_entry *ct_find_in(struct ct_key *key, __u64 now, int in_assured,
						   const struct ct_config *cfg,
						   struct ct_counters *st)
{
	struct ct_entry *e = in_assured ? ct_assured.lookup(key) : ct_new.lookup(key);

	if (e && e->expires <= ct_tick(now)) {
		ct_destroy(key, e, in_assured, CT_DESTROY_EXPIRED, CT_STAT_EXPIRED_SEEN, cfg, st);
		e = 0;
	}
	return e;
}

/**
 * ct_find - the live entry of a key, ASSURED table first so that established
 * traffic needs one lookup.
 */
static __always_inline struct ct_entry *ct_find(struct ct_key *key, __u64 now,
						int *in_assured, const struct ct_config *cfg,
						struct ct_counters *st)
{
	struct ct_entry *e = ct_find_in(key, now, 1, cfg, st);

	if (e) {
		*in_assured = 1;
		return e;
	}
	*in_assured = 0;
	return ct_find_in(key, now, 0, cfg, st);
}

static __always_inline int ct_is_icmp(const struct ct_tuple *t)
{
	return (t->family == CT_FAMILY_IPV4 && t->proto == IPPROTO_ICMP) ||
	       (t->family == CT_FAMILY_IPV6 && t->proto == IPPROTO_ICMPV6);
}

static __always_inline int ct_can_start(struct ct_pkt *pkt, const struct ct_config *cfg)
{
	if (pkt->t.proto == IPPROTO_TCP)
		return tcp_can_start(pkt, cfg);
	if (ct_is_icmp(&pkt->t))
		return icmp_can_start(pkt);
	return 1;
}

static __always_inline int ct_track_proto(struct ct_entry *e, struct ct_pkt *pkt, int dir,
					  const struct ct_config *cfg, __u64 now)
{
	if (pkt->t.proto == IPPROTO_TCP)
		return tcp_track(e, pkt, dir, cfg, now);
	if (pkt->t.proto == IPPROTO_UDP)
		return udp_track(e, cfg, now);
	if (ct_is_icmp(&pkt->t))
		return icmp_track(e, cfg, now, pkt->t.family == CT_FAMILY_IPV6);
	return generic_track(e, cfg, now);
}

/* Packet and byte counters of a flow that has them (CT_F_ACCT, whatever
 * acct says now: as in the kernel, the switch decides at creation). Other
 * CPUs may be counting the same flow (RSS spreads the two directions), so
 * add atomically. */
static __always_inline void ct_account(const struct ct_key *key, const struct ct_entry *e,
				       const struct ct_pkt *pkt, int dir)
{
	struct ct_acct *a;

	if (!(e->flags & CT_F_ACCT))
		return;
	a = ct_acct.lookup((struct ct_key *)key);
	if (!a)
		return;
	if (dir == CT_DIR_ORIGINAL) {
		__sync_fetch_and_add(&a->packets[0], 1);
		__sync_fetch_and_add(&a->bytes[0], pkt->l3_len);
	} else {
		__sync_fetch_and_add(&a->packets[1], 1);
		__sync_fetch_and_add(&a->bytes[1], pkt->l3_len);
	}
}

/* TCP states in which the kernel may early-drop even an ASSURED flow. */
static __always_inline int ct_is_closing(const struct ct_key *key, const struct ct_entry *e)
{
	return key->proto == IPPROTO_TCP && e->state >= CT_TCP_FIN_WAIT &&
	       e->state <= CT_TCP_CLOSE;
}

/**
 * ct_move - put an entry in the table it belongs to: ct_assured once it is
 * ASSURED (no flood of new flows can evict it there), back in ct_new when it
 * starts closing (the kernel early-drops closing flows, ASSURED or not).
 *
 * Another CPU may update the old copy between our copy and the delete; the
 * worst case is a lost packet count or a state change replayed by the next
 * packet, which is acceptable next to taking a lock per packet.
 */
static __always_inline void ct_move(struct ct_key *key, struct ct_entry *e, int in_assured,
				    struct ct_counters *st)
{
	if (in_assured) {
		if (ct_new.update(key, e) == 0) {
			ct_assured.delete(key);
			ct_count(st, CT_STAT_DEMOTE);
		}
		return;
	}
	if (ct_assured.update(key, e) == 0) {
		ct_new.delete(key);
		ct_count(st, CT_STAT_PROMOTE);
	} else {
		/* The assured table is full: the flow stays tracked in ct_new. */
		ct_count(st, CT_STAT_INSERT_FAILED);
	}
}

/* User-land state of a packet on a known flow, judged before the packet
 * itself sets SEEN_REPLY (kernel: ctinfo is chosen on lookup). */
static __always_inline int ct_known_state(int dir, int seen_reply)
{
	return (dir == CT_DIR_REPLY || seen_reply) ? CT_PKT_ESTABLISHED : CT_PKT_NEW;
}

static __always_inline int ct_create(struct ct_key *key, int src_is_hi, struct ct_pkt *pkt,
				     struct ct_entry *ne, const struct ct_config *cfg, __u64 now,
				     struct ct_counters *st, struct ct_vctx *vc)
{
	if (!ct_can_start(pkt, cfg))
		return ct_invalid(st, pkt->reason);
	__builtin_memset(ne, 0, sizeof(*ne));
	ne->created = ct_tick(now);
	ne->last_class = CT_CLASS_NONE;
	if (src_is_hi)
		ne->flags |= CT_F_ORIG_IS_HI;
	if (pkt->t.proto == IPPROTO_TCP && pkt->tcp_flags & TCPF_ACK && !(pkt->tcp_flags & TCPF_SYN))
		ne->flags |= CT_F_PICKED_UP;
	if (ct_track_proto(ne, pkt, CT_DIR_ORIGINAL, cfg, now) == CT_TRACK_INVALID)
		return ct_invalid(st, pkt->reason);
	if (ct_refuse(vc, CT_PKT_NEW, pkt)) {
		ct_count(st, CT_STAT_PKT_NEW);
		return CT_PKT_NEW;
	}
	/* The counters first: a flow flagged CT_F_ACCT always has its record.
	 * One that finds ct_acct full (the agent grows it) counts nothing, as
	 * if made while acct was off, and is counted. */
	if (cfg->value[CT_CFG_ACCT]) {
		if (ct_acct_start(key, pkt) == 0)
			ne->flags |= CT_F_ACCT;
		else
			ct_count(st, CT_STAT_ACCT_LOST);
	}
	if (ct_new.update(key, ne) != 0) {
		if (ne->flags & CT_F_ACCT)
			ct_acct.delete(key);
		ct_count(st, CT_STAT_INSERT_FAILED);
		/* The kernel's "table full, dropping packet", in enforce mode. */
		if (vc->pol && (vc->pol->flags & CT_POL_ENFORCE)) {
			vc->verdict = CT_VERDICT_DROP;
			ct_count(st, CT_STAT_DROP_TABLE_FULL);
		}
	} else {
		ct_count(st, CT_STAT_INSERT);
		ct_register(key, ne->expires, st);
		ct_emit(cfg, st, key, ne, CT_EVENT_NEW, CT_DESTROY_NONE);
	}
	ct_count(st, CT_STAT_PKT_NEW);
	return CT_PKT_NEW;
}

/* ct_track_known() result: the entry was closed for a reopening SYN, which
 * now starts a new flow (the fresh-flow stage). */
#define CT_PKT_REOPEN 0xfe

/**
 * ct_track_known - one packet of a flow whose live entry `e` was found in
 * ct_assured (in_assured, a constant in each stage) or ct_new. Returns the
 * packet's user-land state, or CT_PKT_REOPEN.
 */
static __always_inline int ct_track_known(struct ct_key *key, int src_is_hi, struct ct_entry *e,
					  int in_assured, struct ct_pkt *pkt,
					  const struct ct_config *cfg, struct ct_counters *st,
					  struct ct_vctx *vc, __u64 now)
{
	int dir = flow_dir(e, src_is_hi);
	int seen_reply = e->flags & CT_F_SEEN_REPLY;
	int state = ct_known_state(dir, seen_reply);
	__u8 old_state = e->state, old_flags = e->flags;
	__u32 old_expires = e->expires;
	int assured, counted = 1;

	ct_count(st, CT_STAT_FOUND);
	/* Refused in this state: the entry must not see the packet at all. */
	if (ct_refuse(vc, state, pkt)) {
		ct_count(st, state == CT_PKT_NEW ? CT_STAT_PKT_NEW : CT_STAT_PKT_ESTABLISHED);
		return state;
	}

	switch (ct_track_proto(e, pkt, dir, cfg, now)) {
	case CT_TRACK_INVALID:
		/* The state stays; only the kernel's shorter timeout for an
		 * ASSURED flow answered by an out-of-window FIN or RST may
		 * have been applied (tcp_handle_invalid). */
		if (e->expires < old_expires)
			ct_register(key, e->expires, st);
		return ct_invalid(st, pkt->reason);
	case CT_TRACK_REOPEN:
		if (ct_refuse(vc, CT_PKT_NEW, pkt)) {
			ct_count(st, CT_STAT_PKT_NEW);
			return CT_PKT_NEW;
		}
		ct_destroy(key, e, in_assured, CT_DESTROY_REOPEN, CT_STAT_DELETE, cfg, st);
		return CT_PKT_REOPEN;
	case CT_TRACK_DELETE:
		ct_destroy(key, e, in_assured, CT_DESTROY_RST, CT_STAT_DELETE, cfg, st);
		break;
	case CT_TRACK_KEEP:
		ct_count(st, CT_STAT_IGNORED);
		/* fallthrough */
	case CT_TRACK_NOREFRESH:
		/* The kernel counts a packet where it refreshes the entry
		 * (nf_ct_refresh_acct): ignored ones are passed uncounted. */
		counted = 0;
		/* fallthrough */
	default:
		if (counted)
			ct_account(key, e, pkt, dir);
		if (dir == CT_DIR_REPLY && !seen_reply)
			e->flags |= CT_F_SEEN_REPLY;
		if (e->state != old_state ||
		    ((e->flags ^ old_flags) & (CT_F_SEEN_REPLY | CT_F_ASSURED)))
			ct_emit(cfg, st, key, e, CT_EVENT_UPDATE, CT_DESTROY_NONE);
		/* Only an earlier expiry needs a record: see struct ct_timer. */
		if (e->expires < old_expires)
			ct_register(key, e->expires, st);
		assured = (e->flags & CT_F_ASSURED) && !ct_is_closing(key, e);
		if (assured != in_assured)
			ct_move(key, e, in_assured, st);
		else if (in_assured)
			vc->fwd = pkt->t.proto != IPPROTO_TCP || e->state == CT_TCP_ESTABLISHED;
	}
	ct_count(st, state == CT_PKT_NEW ? CT_STAT_PKT_NEW : CT_STAT_PKT_ESTABLISHED);
	return state;
}

/**
 * ct_track_icmp_error - an ICMP error is RELATED to the flow its embedded
 * header belongs to, provided it travels back to that packet's sender
 * (the kernel's anti-spoofing check); otherwise it is INVALID. Errors never
 * create or refresh entries.
 */
static __always_inline int ct_track_icmp_error(struct ct_pkt *pkt, const struct ct_config *cfg,
					       struct ct_counters *st)
{
	struct ct_key key = {};
	int in_assured = 0;

	ct_count(st, CT_STAT_ICMP_ERROR);
	flow_key_from_tuple(&pkt->inner, &key);
	if (!ct_find(&key, ct_now(), &in_assured, cfg, st))
		return ct_invalid(st, CT_INV_ICMP_NO_FLOW);
	if (pkt->inner.family != pkt->t.family ||
	    !flow_addr_equal(pkt->t.daddr, pkt->inner.saddr))
		return ct_invalid(st, CT_INV_ICMP_SPOOF);
	ct_count(st, CT_STAT_PKT_RELATED);
	return CT_PKT_RELATED;
}

/* Policy of the interface and hook a frame is judged by, when any. */
static __always_inline const struct ct_policy *ct_policy_of(const struct ct_config *cfg,
							   __u32 ifindex, __u32 hook)
{
	struct ct_policy_key pk = { .ifindex = ifindex, .hook = hook };

	if (!cfg->value[CT_CFG_POLICIES])
		return 0;
	return ct_policy.lookup(&pk);
}

/* The verdict of a frame in user-land state `state`, counted. */
static __always_inline int ct_finish(struct ct_vctx *vc, int state, const struct ct_pkt *pkt,
				     struct ct_counters *st)
{
	int verdict;

	/* Every NEW packet was judged (ct_refuse) before its entry was made or
	 * touched; asking again would only give the verifier another copy of
	 * the rules to walk on every path. */
	if (state == CT_PKT_NEW || vc->verdict == CT_VERDICT_DROP)
		verdict = vc->verdict < 0 ? CT_VERDICT_ACCEPT : vc->verdict;
	else
		verdict = ct_verdict(vc->pol, state, pkt);

	if (vc->pol && pkt->frag_off)
		verdict = ct_frag_verdict(pkt, verdict);

	ct_count_verdict(vc->pol, state, verdict);
	if (verdict == CT_VERDICT_DROP)
		ct_count(st, CT_STAT_DROP);
	return verdict;
}

/**
 * ct_process - first half of a frame arriving on (CT_HOOK_IN) or leaving
 * (CT_HOOK_OUT) interface `ifindex`: parse it, and judge what needs no flow
 * (not IP, untracked, ICMP errors, malformed). A frame of a flow goes on,
 * parsed, to the tracker program (ct_process_flow) through the hook's
 * program array; the verifier checks the two halves apart, each within its
 * budget. Returns the verdict (enum ct_verdict) or CT_VERDICT_FLOW when the
 * tracker could not be called.
 */
static __always_inline int ct_process(void *ctx, void *data, void *data_end, __u32 ifindex,
				      __u32 hook)
{
	struct ct_vctx vc = { .pol = 0, .verdict = -1 };
	__u32 zero = 0, slot = hook & 1;
	struct ct_config *cfg = ct_config.lookup(&zero);
	struct ct_counters *st = ct_stats.lookup(&zero);
	struct ct_scratch *sc = ct_scratch.lookup(&slot);
	struct ct_pkt *pkt;
	int state;

	if (!cfg || !st || !sc)
		return CT_VERDICT_ACCEPT; /* cannot happen: array elements always exist */
	pkt = &sc->pkt;
	__builtin_memset(pkt, 0, sizeof(*pkt));
	vc.pol = ct_policy_of(cfg, ifindex, hook);
	/* XDP is the ingress hook, TC the egress one. */
	if (parse_packet(ctx, hook == CT_HOOK_IN, data, data_end, pkt)) {
		if (pkt->reason == CT_INV_ICMP_INNER)
			ct_count(st, CT_STAT_ICMP_ERROR); /* examined, found unusable */
		state = ct_invalid(st, pkt->reason);
	} else if (pkt->kind == CT_KIND_NON_IP) {
		ct_count(st, CT_STAT_NON_IP);
		state = CT_PKT_NONE;
	} else if (pkt->kind == CT_KIND_UNTRACKED) {
		if (pkt->t.proto != IPPROTO_ICMPV6)
			ct_count(st, CT_STAT_FRAGMENT);
		ct_count(st, CT_STAT_PKT_UNTRACKED);
		state = CT_PKT_UNTRACKED;
	} else if (pkt->kind == CT_KIND_ICMP_ERROR) {
		state = ct_track_icmp_error(pkt, cfg, st);
	} else {
		return CT_VERDICT_FLOW;
	}
	return ct_finish(&vc, state, pkt, st);
}

/* Go on to the next stage (enum ct_stage) of a flow's frame; returns only
 * when the stage's slot is empty. */
static __always_inline void ct_next_stage(void *ctx, __u32 hook, int stage)
{
	if (hook == CT_HOOK_IN)
		ct_jump_xdp.call(ctx, CT_JUMP_BASE + stage);
	else
		ct_jump_tc.call(ctx, CT_JUMP_BASE + stage);
}

/**
 * ct_process_flow - a stage of the frame of a flow, parsed by ct_process and
 * left in the hook's ct_scratch slot. Each stage is its own program and
 * knows where the flow's entry can be (enum ct_stage): the verifier then
 * checks the trackers once per table instead of once for every table on
 * every path. The ASSURED stage looks the flow up in ct_assured, as most
 * packets belong there; a miss goes on to ct_new, a miss there to a fresh
 * entry. Returns the verdict (enum ct_verdict); only CT_VERDICT_DROP drops.
 * With `fwd` (XDP) and the fast path on, *fwd says whether the packet may be
 * forwarded at XDP (bpf/fastpath.h); it is left alone otherwise.
 */
static __always_inline int ct_process_flow(void *ctx, __u32 ifindex, __u32 hook, int stage,
					   int *fwd)
{
	struct ct_vctx vc = { .pol = 0, .verdict = -1 };
	__u32 zero = 0, slot = hook & 1;
	struct ct_config *cfg = ct_config.lookup(&zero);
	struct ct_counters *st = ct_stats.lookup(&zero);
	struct ct_scratch *sc = ct_scratch.lookup(&slot);
	struct ct_entry *e = 0;
	__u64 now = ct_now();
	int state, state_verdict;

	if (!cfg || !st || !sc)
		return CT_VERDICT_ACCEPT; /* cannot happen: array elements always exist */
	if (stage == CT_STAGE_ASSURED) {
		__builtin_memset(&sc->key, 0, sizeof(sc->key));
		sc->src_is_hi = flow_key_from_tuple(&sc->pkt.t, &sc->key);
	}
	if (stage != CT_STAGE_FRESH) {
		e = ct_find_in(&sc->key, now, stage == CT_STAGE_ASSURED, cfg, st);
		if (!e) {
			ct_next_stage(ctx, hook, stage + 1);
			ct_count(st, CT_STAT_NO_TRACKER);
			return CT_VERDICT_ACCEPT;
		}
	}
	vc.pol = ct_policy_of(cfg, ifindex, hook);
	if (stage == CT_STAGE_FRESH) {
		state = ct_create(&sc->key, sc->src_is_hi, &sc->pkt, &sc->entry, cfg, now, st, &vc);
	} else {
		state = ct_track_known(&sc->key, sc->src_is_hi, e, stage == CT_STAGE_ASSURED,
				       &sc->pkt, cfg, st, &vc, now);
		if (state == CT_PKT_REOPEN) {
			ct_next_stage(ctx, hook, CT_STAGE_FRESH);
			ct_count(st, CT_STAT_NO_TRACKER);
			return CT_VERDICT_ACCEPT;
		}
	}
	state_verdict = ct_finish(&vc, state, &sc->pkt, st);
	if (fwd && cfg->value[CT_CFG_FAST_PATH])
		*fwd = ct_fwd_cause(vc.fwd, state, state_verdict, &sc->pkt);
	return state_verdict;
}

#endif /* CTBPF_CONNTRACK_H */
