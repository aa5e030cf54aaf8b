/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ctbpf ABI: every struct, enum and index that the datapath shares with the
 * Python control plane. This file is the single source of truth:
 * ctbpf/abi.py parses it at import time, and tests/unit/test_abi.py checks the
 * parsed layout against the one clang gives when BCC compiles the programs.
 *
 * Keep to the restricted syntax that parser understands:
 *   #define NAME <integer>
 *   enum name { NAME = <integer>, ... };          (every value explicit)
 *   struct name { <__u8|__u16|__u32|__u64|struct earlier_struct> field[N]; ... };
 * Retired struct fields are renamed `retired_*` and kept, never reused, so
 * maps pinned by an older build stay readable; any layout change bumps
 * CT_LAYOUT_VERSION.
 */
#ifndef CTBPF_ABI_H
#define CTBPF_ABI_H

#define CT_LAYOUT_VERSION 4

/* Slots of the program arrays through which the entry programs reach their
 * tracker stages (bpf/scratch.h): this build's are the four from
 * CT_JUMP_BASE, so that two layouts' programs never call each other. */
#define CT_JUMP_SLOTS 16
#define CT_JUMP_BASE 0       /* (CT_LAYOUT_VERSION % 4) * 4, checked in scratch.h */

/* The unit of ct_entry's times: ticks of 2^27 ns (134 ms) of CLOCK_MONOTONIC.
 * Timeouts are whole seconds, so a tick is precision to spare, and a u32 of
 * ticks lasts 18 years of uptime. */
#define CT_TICK_SHIFT 27

/* Address families stored in ct_key.family. */
#define CT_FAMILY_IPV4 4
#define CT_FAMILY_IPV6 6

/* TCP states, numbered as the kernel's enum tcp_conntrack so that
 * `conntrack -L` users see the same names in the same order. */
enum ct_tcp_state {
	CT_TCP_NONE = 0,
	CT_TCP_SYN_SENT = 1,
	CT_TCP_SYN_RECV = 2,
	CT_TCP_ESTABLISHED = 3,
	CT_TCP_FIN_WAIT = 4,
	CT_TCP_CLOSE_WAIT = 5,
	CT_TCP_LAST_ACK = 6,
	CT_TCP_TIME_WAIT = 7,
	CT_TCP_CLOSE = 8,
	CT_TCP_SYN_SENT2 = 9,
	/* Pseudo-states used only as transition table results. */
	CT_TCP_INVALID = 10,
	CT_TCP_IGNORE = 11,
};

/* TCP packet classes, by the kernel's priority RST > SYN > FIN > ACK > none. */
enum ct_tcp_class {
	CT_CLASS_SYN = 0,
	CT_CLASS_SYNACK = 1,
	CT_CLASS_FIN = 2,
	CT_CLASS_ACK = 3,
	CT_CLASS_RST = 4,
	CT_CLASS_NONE = 5,
};

/* Direction of a packet relative to the flow's opener. */
enum ct_dir {
	CT_DIR_ORIGINAL = 0,
	CT_DIR_REPLY = 1,
};

/* User-land state of a packet, as `ct state` in nft / -m state in iptables.
 * UNTRACKED is for packets that cannot be tied to a flow at all (non-first
 * IP fragments), like the kernel's `ct state untracked`. */
enum ct_pkt_state {
	CT_PKT_NEW = 0,
	CT_PKT_ESTABLISHED = 1,
	CT_PKT_RELATED = 2,
	CT_PKT_INVALID = 3,
	CT_PKT_UNTRACKED = 4,
};

/* Bits of ct_entry.flags. */
enum ct_entry_flag {
	CT_F_SEEN_REPLY = 1,     /* a reply-direction packet was accepted: clears [UNREPLIED] */
	CT_F_ASSURED = 2,        /* [ASSURED]; the entry lives in ct_assured */
	CT_F_ORIG_IS_HI = 4,     /* the opener is the key's hi side */
	CT_F_CLOSE_INIT_V2 = 8,  /* layouts 1 and 2 only: CT_TS_CLOSE_INIT now, per side */
	CT_F_SIMOPEN = 16,       /* SYN_SENT2 was seen: simultaneous open */
	CT_F_CHALLENGE_ACK = 32, /* a SYN was ignored in LAST_ACK: expect an RFC 5961 challenge ACK */
	CT_F_PICKED_UP = 64,     /* created mid-stream by tcp_loose */
	CT_F_ACCT = 128,         /* made while acct was on: its counters live in ct_acct */
};

