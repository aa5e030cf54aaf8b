/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Packet parsing: Ethernet (802.1Q, QinQ), IPv4 (options), IPv6 (extension
 * headers), TCP, UDP, ICMP, ICMPv6, anything else as generic.
 *
 * Every helper has the same contract: it reads one header at the cursor,
 * checks every byte it touches against data_end (and against the length the
 * IP header announces), advances the cursor and returns 0, or records why
 * the packet is unusable in pkt->reason and returns -1. A packet that fails
 * parsing is INVALID and never creates an entry.
 */
#ifndef CTBPF_PARSE_H
#define CTBPF_PARSE_H

#define ETH_P_IP_BE    0x0008 /* htons(0x0800) */
#define ETH_P_IPV6_BE  0xDD86 /* htons(0x86DD) */
#define ETH_P_8021Q_BE 0x0081 /* htons(0x8100) */
#define ETH_P_8021AD_BE 0xA888 /* htons(0x88A8) */

#define IP_MF_BE     0x0020 /* htons(0x2000): more fragments */
#define IP_OFFSET_BE 0xFF1F /* htons(0x1FFF): fragment offset */

#define NEXTHDR_HOP      0
#define NEXTHDR_ROUTING  43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH     51
#define NEXTHDR_NONE     59
#define NEXTHDR_DEST     60

/* TCP flag bits in byte 13 of the header. */
#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_PSH 0x08
#define TCPF_ACK 0x10
#define TCPF_URG 0x20
#define TCPF_ECE 0x40
#define TCPF_CWR 0x80

/* What kind of packet the parser found. */
/* Where a packet sits in a fragmented datagram. */
enum ct_frag {
	CT_FRAG_NONE = 0,
	CT_FRAG_FIRST = 1,   /* offset 0, more to come: it carries the L4 header */
	CT_FRAG_LATER = 2,   /* no L4 header: untracked, judged as its first fragment was */
};

#define IP6_OFFSET_BE 0xF8FF /* htons(0xFFF8): IPv6 fragment offset */
#define IP6_MF_BE     0x0100 /* htons(0x0001): more fragments */

enum ct_pkt_kind {
	CT_KIND_FLOW = 0,       /* tracked by its tuple */
	CT_KIND_ICMP_ERROR = 1, /* ICMP/ICMPv6 error: related to the embedded flow or invalid */
	CT_KIND_UNTRACKED = 2,  /* non-first fragment, NDP/MLD: not tied to a flow */
	CT_KIND_NON_IP = 3,     /* not IPv4/IPv6: ignored */
	CT_KIND_INVALID = 4,    /* malformed: see reason */
};

/* One direction of a flow as seen on the wire. Addresses and ports in
 * network byte order. ICMP queries: the requester's port holds the query id
 * and the responder's its complement (never equal to it), so a request and
 * its reply form one flow while a request the other way, even with the
 * same id, forms another, as the kernel's ICMP tuples do. */
struct ct_tuple {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport;
	__u16 dport;
	__u16 icmp_query; /* request type << 8 | code, host order */
	__u8 proto;
	__u8 family;
};

struct ct_pkt {
	struct ct_tuple t;
	struct ct_tuple inner; /* ICMP errors: the embedded packet, as its sender sent it */
	__u32 seq;             /* TCP, host order */
	__u32 ack_seq;         /* TCP, host order */
	__u32 seg_len;         /* TCP payload + SYN + FIN, for seq + len */
	__u32 l3_len;          /* bytes counted for the flow */
	__u8 tcp_flags;
	__u8 kind;             /* enum ct_pkt_kind */
	__u8 reason;           /* enum ct_invalid_reason when kind is INVALID */
	__u8 icmp_reply;       /* ICMP query: the packet is a reply type */
	__u16 window;          /* TCP: the raw (unscaled) window, host order */
	__u8 wscale;           /* TCP SYN: the window scale option, capped at 14 */
	__u8 tcp_opts;         /* TCP: CT_TCPOPTS_PRESENT, CT_TS_WINDOW_SCALE, CT_TS_SACK_PERM */
	__u32 sack;            /* TCP: the highest SACK block edge, else ack_seq */
	__u8 win_verdict;      /* TCP: what tcp_in_window decided (see tcp_track) */
	__u8 tcp_cls;          /* TCP: enum ct_tcp_class (see tcp_track) */
	__u8 tcp_next;         /* TCP: the state the table gives (see tcp_track) */
	/* Fragments, raw from the header (IPv4 frag_off, or the IPv6 fragment
	 * header's), 0 for a whole datagram; read by ct_frag_of(). Kept raw on
	 * purpose: a constant here would split the verifier's states all
	 * through the tracker. */
	__u16 frag_off;
	__u32 frag_id;
};

