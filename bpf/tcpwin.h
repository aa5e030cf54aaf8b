/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP window tracking: the kernel's tcp_in_window() and what surrounds it
 * in nf_conntrack_proto_tcp.c (window initialisation from SYNs and from a
 * picked-up segment, the liberal cases, the timeout cut for out-of-window
 * FINs and RSTs). Each direction's state is a struct ct_tcp_side (abi.h)
 * with its scale and flags in ct_entry.td_scale[dir] and td_flags[dir].
 * Included by tcp.h, whose tracker calls it.
 */
#ifndef CTBPF_TCPWIN_H
#define CTBPF_TCPWIN_H

/* Sequence-space order, modulo 2^32 (the kernel's before/after). */
static __always_inline int seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}
#define seq_after(a, b) seq_before(b, a)

/*
 * The kernel updates a connection's windows under its lock; the datapath
 * has none, and the two directions of a flow (or two segments of one) may
 * be tracked on two CPUs at once. A window edge that went backwards would
 * make the next valid segment INVALID (an ack of data "never sent"), so
 * td_end and td_maxend, which share 8 bytes, only ever rise, by
 * compare-and-swap; the other fields may lose a race and are corrected by
 * the next segment.
 */
_Static_assert(__builtin_offsetof(struct ct_entry, side) % 8 == 0 && sizeof(struct ct_tcp_side) % 8 == 0 &&
	       __builtin_offsetof(struct ct_tcp_side, td_maxend) == 4, "td_end/td_maxend: one aligned u64");

/* Raise td_end (maxend 0) or td_maxend (maxend 1) to `to`, when the edge
 * is still below `above` (sequence order: after(above, edge), or for
 * td_maxend after(above, edge - 1), as tcp_in_window tests them). */
static __always_inline void tcp_raise(struct ct_tcp_side *s, int maxend, __u32 above, __u32 to)
{
	__u64 *pair = (__u64 *)&s->td_end;

	for (int i = 0; i < 2; i++) {
		__u64 old = *(volatile __u64 *)pair;
		__u32 edge = maxend ? (__u32)(old >> 32) : (__u32)old;
		__u64 next;

		if (!seq_after(above, edge - maxend))
			return;
		next = maxend ? ((old & 0xffffffffULL) | ((__u64)to << 32))
			      : ((old & ~0xffffffffULL) | to);
		if (__sync_val_compare_and_swap(pair, old, next) == old)
			return;
	}
}

/* The kernel's MAXACKWINDOW: how far below td_end an ack may lag. */
static __always_inline __u32 tcp_maxackwin(const struct ct_tcp_side *s)
{
	return s->td_maxwin > 66000 ? s->td_maxwin : 66000;
}

/* What tcp_in_window decided. */
enum { CT_WIN_ACCEPT = 0, CT_WIN_IGNORE = 1, CT_WIN_INVALID = 2 };

/* The options a SYN announces, into its sender's (direction d's) scale and
 * flags (tcp_options): a SYN without options leaves them as they were. */
static __always_inline void tcp_take_options(struct ct_entry *e, int d, const struct ct_pkt *pkt)
{
	if (!(pkt->tcp_opts & CT_TCPOPTS_PRESENT))
		return;
	e->td_scale[d & 1] = pkt->wscale;
	e->td_flags[d & 1] = (e->td_flags[d & 1] & CT_TS_BE_LIBERAL) |
			     (pkt->tcp_opts & (CT_TS_WINDOW_SCALE | CT_TS_SACK_PERM));
}

/* A SYN or SYN/ACK (re)initialises its sender's window (tcp_init_sender). */
static __always_inline void tcp_init_sender(struct ct_entry *e, const struct ct_pkt *pkt,
					    __u32 end, int dir)
{
	struct ct_tcp_side *snd = &e->side[dir & 1];
	__u32 win = pkt->window;

	snd->td_end = end;
	snd->td_maxend = end;
	snd->td_maxwin = win ? win : 1;
	tcp_take_options(e, dir, pkt);
	/* RFC 7323: both sides must announce a scale for either to use it. */
	if (dir == CT_DIR_REPLY &&
	    !(e->td_flags[0] & e->td_flags[1] & CT_TS_WINDOW_SCALE)) {
		e->td_scale[0] = 0;
		e->td_scale[1] = 0;
	}
}

/* An out-of-window packet is INVALID unless either side is liberal. */
static __always_inline int tcp_win_fail(__u8 snd_flags, const struct ct_config *cfg,
					struct ct_pkt *pkt, int ret, __u8 reason)
{
	if ((snd_flags & CT_TS_BE_LIBERAL) || cfg->value[CT_CFG_TCP_BE_LIBERAL])
		return CT_WIN_ACCEPT;
	pkt->reason = reason;
	return ret;
}