/* Why a packet was INVALID (or never reached the tracker). */
enum ct_invalid_reason {
	CT_INV_TRUNC_L2 = 0,      /* Ethernet or VLAN header truncated */
	CT_INV_VLAN_DEPTH = 1,    /* more VLAN tags than CT_MAX_VLAN_DEPTH */
	CT_INV_TRUNC_IP = 2,      /* IPv4/IPv6 fixed header truncated */
	CT_INV_IP_HDR = 3,        /* IPv4 IHL < 5 or version mismatch */
	CT_INV_IP_LEN = 4,        /* IP total/payload length lies about the frame */
	CT_INV_IP6_EXTHDR = 5,    /* IPv6 extension header chain truncated, too long, or with no next header */
	CT_INV_TRUNC_L4 = 6,      /* TCP/UDP/ICMP header truncated */
	CT_INV_TCP_DOFF = 7,      /* TCP data offset < 5 or beyond the packet */
	CT_INV_TCP_FLAGS = 8,     /* impossible TCP flag combination */
	CT_INV_TCP_STATE = 9,     /* transition table says invalid */
	CT_INV_TCP_NOT_SYN = 10,  /* new flow without SYN and tcp_loose = 0 */
	CT_INV_UDP_LEN = 11,      /* UDP length field lies */
	CT_INV_ICMP_TYPE = 12,    /* ICMP type that cannot start a flow, or unknown */
	CT_INV_ICMP_INNER = 13,   /* ICMP error whose embedded header is unusable */
	CT_INV_ICMP_NO_FLOW = 14, /* ICMP error for a flow we do not track */
	CT_INV_ICMP_SPOOF = 15,   /* ICMP error whose outer destination is not the flow's sender */
	CT_INV_IP_OPTS = 16,      /* IPv4 option whose length is missing, below 2 or past the header end */
	CT_INV_TCP_SEQ_OVER = 17, /* TCP: data beyond what the receiver's window allows */
	CT_INV_TCP_ACK_OVER = 18, /* TCP: (S)ACK of data the other side never sent */
	CT_INV_TCP_RST = 19,      /* TCP: RST whose sequence number is below the receiver's ack */
	CT_INV_TCP_SYNACK_ACK = 20, /* TCP: SYN/ACK acking a sequence number the SYN did not end at */
	CT_INV_REASON_MAX = 32,   /* room for the window checks' reasons: ct_stats has 32 slots */
};

/* Per-CPU counters (ct_stats). Invalid reasons follow at
 * CT_STAT_INVALID_BASE + enum ct_invalid_reason. */
enum ct_stat {
	CT_STAT_PKT_NEW = 0,        /* packets per user-land state, in ct_pkt_state order */
	CT_STAT_PKT_ESTABLISHED = 1,
	CT_STAT_PKT_RELATED = 2,
	CT_STAT_PKT_INVALID = 3,
	CT_STAT_PKT_UNTRACKED = 4,
	CT_STAT_NON_IP = 5,         /* frames that are not IPv4/IPv6: passed, not tracked */
	CT_STAT_FOUND = 6,          /* lookups that found a live entry */
	CT_STAT_INSERT = 7,         /* entries created */
	CT_STAT_INSERT_FAILED = 8,  /* entries that could not be created */
	CT_STAT_PROMOTE = 9,        /* entries moved to ct_assured */
	CT_STAT_EXPIRED_SEEN = 10,  /* expired entries met on lookup and replaced */
	CT_STAT_DELETE = 11,        /* entries removed by the datapath (RST as only reply, reopen) */
	CT_STAT_ICMP_ERROR = 12,    /* ICMP errors examined (related or not) */
	CT_STAT_FRAGMENT = 13,      /* non-first IP fragments (untracked) */
	CT_STAT_IGNORED = 14,       /* TCP packets the table ignores (state unchanged) */
	CT_STAT_SWEPT = 15,         /* expired entries deleted by the sweeper */
	CT_STAT_EVENT_LOST = 16,    /* events the ring buffer had no room for */
	CT_STAT_DEMOTE = 17,        /* ASSURED entries moved back to ct_new as they close */
	CT_STAT_USER_DELETE = 18,   /* entries deleted by `ctbpf delete` / `flush` */
	CT_STAT_TIMER_LOST = 19,    /* expiry registrations ct_timers had no room for */
	CT_STAT_DROP = 20,          /* packets dropped by the policy (enforce mode) */
	CT_STAT_DROP_TABLE_FULL = 21, /* NEW packets dropped: no room for their entry (enforce) */
	CT_STAT_NO_TRACKER = 22,    /* frames passed untracked: the tracker program's slot was empty */
	CT_STAT_ACCT_LOST = 23,     /* flows made while acct was on that ct_acct had no room for */
	CT_STAT_INVALID_BASE = 32,
	CT_STAT_MAX = 64,         /* CT_STAT_INVALID_BASE + CT_INV_REASON_MAX */
};

