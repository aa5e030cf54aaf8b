/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP tracker: the kernel's tcp_conntracks transition table, the rules
 * nf_conntrack_tcp_packet() applies around it, and tcp_in_window(): each
 * side's sequence window, so that data, ACKs and RSTs outside what the
 * other side can accept are INVALID and change nothing.
 */
#ifndef CTBPF_TCP_H
#define CTBPF_TCP_H

#define sNO CT_TCP_NONE
#define sSS CT_TCP_SYN_SENT
#define sSR CT_TCP_SYN_RECV
#define sES CT_TCP_ESTABLISHED
#define sFW CT_TCP_FIN_WAIT
#define sCW CT_TCP_CLOSE_WAIT
#define sLA CT_TCP_LAST_ACK
#define sTW CT_TCP_TIME_WAIT
#define sCL CT_TCP_CLOSE
#define sS2 CT_TCP_SYN_SENT2
#define sIV CT_TCP_INVALID
#define sIG CT_TCP_IGNORE

/* BCC does not load .rodata, so each row of the table is packed into a
 * 64-bit constant: the next state for current state s sits in bits 4s..4s+3. */
#define TCP_ROW(no, ss, sr, es, fw, cw, la, tw, cl, s2)                       \
	((__u64)(no) | (__u64)(ss) << 4 | (__u64)(sr) << 8 | (__u64)(es) << 12 | \
	 (__u64)(fw) << 16 | (__u64)(cw) << 20 | (__u64)(la) << 24 |            \
	 (__u64)(tw) << 28 | (__u64)(cl) << 32 | (__u64)(s2) << 36)

/**
 * tcp_table_row - one row of tcp_conntracks[dir][class].
 */
static __always_inline __u64 tcp_table_row(int dir, int cls)
{
	switch (dir * 8 + cls) {
	/* ORIGINAL             sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2 */
	/* SYN in TIME_WAIT/CLOSE reopens; SYN on a live flow is ignored: the
	 * firewall may be out of sync and the receiver will answer. */
	case 0 * 8 + CT_CLASS_SYN:    return TCP_ROW(sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2);
	/* Only SYN_RECV (late retransmission) and SYN_SENT2 (simultaneous
	 * open) can see a SYN/ACK from the opener. */
	case 0 * 8 + CT_CLASS_SYNACK: return TCP_ROW(sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR);
	case 0 * 8 + CT_CLASS_FIN:    return TCP_ROW(sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV);
	/* ACK as first packet: mid-stream pickup (tcp_loose). */
	case 0 * 8 + CT_CLASS_ACK:    return TCP_ROW(sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV);
	case 0 * 8 + CT_CLASS_RST:    return TCP_ROW(sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL);
	case 0 * 8 + CT_CLASS_NONE:   return TCP_ROW(sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV);
	/* REPLY                sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2 */
	/* SYN from the responder: simultaneous open, or a reopen from TIME_WAIT. */
	case 1 * 8 + CT_CLASS_SYN:    return TCP_ROW(sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2);
	case 1 * 8 + CT_CLASS_SYNACK: return TCP_ROW(sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR);
	case 1 * 8 + CT_CLASS_FIN:    return TCP_ROW(sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV);
	/* ACK answering a bare SYN: maybe a half-open connection, ignored. */
	case 1 * 8 + CT_CLASS_ACK:    return TCP_ROW(sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG);
	case 1 * 8 + CT_CLASS_RST:    return TCP_ROW(sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL);
	}
	return TCP_ROW(sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV);
}

static __always_inline int tcp_next_state(int dir, int cls, int state)
{
	if (state < 0 || state > CT_TCP_SYN_SENT2)
		return CT_TCP_INVALID;
	return (tcp_table_row(dir, cls) >> (state * 4)) & 0xf;
}

/* Packet class by the kernel's priority: RST > SYN (SYN/ACK) > FIN > ACK. */
static __always_inline int tcp_class(__u8 flags)
{
	if (flags & TCPF_RST)
		return CT_CLASS_RST;
	if (flags & TCPF_SYN)
		return (flags & TCPF_ACK) ? CT_CLASS_SYNACK : CT_CLASS_SYN;
	if (flags & TCPF_FIN)
		return CT_CLASS_FIN;
	if (flags & TCPF_ACK)
		return CT_CLASS_ACK;
	return CT_CLASS_NONE;
}