struct ct_cursor {
	void *pos;
	void *end;   /* data_end */
	void *l3_end; /* end of the IP datagram as its header announces */
	int first_fragment; /* L4 lengths may exceed l3_end: they describe the reassembled datagram */
	void *data;  /* the frame's start, for offsets */
	void *ctx;   /* the program's context (xdp_md or __sk_buff), for the load-bytes helpers */
	int xdp;     /* which of the two ctx is: a constant in each program */
};

static __always_inline int parse_fail(struct ct_pkt *pkt, __u8 reason)
{
	pkt->kind = CT_KIND_INVALID;
	pkt->reason = reason;
	return -1;
}

/**
 * parse_eth - Ethernet header and up to CT_MAX_VLAN_DEPTH VLAN tags.
 * Returns the (network order) ethertype of the payload, or -1.
 */
static __always_inline int parse_eth(struct ct_cursor *c, struct ct_pkt *pkt, __u16 *proto)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > c->end)
		return parse_fail(pkt, CT_INV_TRUNC_L2);
	c->pos = eth + 1;
	*proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < CT_MAX_VLAN_DEPTH; i++) {
		struct vlan_hdr *vh = c->pos;

		if (*proto != ETH_P_8021Q_BE && *proto != ETH_P_8021AD_BE)
			return 0;
		if ((void *)(vh + 1) > c->end)
			return parse_fail(pkt, CT_INV_TRUNC_L2);
		*proto = vh->h_vlan_encapsulated_proto;
		c->pos = vh + 1;
	}
	if (*proto == ETH_P_8021Q_BE || *proto == ETH_P_8021AD_BE)
		return parse_fail(pkt, CT_INV_VLAN_DEPTH);
	return 0;
}

/* IPv4 option kinds that are one byte long; every other option carries its
 * length in its second byte. */
#ifndef IPOPT_END   /* linux/ip.h has them where the kernel headers come along */
#define IPOPT_END  0
#endif
#ifndef IPOPT_NOOP
#define IPOPT_NOOP 1
#endif

/* The IPv4 option space is at most 40 bytes (IHL 15). */
#define CT_IPV4_OPT_SPACE 40
#define CT_IPV4_OPT_SPACE_POW2 64

/* The option bytes, copied out of the packet so that the walk indexes a
 * buffer of known size: a power of two to mask the position with, and room
 * for a four-byte read at the last one. Bytes past the options stay 0 (END). */
struct ct_ipv4_opts {
	__u8 b[CT_IPV4_OPT_SPACE_POW2 + 4];
};

/* 0/1 flags computed without branches (a, b below 2^63): the verifier then
 * walks the option bytes on a single path. The empty asm hides each flag's
 * operands' ranges from clang, which would otherwise fold the arithmetic back
 * into compares and branches (BPF has no conditional move). */
#define ct_opaque(x) asm volatile("" : "+r"(x))

static __always_inline __u64 ct_lt(__u64 a, __u64 b)
{
	ct_opaque(a);
	ct_opaque(b);
	return (a - b) >> 63;
}

static __always_inline __u64 ct_is0(__u64 a)
{
	return ct_lt(a, 1);
}

