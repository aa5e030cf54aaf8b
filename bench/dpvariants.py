"""Variants of this tree's bpf/ for the breakdown of `python -m bench dpcompare`:
each is a copy of bpf/ with one part of the datapath taken out, written to
a directory of its own, never to bpf/ itself.

    nowin        tcp_in_window() accepts at once (no sequence/window checks,
                 no window or retransmission bookkeeping)
    noopt        no TCP option parsing at all (not even the aligned-timestamp
                 test; SYN options are not read)
    nowin_noopt  both
    inline       ctbpf_xdp runs the ASSURED stage itself instead of
                 tail-calling ctbpf_xdp_assured (one tail call less on a hit)
    optfast      parse_tcp_options() zeroes its 72-byte option buffer only
                 after the aligned-timestamp test (a candidate fix)
    optfast_inline  both candidate fixes
    nowinupd     tcp_in_window() makes every check, then accepts without
                 updating the windows or the retransmission count
    noretrans    tcp_in_window() without the retransmission count (the
                 last_seq/ack/end/win comparison and stores of every ACK)
    optsteps8    the option walk in 8 steps instead of 32 (what an early
                 exit would save on a SYN with Linux's 5 options)
    noevents     ct_emit() returns at once (no event record, even with
                 events on)
    notimer      ct_register() returns at once (no expiry index record)
    percpulru    ct_new with per-CPU LRU lists (BPF_F_NO_COMMON_LRU)

    python -m bench.dpvariants /tmp/ctbpf-variants   # prints the --dpcompare-variant flags
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .common import ROOT

NOWIN = ("tcp.h", "\t__u8 fl = pkt->tcp_flags;\n\n",
         "\t__u8 fl = pkt->tcp_flags;\n\n"
         "\treturn CT_WIN_ACCEPT; /* bench variant: no window checks */\n")
NOOPT = ("parse.h", "\tif (doff > sizeof(*th))\n\t\tparse_tcp_options(c, th, doff, pkt);\n",
         "\t/* bench variant: no TCP option parsing */\n")
INLINE = ("ctbpf.c",
          "\tif (v == CT_VERDICT_FLOW) {\n\t\tct_next_stage(ctx, CT_HOOK_IN, CT_STAGE_ASSURED);\n",
          "\tif (v == CT_VERDICT_FLOW) {\n\t\t/* bench variant: the ASSURED stage inline */\n"
          "\t\treturn ct_process_flow(ctx, ctx->ingress_ifindex, CT_HOOK_IN, CT_STAGE_ASSURED) ==\n"
          "\t\t\tCT_VERDICT_DROP ? XDP_DROP : XDP_PASS;\n")

OPTFAST = ("tcpopt.h", "\tstruct ct_tcp_opts o = {};\n",
           "\tstruct ct_tcp_opts o; /* bench variant: zeroed after the fast path */\n")
OPTFAST2 = ("tcpopt.h",
            "\t/* Unlink n from doff and give the helper a size that fits the buffer. */\n",
            "\t__builtin_memset(&o, 0, sizeof(o));\n"
            "\t/* Unlink n from doff and give the helper a size that fits the buffer. */\n")

NOWINUPD = ("tcp.h", "\tif (!(fl & TCPF_SYN))\n\t\twin <<= snd->td_scale;\n",
            "\treturn CT_WIN_ACCEPT; /* bench variant: checks only */\n"
            "\tif (!(fl & TCPF_SYN))\n\t\twin <<= snd->td_scale;\n")
NORETRANS = ("tcp.h", "\tif (cls == CT_CLASS_ACK) {\n\t\tif (e->last_dir == dir",
             "\tif (0) { /* bench variant: no retransmission count */\n\t\tif (e->last_dir == dir")
OPTSTEPS8 = ("config.h", "#define CT_TCP_OPT_STEPS 32\n", "#define CT_TCP_OPT_STEPS 8\n")

NOEVENTS = ("conntrack.h", "\tstruct ct_event *ev;\n\n\tif (!cfg->value[CT_CFG_EVENTS])",
            "\tstruct ct_event *ev;\n\n\treturn; /* bench variant: no events */\n"
            "\tif (!cfg->value[CT_CFG_EVENTS])")
NOTIMER = ("conntrack.h", "\tstruct ct_timer *t = ct_timers.ringbuf_reserve(sizeof(*t));\n\n",
           "\tstruct ct_timer *t;\n\n\treturn; /* bench variant: no expiry index */\n"
           "\tt = ct_timers.ringbuf_reserve(sizeof(*t));\n")
PERCPU_LRU = ("maps.h", "\t\t CT_NEW_MAX, CT_PIN_DIR \"/ct_new\");",
              "\t\t CT_NEW_MAX, CT_PIN_DIR \"/ct_new\", 2 /* bench variant: BPF_F_NO_COMMON_LRU */);")

VARIANTS = {"nowin": (NOWIN,), "noopt": (NOOPT,), "nowin_noopt": (NOWIN, NOOPT),
            "inline": (INLINE,), "optfast": (OPTFAST, OPTFAST2),
            "optfast_inline": (OPTFAST, OPTFAST2, INLINE), "nowinupd": (NOWINUPD,),
            "noretrans": (NORETRANS,), "optsteps8": (OPTSTEPS8,),
            "noevents": (NOEVENTS,), "notimer": (NOTIMER,), "percpulru": (PERCPU_LRU,)}


def make(out: Path, names=tuple(VARIANTS), src: Path = ROOT / "bpf") -> dict[str, Path]:
    made = {}
    for name in names:
        d = out / name / "bpf"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d)
        for file, old, new in VARIANTS[name]:
            text = (d / file).read_text()
            if text.count(old) != 1:
                raise RuntimeError(f"variant {name}: the code to patch in {file} has changed")
            (d / file).write_text(text.replace(old, new))
        made[name] = d.parent
    return made


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ctbpf-variants")
    names = sys.argv[2:] or tuple(VARIANTS)
    print(" ".join(f"--dpcompare-variant {n}={d}" for n, d in make(out, names).items()))