static __always_inline void tcp_note_last(struct ct_entry *e, const struct ct_pkt *pkt,
					  int dir, int cls)
{
	e->last_class = cls;
	e->last_dir = dir;
	e->last_end = pkt->seq + pkt->seg_len;
}

#include "tcpwin.h"

/* What the RST rules decided. */
enum { CT_RST_CHECK = 0, CT_RST_SKIP_WINDOW = 1, CT_RST_KEEP_STATE = 2, CT_RST_INVALID = 3 };

static __always_inline int tcp_established(const struct ct_entry *e)
{
	return e->state == CT_TCP_ESTABLISHED && (e->flags & CT_F_ASSURED);
}

/**
 * tcp_check_rst - a RST that would close the entry: the kernel accepts it
 * only with the sequence number the receiver expects; one below the last
 * ack is INVALID, one in window but not exact keeps the state (the
 * receiver answers it with a challenge ACK, RFC 5961).
 */
static __always_inline int tcp_check_rst(struct ct_entry *e, struct ct_pkt *pkt, int dir, int old,
					 const struct ct_config *cfg)
{
	const struct ct_tcp_side *rcv = &e->side[!(dir & 1)];
	__u32 seq = pkt->seq;

	/* Closing: the tuple may be reused already, windows are stale. */
	if (old >= CT_TCP_FIN_WAIT && old <= CT_TCP_CLOSE)
		return CT_RST_SKIP_WINDOW;
	if ((e->td_flags[!(dir & 1)] & CT_TS_MAXACK_SET) && e->last_class != CT_CLASS_SYN) {
		/* Each acceptance below goes straight to the window check: the
		 * "answers a packet we let through" exemptions further down are
		 * not for a RST the receiver's ack already vouches for (the
		 * kernel leaves its switch there). A RST of SYN_RECV far out of
		 * window is INVALID even if it acks the last segment. */
		if (seq == 0 && !tcp_established(e))
			return CT_RST_CHECK;
		if (seq_before(seq, rcv->td_maxack) && !cfg->value[CT_CFG_TCP_IGNORE_INVALID_RST]) {
			pkt->reason = CT_INV_TCP_RST;
			return CT_RST_INVALID;
		}
		if (!tcp_established(e) || seq == rcv->td_maxack)
			return CT_RST_CHECK;
		/* Part of a train: data, then a RST at its end. */
		if (e->last_class == CT_CLASS_ACK && e->last_dir == dir && seq == e->last_end)
			return CT_RST_CHECK;
		/* Established and inexact: the exemptions below cannot apply
		 * (ASSURED, last packet not a SYN, not SYN_SENT). */
		return CT_RST_KEEP_STATE;
	}
	/* A RST answering a SYN or ACK we let through unchecked. */
	if ((((e->flags & CT_F_SEEN_REPLY) && e->last_class == CT_CLASS_SYN) ||
	     (!(e->flags & CT_F_ASSURED) && e->last_class == CT_CLASS_ACK)) &&
	    pkt->ack_seq == e->last_end)
		return CT_RST_SKIP_WINDOW;
	/* A RST answering a challenge ACK we let through. */
	if (old == CT_TCP_SYN_SENT && e->last_class == CT_CLASS_ACK &&
	    e->last_dir == CT_DIR_REPLY && seq == e->last_ack)
		return CT_RST_SKIP_WINDOW;
	return CT_RST_CHECK;
}

/**
 * tcp_can_start - may this packet create a TCP entry?
 * A SYN may; another packet only when tcp_loose allows a mid-stream pickup
 * and the table's NONE column accepts it. Sets pkt->reason when not.
 */