/**
 * ct_ipv4_options_bad - walk the options as the kernel's ip_options_compile()
 * does before anything is delivered or forwarded: an option whose length
 * byte is missing, below 2 or runs past the header end makes a datagram the
 * IP layer drops, so it must never create an entry. END stops the walk;
 * what follows it is padding. The per-option content checks (pointer fields
 * of timestamp and route records) are left to the IP layer, which still
 * sees the packet.
 *
 * One step per option (four NOOPs in a row count as one), with no branch
 * but the loop's, so the verifier follows a single path through it: a
 * branching walk cost it hundreds of thousands of instructions.
 * CT_IPV4_OPT_STEPS (config.h) steps reach the end of any option space.
 */
static __always_inline int ct_ipv4_options_bad(const struct ct_ipv4_opts *o, __u64 len)
{
	__u64 off = 0, stop = 0, bad = 0;

	for (int i = 0; i < CT_IPV4_OPT_STEPS; i++) {
		__u64 k = off & (CT_IPV4_OPT_SPACE_POW2 - 1);
		__u64 t = o->b[k], l = o->b[k + 1];
		__u32 word;
		__u64 live, nop4, end, nop, multi, ok, broken;

		__builtin_memcpy(&word, &o->b[k], 4);
		live = ct_lt(off, len) & (stop ^ 1);
		nop4 = ct_is0(word ^ 0x01010101);
		end = ct_is0(t);
		nop = ct_is0(t ^ IPOPT_NOOP);
		multi = (end | nop) ^ 1;
		/* the length byte is there, at least 2, and within the space */
		ok = ct_lt(off + 1, len) & (ct_lt(l, 2) ^ 1) & (ct_lt(len - off, l) ^ 1);
		broken = multi & (ok ^ 1);
		bad |= live & broken;
		stop |= live & (end | broken);
		off += live * (nop4 * 4 + (nop4 ^ 1) * (nop + multi * l));
	}
	return bad;
}

/* Copies the option bytes (hlen - 20 of them) with one helper call, not a
 * loop of bounds checks: the loop's exits were as many verifier states,
 * each walking the options again. */
static __always_inline int ipv4_options_ok(const struct ct_cursor *c, const struct iphdr *iph,
					   __u32 hlen)
{
	struct ct_ipv4_opts o = {};
	__u32 off = (const void *)(iph + 1) - c->data;
	__u64 n = hlen - sizeof(*iph);
	long err;

	/* Unlink n from hlen (the verifier would narrow hlen by every use of
	 * n) and give the helper a size it can prove fits the buffer. */
	ct_opaque(n);
	n = ((n - 1) & (CT_IPV4_OPT_SPACE_POW2 - 1)) + 1;
	if (c->xdp)
		err = bpf_xdp_load_bytes(c->ctx, off, &o, n);
	else
		err = bpf_skb_load_bytes(c->ctx, off, &o, n);
	/* The header is within the frame (checked by the caller). */
	if (err)
		return 0;
	return !ct_ipv4_options_bad(&o, n);
}

/**
 * parse_ipv4 - IPv4 header with options. Sets addresses, protocol, l3_len
 * and the datagram end; a non-first fragment is marked UNTRACKED.
 */
