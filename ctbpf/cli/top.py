"""`ctbpf top`: a refreshing view of a running tracker, like top(1).

Three layers, so that everything but the first can be tested without a
tracker or a terminal:

    take_sample(pin_dir) -> Sample     what the maps hold now (counters, occupancy, flows)
    compute_frame(prev, cur) -> Frame  rates from the deltas between two samples
    render(frame, width) -> [lines]    the text, a pure function

and two drivers: plain text (one frame per interval, for pipes and
--iterations) and curses (for a person at a console).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TOP_N = 10
SEPARATOR = "-" * 72
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


# --------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class FlowSample:
    """What top needs of one flow: its label and its totals (both directions)."""

    label: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class Sample:
    mono: float                          # time.monotonic() of the read
    wall: float                          # time.time() of the read
    limit: int | dict                    # max_entries by table ("assured", "new"), or of each
    pkt_states: dict[str, int]           # packets per user-land state (totals)
    invalid: dict[str, int]              # invalid packets per reason (totals)
    occupancy: dict[str, Counter]        # table -> Counter((proto, tcp state name|None) -> live)
    flows: object                        # toptalkers.FlowTotals, or {flow key: FlowSample}


@dataclass(frozen=True)
class Talker:
    label: str
    pps: float | None      # None: no earlier sample to compare with
    bps: float | None
    total_bytes: int


@dataclass(frozen=True)
class Frame:
    wall: float
    interval: float | None               # seconds since the previous sample; None for the first
    limit: int
    entries: dict[str, int]              # table -> live entries
    pkt_rates: dict[str, float | None]   # user-land state -> packets/s
    invalid_rate: float | None
    invalid_rates: dict[str, float]      # reason -> invalid/s, non-zero only
    occupancy: list[tuple[str, str, dict[str, int]]]  # (proto, state, {table: n}), sorted
    talkers: list[Talker] = field(default_factory=list)


# --------------------------------------------------------------------------
# reading the maps


def flow_label(f) -> str:
    """`tcp 10.0.0.1:40000 -> 10.0.0.2:80 ESTABLISHED` from a table.Flow."""
    o = f.orig

    def end(addr: str, port: int | None) -> str:
        if port is None:
            return addr
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    text = f"{f.proto_name} {end(o.src, o.sport)} -> {end(o.dst, o.dport)}"
    if o.id is not None:
        text += f" id={o.id}"
    if f.state:
        text += f" {f.state}"
    return text


def take_sample(pin_dir: Path) -> Sample:
    """One pass over both tables, chunk by chunk, kept as arrays: occupancy
    and per-flow totals, without a Python object per flow."""
    import numpy as np  # noqa: PLC0415

    from ctbpf import abi  # noqa: PLC0415
    from ctbpf.cli.toptalkers import FlowTotals, fingerprints  # noqa: PLC0415
    from ctbpf.datapath import bpfsys, stats, tablestream  # noqa: PLC0415

    counters = stats.read_counters(pin_dir)
    acct = tablestream.acct_counters(pin_dir)
    codes = {name.removeprefix("ct_"): np.zeros(1 << 16, np.int64)
             for name in tablestream.TABLES}
    parts = []
    for name, keys, entries, now in tablestream.read_chunks(pin_dir):
        live = tablestream.entry_clock(entries) > now
        if live.all():   # keys outlive the next read, which reuses the buffers: a copy
            keys, entries = keys.copy(), entries
        else:
            keys, entries = keys[live], entries[live]
        state, _ = tablestream.entry_state_flags(entries)
        proto = keys["proto"]
        code = proto.astype(np.intp) << 8 | np.where(proto == tablestream.TCP, state, 0)
        codes[name.removeprefix("ct_")] += np.bincount(code, minlength=1 << 16)
        c = acct(keys, entries)
        zero = np.zeros(len(keys), np.uint64)
        parts.append((name, keys, tablestream.slim(entries), fingerprints(keys),
                      zero if c is None else c.packets.sum(axis=1, dtype=np.uint64),
                      zero if c is None else c.bytes.sum(axis=1, dtype=np.uint64)))
    limit = {}
    for name in tablestream.TABLES:
        fd = bpfsys.obj_get(str(pin_dir / name))
        try:
            limit[name.removeprefix("ct_")] = bpfsys.map_info(fd).max_entries
        finally:
            os.close(fd)
    named = {}
    for t, counts in codes.items():
        named[t] = Counter()
        for code in np.flatnonzero(counts).tolist():
            p, st = code >> 8, code & 0xFF
            named[t][(p, abi.TCP_STATE_NAMES.get(st, str(st)) if p == tablestream.TCP
                      else None)] = int(counts[code])

    def cat(i, empty):
        return np.concatenate([p[i] for p in parts]) if parts else empty

    def labels(rows) -> list[str]:
        out, starts = [], np.cumsum([0] + [len(p[1]) for p in parts])
        for row in rows.tolist():
            i = int(np.searchsorted(starts, row, side="right")) - 1
            name, keys, slim = parts[i][:3]
            r = row - starts[i]
            flow = tablestream.decode(keys[r:r + 1], slim[r:r + 1], 0, name,
                                      counters=lambda k, e: None, include_expired=True)
            out.append(flow_label(flow.flows()[0]))
        return out

    none = np.zeros(0, np.uint64)
    return Sample(
        mono=time.monotonic(), wall=time.time(), limit=limit,
        pkt_states={name: counters[v] for v, name in abi.PKT_STATE_NAMES.items()},
        invalid={name: counters[stats.BASE + v] for v, name in abi.INVALID_REASON_NAMES.items()},
        occupancy=named,
        flows=FlowTotals(ids=cat(3, none), packets=cat(4, none), bytes=cat(5, none),
                         labels=labels))


# --------------------------------------------------------------------------
# rates


def rate(before: int, after: int, seconds: float) -> float:
    """Per-second rate of a counter; a counter that went back (a tracker
    restarted on new maps) counts as 0, never negative."""
    if seconds <= 0:
        return 0.0
    return max(0, after - before) / seconds


def flow_delta(before: FlowSample | None, after: FlowSample) -> tuple[int, int]:
    """(packets, bytes) of a flow since the previous sample. A new flow, or
    one whose counters went back (deleted and created again), counts from 0."""
    if before is None or after.packets < before.packets or after.bytes < before.bytes:
        return after.packets, after.bytes
    return after.packets - before.packets, after.bytes - before.bytes


def compute_frame(prev: Sample | None, cur: Sample, top_n: int = TOP_N) -> Frame:
    """The frame for `cur`, with rates over the time since `prev` (none when
    prev is None: then the talkers are ranked by total bytes)."""
    dt = cur.mono - prev.mono if prev is not None else None
    if prev is not None:
        pkt_rates = {s: rate(prev.pkt_states.get(s, 0), n, dt) for s, n in cur.pkt_states.items()}
        inv = {r: rate(prev.invalid.get(r, 0), n, dt) for r, n in cur.invalid.items()}
        invalid_rate = sum(inv.values())
        invalid_rates = {r: v for r, v in inv.items() if v > 0}
    else:
        pkt_rates = {s: None for s in cur.pkt_states}
        invalid_rate, invalid_rates = None, {}

    tables = list(cur.occupancy)
    keys = sorted({k for c in cur.occupancy.values() for k in c},
                  key=lambda k: (k[0], k[1] or ""))
    occ = [(PROTO_NAMES.get(p, str(p)), s or "",
            {t: cur.occupancy[t].get((p, s), 0) for t in tables}) for p, s in keys]
    entries = {t: sum(c.values()) for t, c in cur.occupancy.items()}

    talkers = _talkers(prev, cur, dt, top_n)
    return Frame(wall=cur.wall, interval=dt, limit=cur.limit, entries=entries,
                 pkt_rates=pkt_rates, invalid_rate=invalid_rate, invalid_rates=invalid_rates,
                 occupancy=occ, talkers=talkers)


def _totals(flows):
    from ctbpf.cli.toptalkers import FlowTotals  # noqa: PLC0415

    return FlowTotals.from_samples(flows) if isinstance(flows, dict) else flows


def _talkers(prev: Sample | None, cur: Sample, dt: float | None, top_n: int) -> list[Talker]:
    """The top_n flows by bytes/s (by total bytes without an earlier sample),
    then by total bytes and label."""
    from ctbpf.cli.toptalkers import busiest, deltas  # noqa: PLC0415

    now = _totals(cur.flows)
    if prev is None:
        rows = busiest(now.bytes, now.bytes, top_n)
        talkers = [Talker(label, None, None, total) for label, total in
                   zip(now.labels(rows), now.bytes[rows].tolist())]
    else:
        dp, db = deltas(_totals(prev.flows), now)
        rows = busiest(db, now.bytes, top_n)
        talkers = [Talker(label, p / dt if dt > 0 else 0.0, b / dt if dt > 0 else 0.0, total)
                   for label, p, b, total in zip(now.labels(rows), dp[rows].tolist(),
                                                 db[rows].tolist(), now.bytes[rows].tolist())]
    talkers.sort(key=lambda t: (-(t.bps or 0.0), -t.total_bytes, t.label))
    return talkers


# --------------------------------------------------------------------------
# rendering (pure)


def human(n: float | None) -> str:
    """1234567 -> '1.2M'; None -> '-'."""
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            break
        n /= 1000
    if unit == "" and float(n).is_integer():
        return str(int(n))
    return f"{n:.1f}{unit}"


def render(frame: Frame, width: int | None = None) -> list[str]:
    """The lines of one frame; each cut to `width` when given."""
    clock = time.strftime("%H:%M:%S", time.localtime(frame.wall))
    since = f"rates over {frame.interval:.1f}s" if frame.interval is not None else "rates: waiting"
    lines = [f"ctbpf top - {clock}  ({since})"]
    total = sum(frame.entries.values())
    limits = frame.limit if isinstance(frame.limit, dict) else dict.fromkeys(frame.entries,
                                                                              frame.limit)
    parts = [f"{t} {n}/{limits[t]} ({100 * n / limits[t]:.1f}%)" if limits.get(t) else f"{t} {n}"
             for t, n in frame.entries.items()]
    lines.append(f"Entries: {total} total; " + ", ".join(parts))
    lines.append("Packets/s: " + "  ".join(f"{s} {human(r)}" for s, r in frame.pkt_rates.items()))
    inv = f"Invalid/s: {human(frame.invalid_rate)}"
    if frame.invalid_rates:
        top = sorted(frame.invalid_rates.items(), key=lambda kv: -kv[1])[:4]
        inv += "  (" + ", ".join(f"{r} {human(v)}" for r, v in top) + ")"
    lines.append(inv)

    lines.append("")
    tables = list(frame.entries)
    lines.append(f"{'PROTO':<7} {'STATE':<12} " + " ".join(f"{t.upper():>9}" for t in tables)
                 + f" {'TOTAL':>9}")
    for proto, state, counts in frame.occupancy:
        lines.append(f"{proto:<7} {state or '-':<12} "
                     + " ".join(f"{counts.get(t, 0):>9}" for t in tables)
                     + f" {sum(counts.values()):>9}")
    if not frame.occupancy:
        lines.append("(no live entries)")

    lines.append("")
    lines.append(f"Top talkers {'by bytes/s' if frame.interval is not None else 'by total bytes'}:")
    lines.append(f"{'BYTES/S':>9} {'PKTS/S':>8} {'BYTES':>9}  FLOW")
    for t in frame.talkers:
        lines.append(f"{human(t.bps):>9} {human(t.pps):>8} {human(t.total_bytes):>9}  {t.label}")
    if not frame.talkers:
        lines.append("(no flows)")
    if width is not None:
        lines = [line[:max(width, 0)] for line in lines]
    return lines


# --------------------------------------------------------------------------
# drivers


class _Stop(Exception):
    """SIGTERM: leave the loop (and restore the terminal) like q does."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Stop()


