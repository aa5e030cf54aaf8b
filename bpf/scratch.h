/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The hand-over between the datapath's two halves. The entry programs
 * (ctbpf_xdp, ctbpf_tc_egress) parse a frame and tail-call their hook's
 * tracker program (ctbpf_xdp_track, ctbpf_tc_track) through a program
 * array; a tail call keeps no stack, so the parsed packet waits in a per-CPU
 * slot. The two halves are verified apart, each within the verifier's
 * budget of a million instructions.
 *
 * Everything here is pinned: an adopted datapath's running entry program
 * tail-calls the tracker a newer agent put in its slot, and both must find
 * the same scratch. The tracker's slot is CT_JUMP_SLOT, so a datapath of
 * another layout never calls into one that reads the slot differently.
 */
#ifndef CTBPF_SCRATCH_H
#define CTBPF_SCRATCH_H

/* One per hook: a frame in flight and room for the entry a new flow starts
 * with (120 bytes with its window state: too much for the 512-byte stack). */
struct ct_scratch {
	struct ct_pkt pkt;
	struct ct_key key;     /* the flow's key, made by the first stage */
	__u32 src_is_hi;       /* the packet's source is the key's hi side */
	__u32 pad;
	struct ct_entry entry;
};

/* The stages of a flow's frame after parsing, one program each, by where
 * its entry is: their slots are CT_JUMP_BASE + stage. */
enum ct_stage {
	CT_STAGE_ASSURED = 0,  /* looked up in ct_assured */
	CT_STAGE_NEW = 1,      /* not there: looked up in ct_new */
	CT_STAGE_FRESH = 2,    /* in neither: a new flow, or a reopened one */
	CT_STAGES = 3,
	CT_STAGE_FWD = 3,      /* the fast path, XDP only (bpf/fastpath.h) */
};

/* Index = the hook (CT_HOOK_IN, CT_HOOK_OUT): XDP and TC never share one. */
BPF_TABLE_PINNED("percpu_array", __u32, struct ct_scratch, ct_scratch, 2,
		 CT_PIN_DIR "/ct_scratch");

/* A program array belongs to one program type: one for XDP, one for TC. */
BPF_TABLE_PINNED("prog", __u32, __u32, ct_jump_xdp, CT_JUMP_SLOTS, CT_PIN_DIR "/ct_jump_xdp");
BPF_TABLE_PINNED("prog", __u32, __u32, ct_jump_tc, CT_JUMP_SLOTS, CT_PIN_DIR "/ct_jump_tc");

_Static_assert(CT_JUMP_BASE == (CT_LAYOUT_VERSION % 4) * 4, "CT_JUMP_BASE follows the layout");
_Static_assert(CT_JUMP_BASE + CT_STAGE_FWD < CT_JUMP_SLOTS, "the stages fit the program arrays");
_Static_assert(CT_STAGE_FWD < 4, "a layout's programs keep to its four slots");

#endif /* CTBPF_SCRATCH_H */