static __always_inline int parse_ipv4(struct ct_cursor *c, struct ct_pkt *pkt)
{
	struct iphdr *iph = c->pos;
	__u32 hlen, tot_len;

	if ((void *)(iph + 1) > c->end)
		return parse_fail(pkt, CT_INV_TRUNC_IP);
	if (iph->version != 4 || iph->ihl < 5)
		return parse_fail(pkt, CT_INV_IP_HDR);
	hlen = iph->ihl * 4;
	tot_len = bpf_ntohs(iph->tot_len);
	if (c->pos + hlen > c->end)
		return parse_fail(pkt, CT_INV_TRUNC_IP);
	/* The frame may carry Ethernet padding after the datagram, never less
	 * than the datagram. */
	if (tot_len < hlen || c->pos + tot_len > c->end)
		return parse_fail(pkt, CT_INV_IP_LEN);
	if (hlen > sizeof(*iph) && !ipv4_options_ok(c, iph, hlen))
		return parse_fail(pkt, CT_INV_IP_OPTS);

	pkt->t.family = CT_FAMILY_IPV4;
	pkt->t.proto = iph->protocol;
	pkt->t.saddr[0] = iph->saddr;
	pkt->t.daddr[0] = iph->daddr;
	pkt->l3_len = tot_len;
	c->l3_end = c->pos + tot_len;
	c->pos += hlen;

	/* No reassembly happens before XDP: a fragment other than the first
	 * carries no L4 header and cannot be tied to a flow. The first fragment
	 * is tracked by the L4 header it carries. */
	pkt->frag_off = iph->frag_off;
	pkt->frag_id = iph->id;
	if (iph->frag_off & IP_OFFSET_BE)
		pkt->kind = CT_KIND_UNTRACKED;
	else if (iph->frag_off & IP_MF_BE)
		c->first_fragment = 1;
	return 0;
}

/**
 * parse_ipv6 - IPv6 header and the extension headers conntrack skips
 * (hop-by-hop, routing, destination options, fragment, AH).
 */
static __always_inline int parse_ipv6(struct ct_cursor *c, struct ct_pkt *pkt)
{
	struct ipv6hdr *ip6h = c->pos;
	__u32 payload_len;
	__u8 nexthdr;

	if ((void *)(ip6h + 1) > c->end)
		return parse_fail(pkt, CT_INV_TRUNC_IP);
	if (ip6h->version != 6)
		return parse_fail(pkt, CT_INV_IP_HDR);
	payload_len = bpf_ntohs(ip6h->payload_len);
	/* payload_len 0 would be a jumbogram, which never fits a frame here. */
	if (payload_len == 0 || (void *)(ip6h + 1) + payload_len > c->end)
		return parse_fail(pkt, CT_INV_IP_LEN);

	pkt->t.family = CT_FAMILY_IPV6;
	__builtin_memcpy(pkt->t.saddr, &ip6h->saddr, 16);
	__builtin_memcpy(pkt->t.daddr, &ip6h->daddr, 16);
	pkt->l3_len = sizeof(*ip6h) + payload_len;
	c->l3_end = (void *)(ip6h + 1) + payload_len;
	c->pos = ip6h + 1;
	nexthdr = ip6h->nexthdr;

	/* One pass per extension header, and one more to reach the L4 header. */
#pragma unroll
	for (int i = 0; i < CT_MAX_IP6_EXTHDRS + 1; i++) {
		struct ipv6_opt_hdr *oh = c->pos;
		__u32 len;

		/* "No next header": no transport to track, INVALID for the kernel too. */
		if (nexthdr == NEXTHDR_NONE)
			return parse_fail(pkt, CT_INV_IP6_EXTHDR);
		if (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING &&
		    nexthdr != NEXTHDR_DEST && nexthdr != NEXTHDR_FRAGMENT &&
		    nexthdr != NEXTHDR_AUTH) {
			pkt->t.proto = nexthdr;
			return 0;
		}
		if (i == CT_MAX_IP6_EXTHDRS)
			break;
		if ((void *)(oh + 1) > c->end || (void *)(oh + 1) > c->l3_end)
			return parse_fail(pkt, CT_INV_IP6_EXTHDR);
		if (nexthdr == NEXTHDR_FRAGMENT) {
			struct frag_hdr *fh = c->pos;

			if ((void *)(fh + 1) > c->end || (void *)(fh + 1) > c->l3_end)
				return parse_fail(pkt, CT_INV_IP6_EXTHDR);
			/* Same rule as IPv4: only the first fragment has the L4 header. */
			pkt->frag_id = fh->identification;
			pkt->frag_off = fh->frag_off;
			if (fh->frag_off & bpf_htons(0xFFF8)) {
				pkt->t.proto = fh->nexthdr;
				pkt->kind = CT_KIND_UNTRACKED;
				return 0;
			}
			c->first_fragment = 1;
			len = sizeof(*fh);
		} else if (nexthdr == NEXTHDR_AUTH) {
			len = (oh->hdrlen + 2) * 4;
		} else {
			len = (oh->hdrlen + 1) * 8;
		}
		nexthdr = oh->nexthdr;
		c->pos += len;
		if (c->pos > c->l3_end)
			return parse_fail(pkt, CT_INV_IP6_EXTHDR);
	}
	return parse_fail(pkt, CT_INV_IP6_EXTHDR);
}