/**
 * tcp_in_window - the kernel's sequence and acknowledgement checks, and the
 * window updates of an accepted packet. @cls is the packet's class, @state the
 * entry's state before this packet.
 */
static __always_inline int tcp_in_window(struct ct_entry *e, struct ct_pkt *pkt, int dir, int cls,
					 const struct ct_config *cfg)
{
	struct ct_tcp_side *snd = &e->side[dir & 1];
	struct ct_tcp_side *rcv = &e->side[!(dir & 1)];
	__u8 *sfl = &e->td_flags[dir & 1], *rfl = &e->td_flags[!(dir & 1)];
	__u32 seq = pkt->seq, ack = pkt->ack_seq, end = pkt->seq + pkt->seg_len;
	__u32 sack = pkt->sack, win = pkt->window, swin;
	__u8 fl = pkt->tcp_flags;

	if (!(*rfl & CT_TS_SACK_PERM) || seq_before(pkt->sack, ack))
		sack = ack;
	if (snd->td_maxwin == 0) {
		if (fl & TCPF_SYN) {
			tcp_init_sender(e, pkt, end, dir);
			if (!(fl & TCPF_ACK))
				return CT_WIN_ACCEPT;   /* simultaneous open */
		} else {
			/* Mid-stream: what the packet shows is all we know. */
			snd->td_end = end;
			swin = win << e->td_scale[dir & 1];
			snd->td_maxwin = swin ? swin : 1;
			snd->td_maxend = end + snd->td_maxwin;
			if (rcv->td_maxwin == 0)
				rcv->td_end = rcv->td_maxend = sack;
			else if (sack == rcv->td_end + 1)
				rcv->td_end++;   /* likely the answer to a keep-alive */
		}
	} else if ((fl & TCPF_SYN) && seq_after(end, snd->td_end) &&
		   (e->state == CT_TCP_SYN_SENT || e->state == CT_TCP_SYN_RECV)) {
		/* A new SYN with higher sequence numbers: start over (RFC 793). */
		tcp_init_sender(e, pkt, end, dir);
		if (dir == CT_DIR_REPLY && !(fl & TCPF_ACK))
			return CT_WIN_ACCEPT;
	}

	if (!(fl & TCPF_ACK) || ((fl & TCPF_RST) && ack == 0))
		ack = sack = rcv->td_end;   /* no ack, or a broken stack's RST/ACK with ack 0 */
	if ((fl & TCPF_RST) && seq == 0 && e->state == CT_TCP_SYN_SENT)
		seq = end = snd->td_end;    /* RST answering a SYN */

	/* A rebuild's copy (CT_TS_RESYNC) may lag the connection: the old tables
	 * saw its last packets. Until each side has sent one packet after the
	 * agent reconciled (ctbpf/agent/resync.py), the connection's packets
	 * skip the checks but still move the windows, so the connection itself
	 * brings the copy up to date. Accepting them without the updates, as
	 * liberal does, left echoed data behind for good: each segment acks the
	 * peer's last one, and once strict every one was INVALID. */
	if ((*sfl | *rfl) & CT_TS_RESYNC) {
		if (!cfg->value[CT_CFG_RESYNC_HOLD])
			*sfl &= ~CT_TS_RESYNC;
		goto update;
	}
	if (!seq_before(seq, snd->td_maxend + 1)) {
		__u32 overshot = end - snd->td_maxend + 1;
		int in_rcv = rcv->td_maxwin && seq_after(end, snd->td_end - rcv->td_maxwin - 1);

		if (in_rcv && seq_after(sack, rcv->td_end - tcp_maxackwin(snd) - 1) &&
		    overshot <= rcv->td_maxwin && seq_before(sack, rcv->td_end + 1)) {
			/* A sender that overran the window a little: remember the
			 * data, so that its ack does not look like one of unsent data. */
			tcp_raise(snd, 0, end, end);
			*sfl |= CT_TS_DATA_UNACK;
			return tcp_win_fail(*sfl, cfg, pkt, CT_WIN_IGNORE, 0);
		}
		return tcp_win_fail(*sfl, cfg, pkt, CT_WIN_INVALID, CT_INV_TCP_SEQ_OVER);
	}
	if (!seq_before(sack, rcv->td_end + 1))
		return tcp_win_fail(*sfl, cfg, pkt, CT_WIN_INVALID,
				    (fl & TCPF_SYN) ? CT_INV_TCP_SYNACK_ACK : CT_INV_TCP_ACK_OVER);
	/* Below the window: a retransmission of acknowledged data, or a very
	 * late ack. The kernel lets them pass without touching the entry (not
	 * INVALID, so no reason is counted: they count as ignored). */
	if (rcv->td_maxwin && !seq_after(end, snd->td_end - rcv->td_maxwin - 1))
		return tcp_win_fail(*sfl, cfg, pkt, CT_WIN_IGNORE, 0);
	if (!seq_after(sack, rcv->td_end - tcp_maxackwin(snd) - 1))
		return tcp_win_fail(*sfl, cfg, pkt, CT_WIN_IGNORE, 0);
update:
	if (!(fl & TCPF_SYN))
		win <<= e->td_scale[dir & 1];
	swin = win + (sack - ack);
	if (snd->td_maxwin < swin)
		snd->td_maxwin = swin;
	if (seq_after(end, snd->td_end)) {
		tcp_raise(snd, 0, end, end);
		*sfl |= CT_TS_DATA_UNACK;
	}
	if (fl & TCPF_ACK) {
		if (!(*sfl & CT_TS_MAXACK_SET) || seq_after(ack, snd->td_maxack))
			snd->td_maxack = ack;
		*sfl |= CT_TS_MAXACK_SET;
	}
	if (rcv->td_maxwin && seq_after(end, snd->td_maxend))
		rcv->td_maxwin += end - snd->td_maxend;
	tcp_raise(rcv, 1, sack + win, sack + win + !win);
	if (ack == rcv->td_end)
		*rfl &= ~CT_TS_DATA_UNACK;

	if (cls == CT_CLASS_ACK) {
		if (e->last_dir == dir && e->last_seq == seq && e->last_ack == ack &&
		    e->last_end == end && e->last_win == pkt->window) {
			/* Eight bits that wrap, as the kernel's counter does:
			 * the 256th repetition counts as none (no cap). */
			e->retrans++;
		} else {
			e->last_seq = seq;
			e->last_ack = ack;
			e->last_end = end;
			e->last_win = pkt->window;
			e->retrans = 0;
		}
	}
	return CT_WIN_ACCEPT;
}

