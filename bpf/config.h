/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Build-time knobs of the datapath. Each may be overridden with -D by the
 * loader (integers only: no user string ever becomes C source, except the
 * pin directory, which the loader validates against a strict pattern).
 */
#ifndef CTBPF_CONFIG_H
#define CTBPF_CONFIG_H

/* Entries of the two flow tables: ct_new (the unassured pool) and
 * ct_assured as large as it is now; conntrack_max is CT_NEW_MAX plus what
 * ct_assured may grow to (ctbpf/datapath/sizing.py). */
#ifndef CT_ASSURED_MAX
#define CT_ASSURED_MAX 61440
#endif
#ifndef CT_NEW_MAX
#define CT_NEW_MAX 4096
#endif
/* Records of ct_acct, the per-flow counters, as large as it is now. */
#ifndef CT_ACCT_MAX
#define CT_ACCT_MAX 16384
#endif

/* VLAN tags parsed before giving up: 2 covers 802.1Q and QinQ. */
#ifndef CT_MAX_VLAN_DEPTH
#define CT_MAX_VLAN_DEPTH 2
#endif

/* IPv6 extension headers skipped before giving up (hop-by-hop, routing,
 * destination options, fragment, AH). */
#ifndef CT_MAX_IP6_EXTHDRS
#define CT_MAX_IP6_EXTHDRS 6
#endif

/* Steps of the IPv4 option walk: one per option, four NOOPs in a row as
 * one. The slowest 40 bytes to walk are eight times NOOP NOOP NOOP and a
 * 2-byte option: 32 steps, so every option of every header is checked. */
#ifndef CT_IPV4_OPT_STEPS
#define CT_IPV4_OPT_STEPS 32
#endif

/* Steps of the TCP option walk, counted as for IPv4: 40 bytes of option
 * space, at most 32 steps. */
#ifndef CT_TCP_OPT_STEPS
#define CT_TCP_OPT_STEPS 32
#endif

/* Steps after which the walk stops when it is done (see tcp_options_walk). */
#ifndef CT_TCP_OPT_FAST_STEPS
#define CT_TCP_OPT_FAST_STEPS 8
#endif

/* Fragmented datagrams whose first fragment's verdict the later ones
 * follow (enforce mode): an LRU, so a flood of fragments only pushes out
 * other fragments' verdicts. */
#ifndef CT_FRAG_ENTRIES
#define CT_FRAG_ENTRIES 8192
#endif

/* Bytes of the event ring buffer and of the expiry index's ring (a power
 * of two, whole pages). The loader sizes both from the table (ctbpf/
 * datapath/rings.py); these are the sizes for the default table. */
#ifndef CT_EVENTS_BYTES
#define CT_EVENTS_BYTES (1 << 20)
#endif
#ifndef CT_TIMERS_BYTES
#define CT_TIMERS_BYTES (1 << 22)
#endif

/* Where the maps are pinned; the loader always passes it. */
#ifndef CT_PIN_DIR
#define CT_PIN_DIR "/sys/fs/bpf/ctbpf"
#endif

/* A UDP flow answered and still alive this long after creation is a stream
 * (kernel: stream_ts = creation + 2 s), in ticks (CT_TICK_SHIFT): later than
 * 15 ticks after the creation tick is 2.01 to 2.15 s after the first packet. */
#define CT_UDP_STREAM_AFTER_TICKS 15

#define CT_NSEC_PER_SEC 1000000000ULL

#endif /* CTBPF_CONFIG_H */
