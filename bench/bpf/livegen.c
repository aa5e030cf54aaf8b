/* livegen: XDP programs of the benchmark traffic generator (bench/livegen.py).
 *
 * Every parameter is a compile-time constant handed in by the loader as -D
 * flags, so the per-frame work is a handful of stores:
 *
 *   LG_FRAME_LEN   length of the frame (no FCS)
 *   LG_ETH_P       EtherType of the real frames (0x0800 or 0x86DD)
 *   LG_IPV6, LG_TCP, LG_NEW   0 or 1
 *   LG_NSP, LG_NDP            source / destination port counters (established modes)
 *   LG_SPORT0, LG_DPORT0      ports in the template
 *   LG_SALO0                  low 16 bits of the template's source address
 *   LG_L4CSUM0, LG_IPCSUM0    checksums of the template (host order)
 *   LG_ACKF                   1: TCP new-flow mode sends bare ACKs whose sequence
 *                             and acknowledgement numbers vary with i (an ACK flood)
 *   LG_SEQ0, LG_ACK0          the template's sequence and acknowledgement numbers
 *   LG_BUDGET                 frames to send, then XDP_DROP
 *   LG_OUT_IFINDEX            target of the live-frames program
 *
 * Frame i carries flow i: established modes use source port
 * SPORT0 + i % NSP and destination port DPORT0 + i % NDP; the new-flow mode
 * varies the low 16 bits of the source address with i and the source port
 * with i >> 16. Checksums are the template's, updated as in RFC 1624 (eqn. 3)
 * from the template's values, never from the frame's current content.
 *
 * The loop (no live frames): veth pair lgA <-> lgB.
 *   lg_fan on lgB: seed frames (EtherType LG_SEED_P) go back to lgA by
 *     XDP_TX; real frames are broadcast through the devmap lg_ports, which
 *     holds lgB itself (back to lgA: the loop goes on) and the OUT interface
 *     (one copy sent per turn).
 *   lg_loop on lgA: counts the turn, rewrites the flow, XDP_TX to lgB; once
 *     the budget is spent (or lg_ctl[0] is set) it drops, which ends the loop.
 */
#include <uapi/linux/bpf.h>

#ifndef LG_ACKF
#define LG_ACKF 0
#define LG_SEQ0 0U
#define LG_ACK0 0U
#endif

#define LG_SEED_P 0x88B5             /* IEEE 802 local experimental EtherType */
#define LG_F_BROADCAST (1ULL << 3)   /* BPF_F_BROADCAST */

#if LG_IPV6
#define LG_L4OFF (14 + 40)
#define LG_SALO_OFF (14 + 8 + 14)    /* last 16 bits of the IPv6 source */
#else
#define LG_L4OFF (14 + 20)
#define LG_SALO_OFF (14 + 12 + 2)    /* last 16 bits of the IPv4 source */
#define LG_IPCSUM_OFF (14 + 10)
#endif
#if LG_TCP
#define LG_L4CSUM_OFF (LG_L4OFF + 16)
#else
#define LG_L4CSUM_OFF (LG_L4OFF + 6)
#endif

struct lg_state {
    u64 count;      /* turns taken (frames sent), grows past the budget by what was dropped */
    u64 t0;         /* bpf_ktime_get_ns() of frame 0 */
    u64 t1;         /* ... and of frame LG_BUDGET - 1 */
    u64 bad;        /* frames of another shape, dropped */
};

BPF_ARRAY(lg_state, struct lg_state, 1);
BPF_ARRAY(lg_ctl, u32, 1);           /* [0] != 0: stop now */
BPF_DEVMAP(lg_ports, 2);

static __always_inline u32 lg_fold(u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return s;
}

static __always_inline void lg_put16(void *data, int off, u32 v)
{
    *(u16 *)(data + off) = bpf_htons((u16)v);
}