/* The flag sets the kernel's TCP tracker accepts (tcp_valid_flags), once
 * PSH, ECE and CWR are masked off. Bit n of the mask stands for flags == n. */
#define CT_TCP_VALID_FLAGS_MASK                                             \
	((1ULL << TCPF_SYN) | (1ULL << (TCPF_SYN | TCPF_URG)) |              \
	 (1ULL << (TCPF_SYN | TCPF_ACK)) | (1ULL << TCPF_RST) |              \
	 (1ULL << (TCPF_RST | TCPF_ACK)) | (1ULL << (TCPF_FIN | TCPF_ACK)) | \
	 (1ULL << (TCPF_FIN | TCPF_ACK | TCPF_URG)) | (1ULL << TCPF_ACK) |    \
	 (1ULL << (TCPF_ACK | TCPF_URG)))

static __always_inline int tcp_flags_are_valid(__u8 flags)
{
	flags &= ~(TCPF_PSH | TCPF_ECE | TCPF_CWR);
	return (CT_TCP_VALID_FLAGS_MASK >> flags) & 1;
}

#include "tcpopt.h"

static __always_inline int parse_tcp(struct ct_cursor *c, struct ct_pkt *pkt)
{
	struct tcphdr *th = c->pos;
	__u32 doff;

	if ((void *)(th + 1) > c->end || (void *)(th + 1) > c->l3_end)
		return parse_fail(pkt, CT_INV_TRUNC_L4);
	doff = th->doff * 4;
	if (doff < sizeof(*th) || c->pos + doff > c->l3_end)
		return parse_fail(pkt, CT_INV_TCP_DOFF);
	pkt->tcp_flags = ((__u8 *)th)[13];
	if (!tcp_flags_are_valid(pkt->tcp_flags))
		return parse_fail(pkt, CT_INV_TCP_FLAGS);

	pkt->t.sport = th->source;
	pkt->t.dport = th->dest;
	pkt->seq = bpf_ntohl(th->seq);
	pkt->ack_seq = bpf_ntohl(th->ack_seq);
	pkt->window = bpf_ntohs(th->window);
	pkt->sack = pkt->ack_seq;
	pkt->seg_len = (__u32)(c->l3_end - c->pos) - doff +
		       !!(pkt->tcp_flags & TCPF_SYN) + !!(pkt->tcp_flags & TCPF_FIN);
	if (doff > sizeof(*th))
		parse_tcp_options(c, th, doff, pkt);
	return 0;
}

static __always_inline int parse_udp(struct ct_cursor *c, struct ct_pkt *pkt)
{
	struct udphdr *uh = c->pos;
	__u32 ulen;

	if ((void *)(uh + 1) > c->end || (void *)(uh + 1) > c->l3_end)
		return parse_fail(pkt, CT_INV_TRUNC_L4);
	ulen = bpf_ntohs(uh->len);
	if (ulen < sizeof(*uh) || (!c->first_fragment && c->pos + ulen > c->l3_end))
		return parse_fail(pkt, CT_INV_UDP_LEN);
	pkt->t.sport = uh->source;
	pkt->t.dport = uh->dest;
	return 0;
}

