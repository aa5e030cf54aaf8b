"""ctbpf events: flow events as they happen, like conntrack -E."""

import sys

from ctbpf.cli.commands.common import add_filters, add_pin_dir

NAME = "events"
HELP = "show flow events as they happen: NEW, UPDATE, DESTROY (like conntrack -E)"


def add_arguments(p) -> None:
    add_pin_dir(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="text: conntrack -E lines; json: one object per line")
    add_filters(p)


class _Stop(Exception):
    pass


def _raise_stop(_signum, _frame):
    raise _Stop


def _socket_path(pin_dir_arg):
    """events.sock of the daemon of this network namespace, or of the daemon
    using the given pin dir."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from ctbpf.agent import events, runstatus  # noqa: PLC0415
    from ctbpf.datapath import pins
    from ctbpf.errors import CtbpfError  # noqa: PLC0415

    here = runstatus.run_dir()
    if pin_dir_arg is None:
        return here / events.SOCKET_NAME
    want = pins.display(pins.resolve(pin_dir_arg))
    try:
        others = sorted(d for d in runstatus.RUN_ROOT.iterdir() if d != here)
    except OSError:
        others = []
    for d in [here, *others]:
        try:
            status = json.loads((d / "daemon.json").read_text())
        except (OSError, ValueError):
            continue
        if pins.display(Path(str(status.get("pin_dir", "")))) == want:
            return d / events.SOCKET_NAME
    raise CtbpfError(f"no ctbpf daemon is running with pin dir {want} (events come from "
                     f"`ctbpf run`)")


def _connect(path):
    import socket  # noqa: PLC0415

    from ctbpf.errors import CtbpfError  # noqa: PLC0415

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise CtbpfError(f"no ctbpf daemon is running in this network namespace (nothing "
                         f"listens on {path}): events come from `ctbpf run`") from None
    return sock


def run(args) -> int:
    import json  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from ctbpf.agent import events  # noqa: PLC0415
    from ctbpf.errors import CtbpfError  # noqa: PLC0415
    from ctbpf.cli.filters import FlowFilter  # noqa: PLC0415

    log = logging.getLogger("ctbpf.events")
    flt = FlowFilter.from_args(args)   # bad filters: exit 2 before connecting
    sock = _connect(_socket_path(args.pin_dir))
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    shown = 0
    try:
        for line in events.read_lines(sock):
            try:
                obj = json.loads(line)
                kind = obj["event"]
                if kind in ("new", "update", "destroy"):
                    ev = events.event_from_dict(obj)
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge: skip what we cannot read
            if kind == "lost":
                why = {"client": "this client read too slowly",
                       "relay": "the daemon could not keep up"}.get(
                           obj.get("where"), "the datapath's ring buffer was full")
                print(f"ctbpf: warning: {obj.get('count')} events lost ({why})",
                      file=sys.stderr, flush=True)
                continue
            if kind == "hello":
                log.info("receiving events from ctbpf run (pid %s, maps in %s)",
                         obj.get("pid"), obj.get("pin_dir"))
                continue
            if kind == "error":
                raise CtbpfError(f"the daemon refused: {obj.get('error')}")
            if kind not in ("new", "update", "destroy") or not flt.matches(ev.flow):
                continue
            out = line if args.output == "json" else events.text_line(ev)
            sys.stdout.write(out + "\n")
            sys.stdout.flush()
            shown += 1
    except _Stop:
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    raise CtbpfError(f"the daemon went away: event stream closed after {shown} events")