/* Indices of ct_config (u64 each). TCP timeouts sit at their state's number;
 * all timeouts are in seconds. */
enum ct_cfg {
	CT_CFG_TCP_TIMEOUT_NONE = 0,
	CT_CFG_TCP_TIMEOUT_SYN_SENT = 1,
	CT_CFG_TCP_TIMEOUT_SYN_RECV = 2,
	CT_CFG_TCP_TIMEOUT_ESTABLISHED = 3,
	CT_CFG_TCP_TIMEOUT_FIN_WAIT = 4,
	CT_CFG_TCP_TIMEOUT_CLOSE_WAIT = 5,
	CT_CFG_TCP_TIMEOUT_LAST_ACK = 6,
	CT_CFG_TCP_TIMEOUT_TIME_WAIT = 7,
	CT_CFG_TCP_TIMEOUT_CLOSE = 8,
	CT_CFG_TCP_TIMEOUT_SYN_SENT2 = 9,
	CT_CFG_TCP_TIMEOUT_MAX_RETRANS = 10,
	CT_CFG_TCP_TIMEOUT_UNACKNOWLEDGED = 11,
	CT_CFG_UDP_TIMEOUT = 12,
	CT_CFG_UDP_TIMEOUT_STREAM = 13,
	CT_CFG_ICMP_TIMEOUT = 14,
	CT_CFG_ICMPV6_TIMEOUT = 15,
	CT_CFG_GENERIC_TIMEOUT = 16,
	CT_CFG_TCP_LOOSE = 17,
	CT_CFG_TCP_BE_LIBERAL = 18,
	CT_CFG_TCP_MAX_RETRANS = 19,
	CT_CFG_EVENTS = 20,          /* 1: emit NEW/UPDATE/DESTROY events into ct_events */
	CT_CFG_POLICIES = 21,        /* elements in ct_policy; 0 spares every packet the lookup */
	CT_CFG_ACCT = 22,            /* 1: count packets and bytes per flow (nf_conntrack_acct) */
	CT_CFG_TCP_IGNORE_INVALID_RST = 23, /* 1: a RST below the window is accepted, not INVALID */
	CT_CFG_RESYNC_HOLD = 24,     /* 1 while a rebuild reconciles: no packet clears a resync mark */
	CT_CFG_MAX_ENTRIES = 25,     /* conntrack_max, the flows ct_assured may grow to hold with ct_new's */
	CT_CFG_EVENT_LISTENERS = 26, /* `ctbpf events` clients of the daemon: 0 spares every event */
	CT_CFG_FAST_PATH = 27,       /* 1: forward ESTABLISHED, ASSURED flows at XDP (bpf/fastpath.h) */
	CT_CFG_LAYOUT_VERSION = 31, /* written by the loader; checked before pinned maps are reused */
	CT_CFG_MAX = 32,
};

/*
 * Flow key, the same for both directions: the (address, port) pair that
 * compares lower goes in the *_lo fields. Addresses and ports are in network
 * byte order, exactly as on the wire; an IPv4 address sits in word 0 with
 * words 1-3 zero. For ICMP/ICMPv6 queries the requester's port holds the
 * query id and the responder's its complement, and icmp_query holds
 * (request type << 8 | code), so echo and timestamp queries with the same id
 * stay apart.
 */
struct ct_key {
	__u32 addr_lo[4];
	__u32 addr_hi[4];
	__u16 port_lo;
	__u16 port_hi;
	__u8 proto;      /* IPPROTO_* */
	__u8 family;     /* CT_FAMILY_IPV4 or CT_FAMILY_IPV6 */
	__u16 icmp_query;
};

/* What the kernel keeps per direction to check windows (struct
 * ip_ct_tcp_state, less td_scale and flags: those are bytes of ct_entry, so
 * that the entry has no padding); sequence numbers in host order. */