/* ICMP query types: request -> reply type, or 0 when not a request. */
static __always_inline __u8 icmp4_reply_of(__u8 type)
{
	switch (type) {
	case 8:  return 0;   /* echo -> echo reply (0 is a valid reply type) */
	case 13: return 14;  /* timestamp */
	case 15: return 16;  /* information */
	case 17: return 18;  /* address mask */
	}
	return 0xff;
}

static __always_inline __u8 icmp4_request_of(__u8 type)
{
	switch (type) {
	case 0:  return 8;
	case 14: return 13;
	case 16: return 15;
	case 18: return 17;
	}
	return 0xff;
}

static __always_inline __u8 icmp6_reply_of(__u8 type)
{
	switch (type) {
	case 128: return 129; /* echo */
	case 139: return 140; /* node information */
	}
	return 0xff;
}

static __always_inline __u8 icmp6_request_of(__u8 type)
{
	switch (type) {
	case 129: return 128;
	case 140: return 139;
	}
	return 0xff;
}

/**
 * icmp_query_tuple - fill the ports of an ICMP query tuple.
 * Returns 0 for a request, 1 for a reply, -1 for any other type.
 */
static __always_inline int icmp_query_tuple(struct ct_tuple *t, __u8 type, __u8 code,
					    __u16 id, int v6)
{
	__u8 req;

	if ((v6 ? icmp6_reply_of(type) : icmp4_reply_of(type)) != 0xff) {
		t->sport = id;
		t->dport = ~id;
		t->icmp_query = ((__u16)type << 8) | code;
		return 0;
	}
	req = v6 ? icmp6_request_of(type) : icmp4_request_of(type);
	if (req == 0xff)
		return -1;
	t->sport = ~id;
	t->dport = id;
	t->icmp_query = ((__u16)req << 8) | code;
	return 1;
}

static __always_inline int icmp4_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* ICMPv6 types that never belong to a connection (kernel: noct_valid_new):
 * MLD and neighbour discovery. */
static __always_inline int icmp6_is_untracked(__u8 type)
{
	return (type >= 130 && type <= 136) || type == 143;
}

/**
 * parse_inner - the packet embedded in an ICMP error: its IP header and the
 * start of its L4 header (ports, or an ICMP query's type, code and id).
 */
static __always_inline int parse_inner(struct ct_cursor *c, struct ct_pkt *pkt, int v6)
{
	struct ct_tuple *in = &pkt->inner;
	__u8 *l4;

	if (!v6) {
		struct iphdr *iph = c->pos;

		if ((void *)(iph + 1) > c->end || (void *)(iph + 1) > c->l3_end)
			return parse_fail(pkt, CT_INV_ICMP_INNER);
		if (iph->version != 4 || iph->ihl < 5)
			return parse_fail(pkt, CT_INV_ICMP_INNER);
		in->family = CT_FAMILY_IPV4;
		in->proto = iph->protocol;
		in->saddr[0] = iph->saddr;
		in->daddr[0] = iph->daddr;
		c->pos += iph->ihl * 4;
	} else {
		struct ipv6hdr *ip6h = c->pos;

		if ((void *)(ip6h + 1) > c->end || (void *)(ip6h + 1) > c->l3_end)
			return parse_fail(pkt, CT_INV_ICMP_INNER);
		in->family = CT_FAMILY_IPV6;
		in->proto = ip6h->nexthdr;
		__builtin_memcpy(in->saddr, &ip6h->saddr, 16);
		__builtin_memcpy(in->daddr, &ip6h->daddr, 16);
		c->pos = ip6h + 1;
	}

	l4 = c->pos;
	if (in->proto == IPPROTO_TCP || in->proto == IPPROTO_UDP) {
		/* The ports are all the tuple needs, as for the kernel. */
		if ((void *)(l4 + 4) > c->end || (void *)(l4 + 4) > c->l3_end)
			return parse_fail(pkt, CT_INV_ICMP_INNER);
		in->sport = *(__u16 *)l4;
		in->dport = *(__u16 *)(l4 + 2);
	} else if ((!v6 && in->proto == IPPROTO_ICMP) ||
		   (v6 && in->proto == IPPROTO_ICMPV6)) {
		if ((void *)(l4 + 8) > c->end || (void *)(l4 + 8) > c->l3_end)
			return parse_fail(pkt, CT_INV_ICMP_INNER);
		/* An error about an error, or about a type that is no query,
		 * relates to nothing. */
		if (icmp_query_tuple(in, l4[0], l4[1], *(__u16 *)(l4 + 4), v6) < 0)
			return parse_fail(pkt, CT_INV_ICMP_INNER);
	}
	return 0;
}

