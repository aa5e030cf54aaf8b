"""The table as users know it: /proc/net/ip_conntrack lines, `conntrack -L`
lines, and JSON, one Flow at a time (ctbpf.datapath.listtext writes the
same text for a whole chunk of the table). A flow without counters
(packets and bytes None: no accounting record) shows none, as conntrack
does without nf_conntrack_acct."""

from __future__ import annotations

from ctbpf.datapath.table import Flow, Tuple


def _tuple_text(t: Tuple) -> str:
    parts = [f"src={t.src}", f"dst={t.dst}"]
    if t.sport is not None:
        parts += [f"sport={t.sport}", f"dport={t.dport}"]
    elif t.type is not None:
        parts += [f"type={t.type}", f"code={t.code}", f"id={t.id}"]
    return " ".join(parts)


def _head(f: Flow) -> str:
    # "%-8s %u %ld " then the TCP state, as the kernel prints it
    head = f"{f.proto_name:<8} {f.proto} {f.timeout} "
    return head + (f"{f.state} " if f.state else "")


def proc_line(f: Flow) -> str:
    """The spec's /proc/net/ip_conntrack line, byte for byte."""
    line = _head(f) + _tuple_text(f.orig) + " "
    if f.unreplied:
        line += "[UNREPLIED] "
    line += _tuple_text(f.reply) + " "
    if f.assured:
        line += "[ASSURED] "
    return line + "use=1"


def _counters(f: Flow, side: int) -> str:
    if f.packets is None:
        return ""
    return f" packets={f.packets[side]} bytes={f.bytes[side]}"


def conntrack_line(f: Flow) -> str:
    """`conntrack -L`: counters after each tuple when the flow has them."""
    line = _head(f) + _tuple_text(f.orig) + _counters(f, 0) + " "
    if f.unreplied:
        line += "[UNREPLIED] "
    line += _tuple_text(f.reply) + _counters(f, 1) + " "
    if f.assured:
        line += "[ASSURED] "
    return line + "mark=0 use=1"


def flow_dict(f: Flow) -> dict:
    d = {
        "proto": f.proto_name,
        "protonum": f.proto,
        "family": "ipv4" if f.family == 4 else "ipv6",
        "timeout": f.timeout,
        "state": f.state,
        "orig": f.orig.as_dict(),
        "reply": f.reply.as_dict(),
        "flags": f.flags,
    }
    if f.packets is not None:
        d["packets"] = {"orig": f.packets[0], "reply": f.packets[1]}
        d["bytes"] = {"orig": f.bytes[0], "reply": f.bytes[1]}
    d["table"] = f.table
    return d


def _json_tuple(t: Tuple) -> str:
    # json.dumps of as_dict(), written out: addresses and numbers need no escaping
    if t.sport is not None:
        return (f'{{"src": "{t.src}", "dst": "{t.dst}", "sport": {t.sport}, '
                f'"dport": {t.dport}}}')
    if t.type is not None:
        return (f'{{"src": "{t.src}", "dst": "{t.dst}", "type": {t.type}, "code": {t.code}, '
                f'"id": {t.id}}}')
    return f'{{"src": "{t.src}", "dst": "{t.dst}"}}'


_FLAGS = {(False, False): "[]", (True, False): '["UNREPLIED"]', (False, True): '["ASSURED"]',
          (True, True): '["UNREPLIED", "ASSURED"]'}


def flow_json(f: Flow) -> str:
    """json.dumps(flow_dict(f)), byte for byte, without building the dict."""
    state = "null" if f.state is None else f'"{f.state}"'
    counters = "" if f.packets is None else (
        f', "packets": {{"orig": {f.packets[0]}, "reply": {f.packets[1]}}}, '
        f'"bytes": {{"orig": {f.bytes[0]}, "reply": {f.bytes[1]}}}')
    return (f'{{"proto": "{f.proto_name}", "protonum": {f.proto}, '
            f'"family": "{"ipv4" if f.family == 4 else "ipv6"}", "timeout": {f.timeout}, '
            f'"state": {state}, "orig": {_json_tuple(f.orig)}, "reply": {_json_tuple(f.reply)}, '
            f'"flags": {_FLAGS[(f.unreplied, f.assured)]}{counters}, "table": "{f.table}"}}')


def json_text(flows: list[Flow]) -> str:
    return "[" + ", ".join(map(flow_json, flows)) + "]"


def write_json(flows: list[Flow], out) -> None:
    """json_text() written in pieces: no single string of the whole table."""
    out.write("[")
    for i in range(0, len(flows), 4096):
        if i:
            out.write(", ")
        out.write(", ".join(map(flow_json, flows[i:i + 4096])))
    out.write("]\n")