static __always_inline int tcp_can_start(struct ct_pkt *pkt, const struct ct_config *cfg)
{
	int next = tcp_next_state(CT_DIR_ORIGINAL, tcp_class(pkt->tcp_flags), CT_TCP_NONE);

	if (next == CT_TCP_SYN_SENT)
		return 1;
	if (next == CT_TCP_INVALID) {
		pkt->reason = CT_INV_TCP_STATE;
		return 0;
	}
	if (!cfg->value[CT_CFG_TCP_LOOSE]) {
		pkt->reason = CT_INV_TCP_NOT_SYN;
		return 0;
	}
	return 1;
}

/**
 * tcp_track - apply one packet to a TCP entry (a new entry comes in state
 * NONE). Mirrors nf_conntrack_tcp_packet().
 */
static __always_inline int tcp_track(struct ct_entry *e, struct ct_pkt *pkt, int dir,
				     const struct ct_config *cfg, __u64 now)
{
	int cls, old = e->state, new;
	__u64 timeout, retrans, unack;
	int skip_window = 0;

	/* Class and next state go through memory on purpose: from registers
	 * the verifier would know them as constants on each path, and check
	 * everything after once per value instead of once. */
	pkt->tcp_cls = tcp_class(pkt->tcp_flags);
	asm volatile("" ::: "memory");
	cls = pkt->tcp_cls & 0x7;
	pkt->tcp_next = tcp_next_state(dir, cls, old);
	asm volatile("" ::: "memory");
	new = pkt->tcp_next & 0xf;
	if (old == CT_TCP_NONE)
		tcp_new_windows(e, pkt, new);

	switch (new) {
	case CT_TCP_SYN_SENT:
		if (old < CT_TCP_TIME_WAIT)
			break;
		/* SYN after a close or an abort by the same side: RFC 1122
		 * reopening. Anything else falls through to "ignored". */
		if (((e->td_flags[0] | e->td_flags[1]) & CT_TS_CLOSE_INIT) ||
		    (e->last_dir == dir && e->last_class == CT_CLASS_RST))
			return CT_TRACK_REOPEN;
		/* fallthrough */
	case CT_TCP_IGNORE:
		/* A SYN/ACK answering a SYN we ignored: client and server are
		 * in sync and we are not; resynchronise as a fresh handshake. */
		if (cls == CT_CLASS_SYNACK && e->last_class == CT_CLASS_SYN &&
		    e->last_dir != dir && pkt->ack_seq == e->last_end) {
			struct ct_tcp_side *opener = &e->side[e->last_dir & 1];

			old = CT_TCP_SYN_SENT;
			new = CT_TCP_SYN_RECV;
			opener->td_end = opener->td_maxend = e->last_end;
			opener->td_maxwin = e->last_win ? e->last_win : 1;
			e->td_scale[e->last_dir & 1] = e->last_opts >> 4;
			e->td_flags[e->last_dir & 1] = e->last_opts & (CT_TS_WINDOW_SCALE | CT_TS_SACK_PERM);
			tcp_side_reset(e, dir);
			break;
		}
		tcp_note_last(e, pkt, dir, cls);
		e->last_seq = pkt->seq;
		e->last_win = pkt->window;
		if (cls == CT_CLASS_SYN && dir == CT_DIR_ORIGINAL) {
			/* Keep the SYN's options for a resync by its SYN/ACK. The
			 * receiver may answer with an RFC 5961 challenge ACK,
			 * which must not close LAST_ACK. */
			e->last_opts = (pkt->tcp_opts & (CT_TS_WINDOW_SCALE | CT_TS_SACK_PERM)) |
				       ((pkt->tcp_opts & CT_TS_WINDOW_SCALE) ? pkt->wscale << 4 : 0);
			e->flags &= ~(CT_F_CHALLENGE_ACK | CT_F_SIMOPEN);
			if (old == CT_TCP_LAST_ACK)
				e->flags |= CT_F_CHALLENGE_ACK;
		}
		/* A possible challenge ACK answering the SYN. */
		if (old == CT_TCP_SYN_SENT && cls == CT_CLASS_ACK && dir == CT_DIR_REPLY)
			e->last_ack = pkt->ack_seq;
		return CT_TRACK_KEEP;
	case CT_TCP_INVALID:
		pkt->reason = CT_INV_TCP_STATE;
		return CT_TRACK_INVALID;
	case CT_TCP_TIME_WAIT:
		if (old == CT_TCP_LAST_ACK && cls == CT_CLASS_ACK && e->last_dir != dir &&
		    e->last_class == CT_CLASS_SYN && (e->flags & CT_F_CHALLENGE_ACK)) {
			e->flags &= ~CT_F_CHALLENGE_ACK;
			return CT_TRACK_KEEP;
		}
		break;
	case CT_TCP_SYN_SENT2:
		/* The table alone cannot finish a simultaneous open. */
		e->flags |= CT_F_SIMOPEN;
		break;
	case CT_TCP_SYN_RECV:
		if (dir == CT_DIR_REPLY && cls == CT_CLASS_ACK && (e->flags & CT_F_SIMOPEN))
			new = CT_TCP_ESTABLISHED;
		break;
	case CT_TCP_CLOSE:
		if (cls == CT_CLASS_RST) {
			int r = tcp_check_rst(e, pkt, dir, old, cfg);

			if (r == CT_RST_INVALID)
				return CT_TRACK_INVALID;
			if (r == CT_RST_KEEP_STATE)
				new = old;
			skip_window = r == CT_RST_SKIP_WINDOW;
		}
		break;
	}

	if (!skip_window) {
		int w;

		/* Through memory on purpose: the verifier forgets which of the
		 * window checks' many paths gave the verdict, so the rest of
		 * the tracker is checked once per verdict, not once per path. */
		pkt->win_verdict = tcp_in_window(e, pkt, dir, cls, cfg);
		asm volatile("" ::: "memory");
		w = pkt->win_verdict;

		if (w == CT_WIN_IGNORE)
			return CT_TRACK_KEEP;
		if (w == CT_WIN_INVALID) {
			tcp_handle_invalid(e, dir, cls, cfg, now);
			return CT_TRACK_INVALID;
		}
	}

	e->last_class = cls;
	e->last_dir = dir;
	e->state = new;
	if (old != new && new == CT_TCP_FIN_WAIT)
		e->td_flags[dir & 1] |= CT_TS_CLOSE_INIT;

	timeout = ct_timeout_ns(cfg, new);
	retrans = ct_timeout_ns(cfg, CT_CFG_TCP_TIMEOUT_MAX_RETRANS);
	unack = ct_timeout_ns(cfg, CT_CFG_TCP_TIMEOUT_UNACKNOWLEDGED);
	if (e->retrans >= cfg->value[CT_CFG_TCP_MAX_RETRANS] && timeout > retrans)
		timeout = retrans;
	else if (cls == CT_CLASS_RST)
		timeout = ct_timeout_ns(cfg, CT_CFG_TCP_TIMEOUT_CLOSE);
	else if (((e->td_flags[0] | e->td_flags[1]) & CT_TS_DATA_UNACK) && timeout > unack)
		timeout = unack;
	else if (e->last_win == 0 && timeout > retrans)
		timeout = retrans;

	if (!(e->flags & CT_F_SEEN_REPLY)) {
		/* Only a RST came back: no connection ever existed. */
		if (pkt->tcp_flags & TCPF_RST)
			return CT_TRACK_DELETE;
		/* A retransmitted SYN must not keep a dead entry alive. */
		if (cls == CT_CLASS_SYN && old == CT_TCP_SYN_SENT)
			return CT_TRACK_NOREFRESH;
		/* Picked up mid-stream and unanswered: no five-day timeout. */
		if (new == CT_TCP_ESTABLISHED && timeout > unack)
			timeout = unack;
	} else if (!(e->flags & CT_F_ASSURED) &&
		   (old == CT_TCP_SYN_RECV || old == CT_TCP_ESTABLISHED) &&
		   new == CT_TCP_ESTABLISHED) {
		/* The handshake completed, or a picked-up flow was answered. */
		e->flags |= CT_F_ASSURED;
	}
	ct_set_expiry(e, ct_deadline(now, timeout));
	return CT_TRACK_ACCEPT;
}

#endif /* CTBPF_TCP_H */