/* Write flow i into a frame of LG_FRAME_LEN bytes (bounds checked by the caller). */
static __always_inline void lg_rewrite(void *data, u64 i)
{
    u32 sp, dp, salo = LG_SALO0;
#if LG_NEW
    salo = (u32)(i & 0xffff);
    sp = 1024 + (u32)((i >> 16) % 64512);
    dp = LG_DPORT0;
#else
    sp = LG_SPORT0 + (u32)(i % LG_NSP);
    dp = LG_DPORT0 + (u32)(i % LG_NDP);
#endif
    u32 d = (~LG_SPORT0 & 0xffff) + sp + (~LG_DPORT0 & 0xffff) + dp;
#if LG_NEW
    u32 da = (~LG_SALO0 & 0xffff) + salo;
    d += da;
    lg_put16(data, LG_SALO_OFF, salo);
#if !LG_IPV6
    lg_put16(data, LG_IPCSUM_OFF, ~lg_fold((~LG_IPCSUM0 & 0xffff) + da) & 0xffff);
#endif
#endif
#if LG_TCP && LG_ACKF
    /* Random-looking numbers from i (multiplicative hashes), so that no two
     * nearby frames agree and none matches a connection's window. */
    u32 seq = (u32)i * 2654435761U + 0x6b43a9b5U;
    u32 ack = ((u32)i ^ 0x5bd1e995U) * 0x85ebca6bU;
    d += (~(LG_SEQ0 >> 16) & 0xffff) + (seq >> 16) + (~LG_SEQ0 & 0xffff) + (seq & 0xffff);
    d += (~(LG_ACK0 >> 16) & 0xffff) + (ack >> 16) + (~LG_ACK0 & 0xffff) + (ack & 0xffff);
    lg_put16(data, LG_L4OFF + 4, seq >> 16);
    lg_put16(data, LG_L4OFF + 6, seq & 0xffff);
    lg_put16(data, LG_L4OFF + 8, ack >> 16);
    lg_put16(data, LG_L4OFF + 10, ack & 0xffff);
#endif
    u32 c = ~lg_fold((~LG_L4CSUM0 & 0xffff) + d) & 0xffff;
#if !LG_TCP
    if (c == 0)
        c = 0xffff;                  /* UDP: 0 would mean "no checksum" */
#endif
    lg_put16(data, 12, LG_ETH_P);
    lg_put16(data, LG_L4OFF, sp);
    lg_put16(data, LG_L4OFF + 2, dp);
    lg_put16(data, LG_L4CSUM_OFF, c);
}

/* Exactly LG_FRAME_LEN bytes? Two tests: the first gives the verifier its
 * bound, and the compiler must not merge them into one != (which gives none). */
static __always_inline int lg_shape(void *data, void *data_end)
{
    if (data + LG_FRAME_LEN > data_end)
        return 0;
    asm volatile("" ::: "memory");
    if (data + LG_FRAME_LEN < data_end)
        return 0;
    return 1;
}

/* Take turn number i, or -1 when the budget is spent. */
static __always_inline int lg_take(u64 *out)
{
    int k = 0;
    struct lg_state *st = lg_state.lookup(&k);
    if (!st)
        return -1;
    u64 i = __sync_fetch_and_add(&st->count, 1);
    if (i >= LG_BUDGET)
        return -1;
    if (i == 0)
        st->t0 = bpf_ktime_get_ns();
    if (i == LG_BUDGET - 1)
        st->t1 = bpf_ktime_get_ns();
    *out = i;
    return 0;
}

static __always_inline void lg_bad(void)
{
    int k = 0;
    struct lg_state *st = lg_state.lookup(&k);
    if (st)
        __sync_fetch_and_add(&st->bad, 1);
}

/* lgA: one turn of the loop. */
int lg_loop(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int k = 0;
    u32 *stop = lg_ctl.lookup(&k);
    u64 i;

    if (!stop || *stop)
        return XDP_DROP;
    if (!lg_shape(data, data_end)) {
        lg_bad();
        return XDP_DROP;
    }
    if (lg_take(&i))
        return XDP_DROP;
    lg_rewrite(data, i);
    return XDP_TX;
}

/* lgB: seeds back to lgA, real frames to lgB (the loop) and OUT (the copy sent). */
int lg_fan(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;

    if (!lg_shape(data, data_end)) {
        lg_bad();
        return XDP_DROP;
    }
    u16 proto = bpf_ntohs(*(u16 *)(data + 12));
    if (proto == LG_SEED_P)
        return XDP_TX;
    if (proto != LG_ETH_P)
        return XDP_DROP;
    return lg_ports.redirect_map(0, LG_F_BROADCAST);
}

/* Live frames (BPF_PROG_TEST_RUN, BPF_F_TEST_XDP_LIVE_FRAMES): the frame out of OUT. */
int lg_live(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u64 i;

    if (!lg_shape(data, data_end))
        return XDP_DROP;
    if (lg_take(&i))
        return XDP_DROP;
    lg_rewrite(data, i);
    return bpf_redirect(LG_OUT_IFINDEX, 0);
}

/* The probe: is the live-frames flag allowed at all? */
int lg_probe(struct xdp_md *ctx)
{
    return XDP_DROP;
}
