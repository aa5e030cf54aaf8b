"""Flow events, like `conntrack -E`: NEW, UPDATE (state or flag change) and
DESTROY, read from the datapath's ring buffer by the daemon and relayed to
`ctbpf events` clients over a unix socket.

A BPF ring buffer has a single consumer position, so the daemon is its only
reader: the EventRelay service drains it a few times a second, decodes each
record once and, when clients are connected, writes one JSON line per event
to each of them. With no client the datapath emits no event at all (the
relay keeps the count of its clients in ct_config, CT_CFG_EVENT_LISTENERS),
as the kernel builds events only for listeners. The sweeper deletes expired
entries with an in-kernel program that emits DESTROY into the same ring
buffer, so its events arrive here too.

The socket speaks JSON lines, the same objects `ctbpf events -o json` prints:

    {"event": "hello", "version": 1, "pid": ..., "pin_dir": ...}   first line
    {"event": "new"|"update"|"destroy", <the flow, as `list -o json`>,
     "reason": "expired"|"rst"|"reopen"|"user"  (destroy only),
     "timestamp": <unix seconds>}
    {"event": "lost", "count": N, "where": "client"|"relay"|"datapath"}

A client that reads too slowly never blocks the daemon: lines that do not
fit its buffer are dropped and counted, and it is told how many with a
"lost" line once it catches up (conntrack -E's ENOBUFS warning).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ctbpf import abi
from ctbpf.datapath import formats, pins
from ctbpf.datapath.table import Flow, Tuple, decode

log = logging.getLogger(__name__)

SOCKET_NAME = "events.sock"
PROTOCOL_VERSION = 1

EVENT_NAMES = {v: n.lower() for v, n in abi.members("ct_event_type", "CT_EVENT_").items()}
REASON_NAMES = {v: n.lower() for v, n in abi.members("ct_destroy_reason", "CT_DESTROY_").items()}
DESTROY = abi.const("CT_EVENT_DESTROY")
F_ASSURED = abi.const("CT_F_ASSURED")
F_ACCT = abi.const("CT_F_ACCT")
TCP_CLOSING = range(abi.const("CT_TCP_FIN_WAIT"), abi.const("CT_TCP_CLOSE") + 1)
STAT_EVENT_LOST = abi.const("CT_STAT_EVENT_LOST")

#: The entry's expiry was stamped from a clock read made just before the
#: event's own timestamp (a few hundred ns); looking from 1 ms earlier shows a
#: fresh 120 s timeout as 120, as conntrack -E does, not 119. An expired entry
#: still shows 0.
STAMP_SLACK_NS = 1_000_000

#: Poll intervals of the relay (seconds): while clients listen, and while not
#: (the 1 MiB ring holds some 8,000 events between two reads).
POLL_LISTENING = 0.05
POLL_IDLE = 0.1
#: ...and while a client has lines its socket could not take yet.
POLL_BACKLOG = 0.005
#: Events decoded per poll at most; more are dropped and counted (a flood
#: must not hold the daemon's loop or its memory).
MAX_PENDING = 100_000
#: Bytes queued per client at most before its lines are dropped, on top of
#: the socket's own send buffer (raised to SOCKET_BUFFER).
CLIENT_BUFFER = 1 << 20
SOCKET_BUFFER = 4 << 20
MAX_CLIENTS = 16   # each may hold CLIENT_BUFFER + SOCKET_BUFFER when stalled
ACCEPTS_PER_POLL = 32
#: How often the datapath's lost-event counter is checked while clients listen.
LOST_CHECK_INTERVAL = 1.0


# --------------------------------------------------------------------------
# event records and their formats


@dataclass(frozen=True)
class Event:
    type: str                  # "new", "update" or "destroy"
    flow: Flow
    reason: str | None = None  # destroy only
    timestamp: float = 0.0     # unix seconds


def _table_of(key, entry) -> str:
    """The table an entry lives in after the event (the datapath's rule:
    ct_assured once ASSURED, back to ct_new while a TCP flow closes)."""
    closing = key.proto == 6 and entry.state in TCP_CLOSING
    return "ct_assured" if entry.flags & F_ASSURED and not closing else "ct_new"


def from_ct_event(ev, mono_ns: int | None = None, wall: float | None = None) -> Event:
    """One Event from a ring-buffer record (abi.CtEvent). mono_ns/wall: a
    CLOCK_MONOTONIC reading and the wall clock at that instant, to date it."""
    acct = ev.acct if ev.entry.flags & F_ACCT else None
    flow = decode(ev.key, ev.entry, ev.timestamp_ns - STAMP_SLACK_NS, _table_of(ev.key, ev.entry),
                  acct)
    if mono_ns is None:
        mono_ns, wall = time.monotonic_ns(), time.time()
    etype = EVENT_NAMES.get(ev.type, str(ev.type))
    reason = REASON_NAMES.get(ev.reason, str(ev.reason)) if ev.type == DESTROY else None
    return Event(etype, flow, reason, round(wall - (mono_ns - ev.timestamp_ns) / 1e9, 6))


def event_dict(e: Event) -> dict:
    d = {"event": e.type, **formats.flow_dict(e.flow)}
    if e.reason is not None:
        d["reason"] = e.reason
    d["timestamp"] = e.timestamp
    return d


def json_line(e: Event) -> str:
    return json.dumps(event_dict(e), separators=(",", ":"))


def event_from_dict(d: dict) -> Event:
    """The inverse of event_dict (what a client rebuilds from a line)."""
    flags = d.get("flags", [])
    flow = Flow(
        proto=int(d["protonum"]), family=6 if d.get("family") == "ipv6" else 4,
        state=d.get("state"), timeout=int(d.get("timeout", 0)),
        orig=Tuple(**d["orig"]), reply=Tuple(**d["reply"]),
        unreplied="UNREPLIED" in flags, assured="ASSURED" in flags,
        packets=(d["packets"]["orig"], d["packets"]["reply"]),
        bytes=(d["bytes"]["orig"], d["bytes"]["reply"]),
        table=d.get("table", "new"))
    return Event(d["event"], flow, d.get("reason"), float(d.get("timestamp", 0.0)))


_USE = " use=1"


def text_line(e: Event) -> str:
    """`conntrack -E`'s line: the type in brackets right-aligned in 9
    columns, then the listing line without its use= counter. A DESTROY of an
    entry with no time left shows no timeout, as the kernel leaves a zero
    timeout out of destroy events."""
    line = formats.proc_line(e.flow)
    assert line.endswith(_USE), line
    line = line[:-len(_USE)]
    if e.type == "destroy" and e.flow.timeout == 0:
        head = f"{e.flow.proto_name:<8} {e.flow.proto} "
        line = head + line[len(head):].removeprefix("0 ")
    return f"{'[' + e.type.upper() + ']':>9} {line}"


# --------------------------------------------------------------------------
# the daemon's side


class _Client:
    """One connected `ctbpf events`: a non-blocking socket and its queue."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.dropped = 0       # lines dropped since the last "lost" notice
        self.dropped_total = 0

    def notify_drops(self) -> None:
        """Queue the "lost" notice once half the buffer has drained (so a
        full queue does not alternate between dropping and notices)."""
        if self.dropped and self.queued <= CLIENT_BUFFER // 2:
            notice = _lost_line(self.dropped, "client")
            self.dropped = 0
            self._append(notice)

    def push(self, line: bytes) -> None:
        self.notify_drops()
        if self.queued + len(line) > CLIENT_BUFFER:
            self.dropped += 1
            self.dropped_total += 1
            return
        self._append(line)

    def _append(self, line: bytes) -> None:
        self.queue.append(line)
        self.queued += len(line)

    def flush(self) -> bool:
        """Send what the socket takes now; False when the client is gone."""
        while self.queue:
            chunk = b"".join(self.queue) if len(self.queue) > 1 else self.queue[0]
            try:
                sent = self.sock.send(chunk, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self.queue.clear()
            self.queued = len(chunk) - sent
            if self.queued:
                self.queue.append(chunk[sent:])
                return True
        return True

    def alive(self) -> bool:
        """Clients send nothing: readable means it closed (or misbehaves)."""
        try:
            data = self.sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _grow_send_buffer(sock: socket.socket) -> None:
    """Let the kernel hold a burst for a client (SO_SNDBUFFORCE passes
    net.core.wmem_max for root; otherwise the capped SO_SNDBUF)."""
    for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            return
        except OSError:
            continue


def _lost_line(count: int, where: str) -> bytes:
    return (json.dumps({"event": "lost", "count": count, "where": where}) + "\n").encode()


class EventRelay:
    """Daemon service: drain the ring buffer, fan events out to clients."""

    name = "events"

    def __init__(self) -> None:
        self._daemon = None
        self._listener: socket.socket | None = None
        self._path: Path | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: list[_Client] = []
        self._pending: list = []
        self._overflow = 0
        self._next = 0.0
        self._lost_seen: int | None = None
        self._lost_next = 0.0
        self.relayed = 0

    # -- Service -----------------------------------------------------------

    def start(self, daemon) -> None:
        self._daemon = daemon
        daemon.datapath.open_events(self._on_event)
        daemon.datapath.poll_events(0)  # what a previous daemon left: stale
        self._pending.clear()
        self._overflow = 0
        self._publish_listeners()
        path = Path(daemon.run_dir) / SOCKET_NAME
        try:
            self._listen(path)
        except OSError as e:  # tracking goes on; only `ctbpf events` is lost
            log.warning("events: cannot listen on %s (%s): `ctbpf events` will not work",
                        path, e.strerror or e)
            return
        log.info("events: relaying to %s", path)

    def _listen(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.unlink()  # a dead daemon's, or the previous daemon of this namespace's
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # events show every flow: root only
        try:
            sock.bind(str(path))
            sock.listen(16)
            st = path.stat()
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        sock.setblocking(False)
        self._listener, self._path, self._inode = sock, path, (st.st_dev, st.st_ino)

    def due(self) -> float:
        return self._next

    def run_once(self, now: float) -> None:
        self._accept()
        self._daemon.datapath.poll_events(0)
        pending, self._pending = self._pending, []
        overflow, self._overflow = self._overflow, 0
        if self._clients:
            self._check_datapath_losses(now)
            if overflow:
                self._broadcast(_lost_line(overflow, "relay"))
            if pending:
                mono, wall = time.monotonic_ns(), time.time()
                for ev in pending:
                    self._broadcast((json_line(from_ct_event(ev, mono, wall)) + "\n").encode())
                self.relayed += len(pending)
            self._clients = [c for c in self._clients if self._keep(c)]
        if not self._clients:
            self._lost_seen = None  # the next client hears only of its own losses
        self._publish_listeners()
        if any(c.queued for c in self._clients):
            self._next = now + POLL_BACKLOG
        else:
            self._next = now + (POLL_LISTENING if self._clients else POLL_IDLE)

    def _publish_listeners(self, n: int | None = None) -> None:
        """Tell the datapath how many clients listen: with none it emits no
        event at all (a NEW event costs a new flow a ring record). Read and
        written back every poll, so a whole-config write by `ctbpf set`
        that raced with it is put right within one poll."""
        dp = self._daemon.datapath if self._daemon is not None else None
        if dp is None:
            return
        try:
            dp.set_event_listeners(len(self._clients) if n is None else n)
        except OSError as e:
            log.warning("events: cannot tell the datapath its listeners: %s", e)

    def stop(self) -> None:
        for c in self._clients:
            c.flush()
            c.close()
        self._clients = []
        self._publish_listeners()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._path is not None:
            try:  # only our own socket: another daemon may have taken the path
                st = self._path.stat()
                if (st.st_dev, st.st_ino) == self._inode:
                    self._path.unlink()
            except OSError:
                pass

    # -- internals ---------------------------------------------------------

    def _on_event(self, ev) -> None:
        # Called from inside BCC's ring buffer poll: keep it trivial and never
        # raise (BCC turns an EPIPE raised here into exit()).
        if not self._clients:
            return
        if len(self._pending) < MAX_PENDING:
            self._pending.append(ev)
        else:
            self._overflow += 1

    def _accept(self) -> None:
        if self._listener is None:
            return
        for _ in range(ACCEPTS_PER_POLL):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("events: accept: %s", e)
                return
            conn.setblocking(False)
            _grow_send_buffer(conn)
            client = _Client(conn)
            if len(self._clients) >= MAX_CLIENTS:
                client.push((json.dumps({"event": "error", "error": f"too many event clients "
                                         f"(at most {MAX_CLIENTS})"}) + "\n").encode())
                client.flush()
                client.close()
                continue
            # the datapath emits from now on, before the client hears hello
            self._publish_listeners(len(self._clients) + 1)
            client.push((json.dumps({"event": "hello", "version": PROTOCOL_VERSION,
                                     "pid": os.getpid(),
                                     "pin_dir": pins.display(Path(self._daemon.pin_dir))})
                         + "\n").encode())
            self._clients.append(client)
            log.info("events: client connected (%d)", len(self._clients))

    def _broadcast(self, line: bytes) -> None:
        for c in self._clients:
            c.push(line)

    def _keep(self, c: _Client) -> bool:
        c.notify_drops()
        if c.flush() and c.alive():
            return True
        log.info("events: client gone (%d lines dropped for it)", c.dropped_total)
        c.close()
        return False

    def _check_datapath_losses(self, now: float) -> None:
        """Tell clients about events the ring buffer had no room for."""
        if now < self._lost_next:
            return
        self._lost_next = now + LOST_CHECK_INTERVAL
        from ctbpf.datapath import stats  # noqa: PLC0415

        try:
            lost = stats.read_counters(self._daemon.pin_dir)[STAT_EVENT_LOST]
        except OSError as e:
            log.debug("events: cannot read counters: %s", e)
            return
        if self._lost_seen is not None and lost > self._lost_seen:
            self._broadcast(_lost_line(lost - self._lost_seen, "datapath"))
        self._lost_seen = lost

    @property
    def clients(self) -> int:
        return len(self._clients)


# --------------------------------------------------------------------------
# the client's side


def read_lines(sock: socket.socket, bufsize: int = 65536):
    """Yield the lines (str, without newline) a stream socket delivers, until EOF."""
    buf = b""
    while True:
        try:
            data = sock.recv(bufsize)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE):
                return
            raise
        if not data:
            return
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line:
                yield line.decode(errors="replace")