struct ct_tcp_side {
	__u32 td_end;     /* highest seq + len this side sent */
	__u32 td_maxend;  /* highest ack + window the other side allowed it */
	__u32 td_maxwin;  /* largest window this side advertised, scaled */
	__u32 td_maxack;  /* highest ack this side sent */
};

/* ct_entry.td_flags[dir], the kernel's IP_CT_TCP_FLAG_* values. */
enum ct_tcp_side_flag {
	CT_TS_WINDOW_SCALE = 0x01,  /* a window scale option was seen */
	CT_TS_SACK_PERM = 0x02,     /* SACK permitted */
	CT_TS_CLOSE_INIT = 0x04,    /* this side sent the FIN that began the close */
	CT_TS_BE_LIBERAL = 0x08,    /* picked up mid-stream: only RSTs are checked */
	CT_TS_DATA_UNACK = 0x10,    /* data sent and not yet acknowledged */
	CT_TS_MAXACK_SET = 0x20,    /* td_maxack holds an ack */
	CT_TS_RESYNC = 0x40,        /* ctbpf's own: copied by a rebuild; unchecked until this side sends */
};

/*
 * One tracked flow, 64 bytes with no padding. Times are ticks
 * (CT_TICK_SHIFT) of CLOCK_MONOTONIC, so an absolute expiry survives an
 * agent restart unchanged. Packet and
 * byte counters are not here: they live in ct_acct, for flows made while
 * acct was on (CT_F_ACCT), as the kernel keeps them in an extension.
 */
struct ct_entry {
	__u32 expires;      /* the entry counts as absent from this tick on */
	__u32 created;      /* the tick it was made in */
	__u8 state;         /* enum ct_tcp_state; CT_TCP_NONE for other protocols */
	__u8 flags;         /* enum ct_entry_flag bits */
	__u8 last_class;    /* TCP: enum ct_tcp_class of the last tracked segment */
	__u8 last_dir;      /* TCP: enum ct_dir of the last tracked segment */
	__u8 retrans;       /* TCP: identical ACK segments in a row */
	__u8 last_opts;     /* TCP: an ignored SYN's CT_TS_WINDOW_SCALE | CT_TS_SACK_PERM, its scale << 4 */
	__u8 td_scale[2];   /* TCP: the window scale each direction announced */
	struct ct_tcp_side side[2]; /* TCP: each direction's window, indexed by enum ct_dir */
	__u32 last_seq;     /* TCP: the last tracked segment's seq, ack, end and raw window, */
	__u32 last_ack;     /*   to count retransmissions (kernel: ip_ct_tcp.last_*) */
	__u32 last_end;
	__u16 last_win;
	__u8 td_flags[2];   /* TCP: enum ct_tcp_side_flag bits of each direction */
};

/* A flow's packets and L3 bytes by direction (enum ct_dir), in ct_acct. */
struct ct_acct {
	__u64 packets[2];
	__u64 bytes[2];
};

/* What an event reports, as `conntrack -E` does. */
enum ct_event_type {
	CT_EVENT_NEW = 1,
	CT_EVENT_UPDATE = 2,   /* TCP state, [UNREPLIED] or [ASSURED] changed */
	CT_EVENT_DESTROY = 3,
};

/* Why an entry was destroyed. */
enum ct_destroy_reason {
	CT_DESTROY_NONE = 0,
	CT_DESTROY_EXPIRED = 1,   /* timed out (found on lookup, or swept) */
	CT_DESTROY_RST = 2,       /* a RST was the only reply */
	CT_DESTROY_REOPEN = 3,    /* a SYN reopened the connection */
	CT_DESTROY_USER = 4,      /* deleted by `ctbpf delete` / `flush` */
};

/* One record of the ct_events ring buffer. */
struct ct_event {
	__u64 timestamp_ns;  /* ct_now(): CLOCK_MONOTONIC, ns */
	struct ct_key key;
	struct ct_entry entry;
	struct ct_acct acct; /* the flow's counters when it has them (CT_F_ACCT), else zero */
	__u8 type;           /* enum ct_event_type */
	__u8 reason;         /* enum ct_destroy_reason */
	__u8 pad[6];         /* explicit: the record is a multiple of 8 bytes */
};