def run_plain(pin_dir: Path, interval: float, iterations: int | None, out=None) -> None:
    out = out or sys.stdout
    prev = take_sample(pin_dir)
    n = 0
    while iterations is None or n < iterations:
        time.sleep(interval)
        cur = take_sample(pin_dir)
        if n:
            out.write(SEPARATOR + "\n")
        out.write("\n".join(render(compute_frame(prev, cur))) + "\n")
        out.flush()
        prev = cur
        n += 1


def _draw(scr, lines: list[str]) -> None:
    import curses  # noqa: PLC0415

    scr.erase()
    height, width = scr.getmaxyx()
    for y, line in enumerate(lines[:height]):
        try:
            scr.addnstr(y, 0, line, max(width - 1, 0))
        except curses.error:   # the bottom-right cell, or a terminal shrunk mid-draw
            pass
    scr.refresh()


def _curses_loop(scr, pin_dir: Path, interval: float) -> None:
    import curses  # noqa: PLC0415

    try:
        curses.curs_set(0)
    except curses.error:
        pass
    scr.timeout(100)   # getch() waits at most 0.1 s: keys and resizes stay responsive
    prev = take_sample(pin_dir)
    frame = compute_frame(None, prev)
    next_at = time.monotonic() + interval
    _draw(scr, render(frame))
    while True:
        key = scr.getch()
        if key in (ord("q"), ord("Q")):
            return
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            _draw(scr, render(frame))
        if time.monotonic() >= next_at:
            cur = take_sample(pin_dir)
            frame = compute_frame(prev, cur)
            prev = cur
            next_at = time.monotonic() + interval
            _draw(scr, render(frame))


def run_curses(pin_dir: Path, interval: float) -> None:
    import curses  # noqa: PLC0415

    curses.wrapper(_curses_loop, pin_dir, interval)   # restores the terminal however it ends


def main(pin_dir: Path, interval: float, iterations: int | None, tty: bool) -> None:
    """Run until q, SIGINT, SIGTERM or the last of `iterations` frames."""
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if tty and iterations is None:
            run_curses(pin_dir, interval)
        else:
            run_plain(pin_dir, interval, iterations)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