static __always_inline void tcp_side_reset(struct ct_entry *e, int d)
{
	struct ct_tcp_side *s = &e->side[d & 1];

	s->td_end = s->td_maxend = s->td_maxwin = s->td_maxack = 0;
	e->td_scale[d & 1] = 0;
	e->td_flags[d & 1] &= CT_TS_BE_LIBERAL;
}

/* A new entry's windows (tcp_new): a SYN opens them with its options; a
 * mid-stream pickup guesses from the packet and stays liberal. */
static __always_inline void tcp_new_windows(struct ct_entry *e, struct ct_pkt *pkt, int next)
{
	struct ct_tcp_side *o = &e->side[CT_DIR_ORIGINAL];
	__u32 end = pkt->seq + pkt->seg_len;

	o->td_end = end;
	o->td_maxwin = pkt->window ? pkt->window : 1;
	if (next == CT_TCP_SYN_SENT) {
		o->td_maxend = end;
		tcp_take_options(e, CT_DIR_ORIGINAL, pkt);
	} else {
		o->td_maxend = end + o->td_maxwin;
		e->td_flags[CT_DIR_ORIGINAL] = CT_TS_SACK_PERM | CT_TS_BE_LIBERAL;
		e->td_flags[CT_DIR_REPLY] = CT_TS_SACK_PERM | CT_TS_BE_LIBERAL;
	}
}

/**
 * tcp_handle_invalid - what an out-of-window packet still does to an
 * ASSURED entry in the kernel (nf_tcp_handle_invalid): a FIN or RST is
 * noted, and one answering the other side's out-of-window FIN or RST cuts
 * a long timeout to tcp_timeout_unacknowledged, so that a connection the
 * tracker lost sync with does not linger for days. The state never changes.
 */
static __always_inline void tcp_handle_invalid(struct ct_entry *e, int dir, int cls,
					       const struct ct_config *cfg, __u64 now)
{
	__u32 unack;

	if (!(e->flags & CT_F_ASSURED) || (cls != CT_CLASS_RST && cls != CT_CLASS_FIN))
		return;
	if (e->last_dir == dir ||
	    (e->last_class != CT_CLASS_FIN && e->last_class != CT_CLASS_RST)) {
		e->last_class = cls;
		e->last_dir = dir;
		return;
	}
	if (e->expires < ct_deadline(now, 120 * CT_NSEC_PER_SEC))
		return;
	unack = ct_deadline(now, ct_timeout_ns(cfg, CT_CFG_TCP_TIMEOUT_UNACKNOWLEDGED));
	if (e->expires > unack)
		e->expires = unack;
}

#endif /* CTBPF_TCPWIN_H */