/* Request of the sweep program, run through BPF_PROG_TEST_RUN: a header and
 * `count` keys. CT_SWEEP_EXPIRED deletes the entries of `table` still expired when the
 * program looks (DESTROY "expired", CT_STAT_SWEPT); CT_SWEEP_USER deletes
 * the keys from whichever table holds them (DESTROY "user",
 * CT_STAT_USER_DELETE) and, after CT_SWEEP_BATCH key slots, writes one
 * result byte per key (1: deleted). The control plane reaches it pinned as
 * prog_sweep. */
#define CT_SWEEP_BATCH 64

enum ct_sweep_mode {
	CT_SWEEP_EXPIRED = 0,
	CT_SWEEP_USER = 1,
	CT_SWEEP_DUE = 2,
};

/* CT_SWEEP_DUE: keys the expiry index says are due, from either table. After
 * CT_SWEEP_BATCH key slots the program writes one u64 per key: DELETED (it
 * was still expired: DESTROY, CT_STAT_SWEPT), GONE (in neither table), or
 * else the entry saw traffic since and this is its expires (ticks), to index
 * again. */
#define CT_DUE_DELETED 0
#define CT_DUE_GONE 1

/*
 * The expiry index. The datapath writes one record into the ct_timers ring
 * buffer when it creates an entry and whenever an entry's expiry moves
 * earlier (a TCP state with a shorter timeout); a later expiry needs no
 * record, because the entry's earliest record comes due first and the
 * sweeper then indexes it again at its current expiry. So every live entry
 * always has a record due no later than itself, and a sweep reads only what
 * is due instead of the whole table. A record the ring has no room for is
 * counted in CT_STAT_TIMER_LOST, and the sweeper rebuilds the index with a
 * walk of the tables.
 */
struct ct_timer {
	struct ct_key key;
	__u32 expires;       /* ct_entry.expires */
};

enum ct_table_id {
	CT_TABLE_NEW = 0,
	CT_TABLE_ASSURED = 1,
};

struct ct_sweep_header {
	__u32 table;   /* enum ct_table_id (CT_SWEEP_EXPIRED) */
	__u32 count;   /* keys that follow, at most CT_SWEEP_BATCH */
	__u32 mode;    /* enum ct_sweep_mode */
	__u32 pad;     /* explicit: keys start 8-byte aligned */
};

/* The single element of ct_config: live tunables indexed by enum ct_cfg. */
struct ct_config {
	__u64 value[CT_CFG_MAX];
};

/* The single element of ct_stats (per CPU): counters indexed by enum ct_stat. */
struct ct_counters {
	__u64 count[CT_STAT_MAX];
};

/*
 * Enforce mode: a policy per interface and hook, in ct_policy keyed by
 * struct ct_policy_key. A packet's user-land state is accepted when its bit
 * is in `accept` (bit = 1 << enum ct_pkt_state) and, for NEW, when the
 * policy's NEW rules (if any) match it and, with CT_POL_NEW_SYN_ONLY, a TCP
 * NEW packet carries SYN; everything else gets `default_verdict`. Frames
 * that are not IP always pass. Without CT_POL_ENFORCE the verdict is only
 * counted (CT_VERDICT_WOULD_DROP), never applied.
 */
#define CT_POLICY_RULES 8
#define CT_POLICY_SLOTS 64

enum ct_hook {
	CT_HOOK_IN = 0,    /* XDP: packets arriving on the interface */
	CT_HOOK_OUT = 1,   /* TC egress: packets the host itself sends out of it */
};

enum ct_verdict {
	CT_VERDICT_ACCEPT = 0,
	CT_VERDICT_DROP = 1,
	CT_VERDICT_WOULD_DROP = 2,   /* observe mode: the policy would drop it */
	CT_VERDICT_MAX = 3,
};

enum ct_policy_flag {
	CT_POL_ENFORCE = 1,        /* apply verdicts (else count them only) */
	CT_POL_NEW_SYN_ONLY = 2,   /* a TCP NEW packet without SYN is refused */
	CT_POL_NEW_RULES = 4,      /* NEW must match one of `rules` */
};

struct ct_policy_key {
	__u32 ifindex;
	__u32 hook;    /* enum ct_hook */
};

/* NEW allowed when every given part matches: addresses under a mask
 * (network order; a zero mask matches all), protocol (0: any), destination
 * port range (host order; ICMP and other protocols have no port). */
struct ct_new_rule {
	__u32 src[4];
	__u32 src_mask[4];
	__u32 dst[4];
	__u32 dst_mask[4];
	__u16 dport_lo;
	__u16 dport_hi;
	__u8 family;   /* CT_FAMILY_*, 0: both */
	__u8 proto;    /* IPPROTO_*, 0: any */
	__u8 family_mask;   /* 0xFF when family is given, else 0 */
	__u8 proto_mask;    /* 0xFF when proto is given, else 0 */
};

