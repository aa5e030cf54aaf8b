/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Build-time knobs of the datapath. Each may be overridden with -D by the
 * loader (integers only: no user string ever becomes C source, except the
 * pin directory, which the loader validates against a strict pattern).
 */
#ifndef CTBPF_CONFIG_H
#define CTBPF_CONFIG_H

/* Entries in each of the two flow tables (conntrack_max). */
#ifndef CT_MAX_ENTRIES
#define CT_MAX_ENTRIES 65536
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

/* Bytes of the event ring buffer (a power of two, pages). At 184 bytes an
 * event with the ring's header, 1 MiB holds some 5,700 events between two
 * reads. */
#ifndef CT_EVENTS_BYTES
#define CT_EVENTS_BYTES (1 << 20)
#endif

/* Size of the expiry index's ring (struct ct_timer records of 56 bytes with
 * the ring's header): 16 MiB holds about 300,000 registrations, several
 * seconds of a flood of new flows between two reads by the sweeper. */
#ifndef CT_TIMERS_BYTES
#define CT_TIMERS_BYTES (1 << 24)
#endif

/* Where the maps are pinned; the loader always passes it. */
#ifndef CT_PIN_DIR
#define CT_PIN_DIR "/sys/fs/bpf/ctbpf"
#endif

/* A UDP flow answered and still alive this long after creation is a stream
 * (kernel: stream_ts = creation + 2 s). Nanoseconds. */
#define CT_UDP_STREAM_AFTER_NS (2ULL * 1000000000ULL)

#define CT_NSEC_PER_SEC 1000000000ULL

#endif /* CTBPF_CONFIG_H */
