"""Whether the tracker a command talks to is ready, and waiting (bounded)
while it starts.

A tracker is starting from the moment `ctbpf run` exists until its ready
line: first the process alone (imports, compiling), then with the pin
directory's lock held (loading, pinning, attaching). Its maps appear all at
once, config written (ctbpf/agent/adoption.py pins them in a staging directory
first), but the commands that read or write them still wait for the
daemon's status file, which it writes just before the ready line. A command
run in that window waits up to WAIT_S and then says so in one line, instead
of failing on half a tracker.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ctbpf.datapath import pins
from ctbpf.errors import CtbpfError

WAIT_S = 10.0     # how long a command waits for a starting tracker (BCC compiles: 2-5 s)
POLL_S = 0.05
_MAX_SCAN = 4096  # processes looked at for a `ctbpf run` still starting


class StillStarting(CtbpfError):
    """The tracker did not become ready within the wait."""


def lock_held(pin_dir: Path) -> bool:
    """Whether a daemon (or a resize) holds the pin directory's lock."""
    try:
        fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)   # closing drops our shared lock, if we got it
    return False


def _is_ctbpf_run(argv: list[str]) -> bool:
    """`ctbpf [opts] run ...` or `python -m ctbpf [opts] run ...`."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "ctbpf" or (
                arg == "-m" and i + 1 < len(argv) and argv[i + 1] in ("ctbpf", "ctbpf.main")):
            return "run" in argv[i + 1:]
    return False


def starting_pids() -> list[int]:
    """`ctbpf run` processes of this network namespace other than us."""
    try:
        mine = os.stat("/proc/self/ns/net")
    except OSError:
        return []
    found = []
    names = [p for p in os.listdir("/proc") if p.isdigit()]
    for name in names[:_MAX_SCAN]:
        pid = int(name)
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            if not _is_ctbpf_run(argv):
                continue
            ns = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (mine.st_dev, mine.st_ino):
            found.append(pid)
    return found


def _ready(pin_dir: Path) -> bool:
    from ctbpf.agent.runstatus import daemon_status  # noqa: PLC0415

    return daemon_status(pin_dir) is not None


def _missing(pin_dir: Path) -> list[str]:
    return [name for name in pins.MAP_NAMES if not (pin_dir / name).exists()]


def state(pin_dir: Path) -> tuple[str, list[str]]:
    """("ready" | "starting" | "absent", missing map names)."""
    missing = _missing(pin_dir)
    if lock_held(pin_dir):
        return ("ready" if not missing and _ready(pin_dir) else "starting"), missing
    if not missing:
        return "ready", missing      # a datapath kept attached, with no daemon: readable
    if starting_pids():
        return "starting", missing
    return "absent", missing


def wait_ready(pin_dir: Path, wait: float = WAIT_S) -> Path:
    """pin_dir once its tracker is ready; waits up to `wait` seconds for one
    that is starting. Raises StillStarting after the wait, and CtbpfError
    when there is no tracker at all."""
    deadline = time.monotonic() + wait
    for _ in range(int(wait / POLL_S) + 2):   # bounded in count and in time
        st, missing = state(pin_dir)
        if st == "ready":
            return pin_dir
        if st == "absent":
            raise CtbpfError(f"no ctbpf maps in {pins.display(pin_dir)} (is `ctbpf run` "
                             f"running in this network namespace? missing: "
                             f"{', '.join(missing)})")
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    raise StillStarting(f"the tracker for {pins.display(pin_dir)} is still starting; "
                        f"try again in a moment")