static __always_inline int parse_icmp(struct ct_cursor *c, struct ct_pkt *pkt, int v6)
{
	__u8 *ih = c->pos;
	__u8 type, code;
	int ret;

	if ((void *)(ih + 8) > c->end || (void *)(ih + 8) > c->l3_end)
		return parse_fail(pkt, CT_INV_TRUNC_L4);
	type = ih[0];
	code = ih[1];

	if (v6 ? type < 128 : icmp4_is_error(type)) {
		pkt->kind = CT_KIND_ICMP_ERROR;
		c->pos = ih + 8;
		return parse_inner(c, pkt, v6);
	}
	if (v6 && icmp6_is_untracked(type)) {
		pkt->kind = CT_KIND_UNTRACKED;
		return 0;
	}
	ret = icmp_query_tuple(&pkt->t, type, code, *(__u16 *)(ih + 4), v6);
	if (ret < 0)
		return parse_fail(pkt, CT_INV_ICMP_TYPE);
	pkt->icmp_reply = ret;
	return 0;
}

/* enum ct_frag of a parsed packet. An IPv6 atomic fragment (offset 0, no
 * more to come) is a whole datagram. */
static __always_inline int ct_frag_of(const struct ct_pkt *pkt)
{
	__u16 off = pkt->frag_off;

	if (pkt->t.family == CT_FAMILY_IPV4) {
		if (off & IP_OFFSET_BE)
			return CT_FRAG_LATER;
		return (off & IP_MF_BE) ? CT_FRAG_FIRST : CT_FRAG_NONE;
	}
	if (off & IP6_OFFSET_BE)
		return CT_FRAG_LATER;
	return (off & IP6_MF_BE) ? CT_FRAG_FIRST : CT_FRAG_NONE;
}

/**
 * parse_packet - parse a frame into pkt. Returns 0 when pkt->kind says what
 * to do with it, -1 when it is INVALID (pkt->reason says why).
 */
static __always_inline int parse_packet(void *ctx, int xdp, void *data, void *data_end,
					struct ct_pkt *pkt)
{
	struct ct_cursor c = { .pos = data, .end = data_end, .l3_end = data_end,
			       .data = data, .ctx = ctx, .xdp = xdp };
	__u16 eth_proto;
	int v6;

	if (parse_eth(&c, pkt, &eth_proto))
		return -1;
	if (eth_proto == ETH_P_IP_BE) {
		if (parse_ipv4(&c, pkt))
			return -1;
		v6 = 0;
	} else if (eth_proto == ETH_P_IPV6_BE) {
		if (parse_ipv6(&c, pkt))
			return -1;
		v6 = 1;
	} else {
		pkt->kind = CT_KIND_NON_IP;
		return 0;
	}
	if (pkt->kind == CT_KIND_UNTRACKED)
		return 0;

	switch (pkt->t.proto) {
	case IPPROTO_TCP:
		return parse_tcp(&c, pkt);
	case IPPROTO_UDP:
		return parse_udp(&c, pkt);
	case IPPROTO_ICMP:
		return v6 ? 0 : parse_icmp(&c, pkt, 0);
	case IPPROTO_ICMPV6:
		return v6 ? parse_icmp(&c, pkt, 1) : 0;
	}
	return 0; /* generic: addresses and protocol only */
}

#endif /* CTBPF_PARSE_H */
