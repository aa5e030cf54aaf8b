/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP options, as the kernel's conntrack reads them (tcp_options() and
 * tcp_sack() in nf_conntrack_proto_tcp.c): the window scale and
 * SACK-permitted a SYN announces, and the highest right edge of the SACK
 * blocks an ACK carries. Included by parse.h.
 */
#ifndef CTBPF_TCPOPT_H
#define CTBPF_TCPOPT_H

#define CT_TCPOPT_EOL 0
#define CT_TCPOPT_NOP 1
#define CT_TCPOPT_WINDOW 3       /* kind 3, length 3: the shift count */
#define CT_TCPOPT_SACK_PERM 4    /* kind 4, length 2 */
#define CT_TCPOPT_SACK 5         /* kind 5, length 2 + 8 per block */
#define CT_TCP_MAX_WSCALE 14     /* RFC 7323: larger shifts count as 14 */

/* What Linux puts in every segment of a connection with timestamps: NOP,
 * NOP, TIMESTAMP (kind 8, length 10). The kernel skips the walk for it. */
#define CT_TCPOPT_TSTAMP_ALIGNED 0x0101080a
#define CT_TCPOLEN_TSTAMP_ALIGNED 12

/* ct_pkt.tcp_opts bit: the segment had options at all (a SYN without any
 * leaves its sender's scale and flags as they were, as the kernel does). */
#define CT_TCPOPTS_PRESENT 0x80

/* The option bytes, copied out of the packet with one helper call so that
 * the walk indexes a buffer of known size (see struct ct_ipv4_opts). */
struct ct_tcp_opts {
	__u8 b[64 + 8];
};

/* Sequence order (the kernel's after(a, b)), as a 0/1 without a branch. */
static __always_inline __u64 ct_seq_after01(__u32 a, __u32 b)
{
	__u32 d = b - a;

	ct_opaque(d);
	return (d >> 31) & 1;
}

/**
 * tcp_options_walk - one step per option (four NOPs in a row as one), with
 * no branch but the loop's, so the verifier follows a single path through
 * it, as ct_ipv4_options_bad() does. The walk stops where the kernel's
 * stops: END, a length byte missing, below 2 or past the option space.
 * CT_TCP_OPT_STEPS (config.h) steps reach the end of any option space.
 */
static __always_inline void tcp_options_walk(const struct ct_tcp_opts *o, __u64 len,
					     struct ct_pkt *pkt)
{
	__u64 off = 0, stop = 0, ws_seen = 0, sp_seen = 0, wscale = 0;
	__u64 sack_found = 0, sack_off = 0, sack_n = 0;
	__u32 sack = pkt->ack_seq;

	for (int i = 0; i < CT_TCP_OPT_STEPS; i++) {
		/* One branch, after the steps a usual SYN needs (Linux sends
		 * five options): most walks end there, the rest go on to the
		 * end of any option space. */
		if (i == CT_TCP_OPT_FAST_STEPS && (stop | (ct_lt(off, len) ^ 1)))
			break;
		__u64 k = off & 63;
		__u64 t = o->b[k], l = o->b[k + 1], v = o->b[k + 2];
		__u32 word;
		__u64 live, nop4, end, nop, multi, ok, m, ws, sp, sk;

		__builtin_memcpy(&word, &o->b[k], 4);
		live = ct_lt(off, len) & (stop ^ 1);
		nop4 = ct_is0(word ^ 0x01010101);
		end = ct_is0(t);
		nop = ct_is0(t ^ CT_TCPOPT_NOP);
		multi = (end | nop) ^ 1;
		ok = ct_lt(off + 1, len) & (ct_lt(l, 2) ^ 1) & (ct_lt(len - off, l) ^ 1);
		stop |= live & (end | (multi & (ok ^ 1)));
		m = live & multi & ok;
		ws = m & ct_is0(t ^ CT_TCPOPT_WINDOW) & ct_is0(l ^ 3);
		sp = m & ct_is0(t ^ CT_TCPOPT_SACK_PERM) & ct_is0(l ^ 2);
		/* the first well-formed SACK option: 2 + 8n bytes, n >= 1 */
		sk = m & ct_is0(t ^ CT_TCPOPT_SACK) & (ct_lt(l, 10) ^ 1) & ct_is0((l - 2) & 7) &
		     (sack_found ^ 1);
		/* a later window option overrides an earlier one, as in the kernel */
		wscale = wscale * (ws ^ 1) + v * ws;
		ws_seen |= ws;
		sp_seen |= sp;
		sack_off = sack_off * (sk ^ 1) + (k + 2) * sk;
		sack_n = sack_n * (sk ^ 1) + ((l - 2) >> 3) * sk;
		sack_found |= sk;
		off += live * (nop4 * 4 + (nop4 ^ 1) * (nop + multi * l));
	}
	/* The highest right edge of the SACK blocks (at most 4 fit). */
	for (int b = 0; b < 4; b++) {
		__u64 at = (sack_off + 8 * b + 4) & 63;
		__u32 edge;
		__u64 take;

		__builtin_memcpy(&edge, &o->b[at], 4);
		edge = bpf_ntohl(edge);
		take = ct_lt(b, sack_n) & ct_seq_after01(edge, sack);
		sack ^= (sack ^ edge) & (__u32)(0 - take);
	}
	pkt->sack = sack;
	wscale = wscale * ct_lt(wscale, CT_TCP_MAX_WSCALE + 1) +
		 CT_TCP_MAX_WSCALE * (ct_lt(wscale, CT_TCP_MAX_WSCALE + 1) ^ 1);
	pkt->wscale = wscale;
	pkt->tcp_opts = CT_TCPOPTS_PRESENT | (ws_seen * CT_TS_WINDOW_SCALE) |
			(sp_seen * CT_TS_SACK_PERM);
}