struct ct_policy {
	__u8 accept;            /* bits 1 << enum ct_pkt_state */
	__u8 flags;             /* enum ct_policy_flag bits */
	__u8 default_verdict;   /* enum ct_verdict: ACCEPT or DROP */
	__u8 nrules;
	__u32 slot;             /* this interface's row in ct_verdicts */
	struct ct_new_rule rules[CT_POLICY_RULES];
};

/* ct_verdicts (per CPU): packets by policy slot, user-land state (enum
 * ct_pkt_state, UNTRACKED included) and verdict, at index
 * (slot * CT_PKT_STATES + state) * CT_VERDICT_MAX + verdict. */
#define CT_PKT_STATES 5
#define CT_VERDICT_COUNTS 960   /* CT_POLICY_SLOTS * CT_PKT_STATES * CT_VERDICT_MAX */
struct ct_verdict_counts {
	__u64 count[CT_VERDICT_COUNTS];
};

/*
 * The fast path (bpf/fastpath.h): a packet of an ESTABLISHED, ASSURED flow
 * that its policy accepts is forwarded at XDP, its next hop from
 * bpf_fib_lookup, through ct_fwd_ports. Interfaces the agent attached have a
 * slot (ct_fwd_ifaces: ifindex -> slot), the same in ct_fwd_ports and
 * ct_fwd_stats. Everything the kernel must see still goes up the stack; the
 * causes are counted per arriving interface.
 */
#define CT_FWD_SLOTS 64

enum ct_fwd_stat {
	CT_FWD_RX_PACKETS = 0,     /* arrived here, forwarded at XDP */
	CT_FWD_RX_BYTES = 1,       /* their IP bytes */
	CT_FWD_TX_PACKETS = 2,     /* forwarded at XDP out of this interface */
	CT_FWD_TX_BYTES = 3,
	CT_FWD_PASS_NOT_ASSURED = 4, /* flow not ESTABLISHED and ASSURED, or not accepted by its policy */
	CT_FWD_PASS_TCP_FLAGS = 5, /* SYN, FIN or RST: the kernel's sockets and ICMP must see them */
	CT_FWD_PASS_IP_HEADER = 6, /* IP options, IPv6 extension headers, fragments, VLAN tags */
	CT_FWD_PASS_TTL = 7,       /* TTL or hop limit <= 1: the kernel sends time exceeded */
	CT_FWD_PASS_LOCAL = 8,     /* to this host, or forwarding is off on the interface */
	CT_FWD_PASS_NO_ROUTE = 9,  /* no route, or a blackhole, unreachable or prohibit one */
	CT_FWD_PASS_NO_NEIGH = 10, /* next hop unresolved: the kernel resolves it */
	CT_FWD_PASS_MTU = 11,      /* larger than the egress MTU: the kernel fragments or refuses */
	CT_FWD_PASS_NOT_ATTACHED = 12, /* the route leaves through an interface ctbpf is not on */
	CT_FWD_PASS_NO_XMIT = 13,  /* native XDP in, and the way out cannot send XDP frames */
	CT_FWD_PASS_CHECKSUM = 14, /* native XDP on a veth, L4 checksum left to offload (or wrong) */
	CT_FWD_STAT_MAX = 16,
};

/* ct_fwd_ifaces values: the interface's slot, and what it can do. */
enum ct_fwd_iface {
	CT_FWD_IF_SLOT_MASK = 255,
	CT_FWD_IF_NATIVE = 256,    /* its XDP program runs in native mode: it redirects XDP frames */
	CT_FWD_IF_XMIT = 512,      /* its driver sends XDP frames (ndo_xdp_xmit; a veth: its peer is ready) */
	CT_FWD_IF_CSUM = 1024,     /* check L4 checksums of what arrives: a native veth, whose
				    * frames from a local stack may leave them to offload */
};

/* An element of ct_fwd_stats (per CPU): the interface it counts for, named
 * so that `ctbpf stats` can tell it from another namespace. */
struct ct_fwd_counters {
	__u32 ifindex;   /* 0: a free slot */
	__u32 pad;
	__u8 name[16];
	__u64 count[CT_FWD_STAT_MAX];
};

#endif /* CTBPF_ABI_H */