/* What Linux puts in a SYN and a SYN/ACK with timestamps on: MSS,
 * SACK_PERM, TIMESTAMP, NOP, WINDOW (02 04 m m 04 02 08 0a t*8 01 03 03 s).
 * The walk would read them as: SACK permitted, scale s, no SACK block. */
#define CT_TCPOLEN_LINUX_SYN 20

/* 1 when the 20 option bytes at b are Linux's SYN options, which are then
 * read as the walk reads them: one compare for the nine fixed bytes. */
static __always_inline int tcp_options_linux_syn(const __u8 *b, struct ct_pkt *pkt)
{
	__u64 ws = b[19];

	if ((b[0] ^ 2) | (b[1] ^ 4) | (b[4] ^ CT_TCPOPT_SACK_PERM) | (b[5] ^ 2) | (b[6] ^ 8) |
	    (b[7] ^ 10) | (b[16] ^ CT_TCPOPT_NOP) | (b[17] ^ CT_TCPOPT_WINDOW) | (b[18] ^ 3))
		return 0;
	pkt->wscale = ws > CT_TCP_MAX_WSCALE ? CT_TCP_MAX_WSCALE : ws;
	pkt->tcp_opts = CT_TCPOPTS_PRESENT | CT_TS_WINDOW_SCALE | CT_TS_SACK_PERM;
	return 1;
}

/**
 * parse_tcp_options - the options of a segment whose header (doff bytes,
 * more than 20) lies within the datagram. A segment with only the aligned
 * timestamp is not walked: that is every data segment of a Linux
 * connection, and it carries neither SACK blocks nor SYN options. Nor is a
 * SYN with Linux's options (the walk costs a new flow about 100 ns).
 */
static __always_inline void parse_tcp_options(const struct ct_cursor *c,
					      const struct tcphdr *th, __u32 doff,
					      struct ct_pkt *pkt)
{
	struct ct_tcp_opts o = {};
	const __u32 *first = (const void *)(th + 1);
	__u32 off = (const void *)(th + 1) - c->data;
	__u64 n = doff - sizeof(*th);
	long err;

	pkt->tcp_opts = CT_TCPOPTS_PRESENT;
	if (!(pkt->tcp_flags & TCPF_SYN) && n == CT_TCPOLEN_TSTAMP_ALIGNED &&
	    (void *)(first + 1) <= c->end && *first == bpf_htonl(CT_TCPOPT_TSTAMP_ALIGNED))
		return;
	/* Every SYN of a Linux peer: read in place, no copy and no walk. */
	if ((pkt->tcp_flags & TCPF_SYN) && n == CT_TCPOLEN_LINUX_SYN &&
	    (const void *)first + CT_TCPOLEN_LINUX_SYN <= c->end &&
	    tcp_options_linux_syn((const __u8 *)first, pkt))
		return;
	/* Unlink n from doff and give the helper a size that fits the buffer. */
	ct_opaque(n);
	n = ((n - 1) & 63) + 1;
	if (c->xdp)
		err = bpf_xdp_load_bytes(c->ctx, off, &o, n);
	else
		err = bpf_skb_load_bytes(c->ctx, off, &o, n);
	if (err)
		return;
	tcp_options_walk(&o, n, pkt);
}

#endif /* CTBPF_TCPOPT_H */
