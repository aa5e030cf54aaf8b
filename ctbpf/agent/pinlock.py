"""One daemon per pin dir: an exclusive flock on the directory, held for the
daemon's life (or a resize's). The kernel drops it when the process dies,
SIGKILL included, so a crashed daemon never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ctbpf.agent.runstatus import daemon_status
from ctbpf.datapath import pins
from ctbpf.errors import CtbpfError, UsageError

# --------------------------------------------------------------------------
# one daemon per pin dir


class PinLock:
    """An exclusive flock on the pin directory, held for a daemon's life
    (or a resize's); the kernel drops it when the process dies, SIGKILL
    included, so a crashed daemon never blocks the next one."""

    def __init__(self, pin_dir: Path) -> None:
        self.pin_dir = pin_dir
        self.fd: int | None = None
        self.created = False   # the directory was made for this lock

    def try_acquire(self) -> bool:
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "PinLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_daemon(pin_dir: Path) -> PinLock:
    """The pin dir's lock for `ctbpf run`; CtbpfError if a daemon holds it.
    The directory is made if need be, once BCC is known to be there and
    only on a BPF filesystem; lock.created says so, for the caller to remove
    it again if the start fails."""
    from ctbpf.datapath.loader import _import_bcc  # noqa: PLC0415

    _import_bcc()
    shown = pins.display(pin_dir)
    if pin_dir.exists() and not pin_dir.is_dir():
        raise UsageError(f"pin dir {shown}: is not a directory")
    where = pin_dir if pin_dir.exists() else pin_dir.parent
    if not pins.is_bpffs(where):
        raise CtbpfError(f"pin dir {shown} is not on a BPF filesystem "
                         f"(mount one with `mount -t bpf bpf /sys/fs/bpf`)")
    created = False
    try:
        pin_dir.mkdir()
        created = True
    except FileExistsError:
        if not pin_dir.is_dir():
            raise UsageError(f"pin dir {shown}: is not a directory") from None
    except OSError as e:
        raise CtbpfError(f"pin dir {shown}: {e.strerror}") from None
    lock = PinLock(pin_dir)
    lock.created = created
    if not lock.try_acquire():
        status = daemon_status(pin_dir)
        who = f" (pid {status['pid']})" if status else ""
        ifaces = status.get("ifaces") if status else None
        where = f" with XDP on {', '.join(map(str, ifaces))}" if isinstance(ifaces, list) else ""
        raise CtbpfError(f"a ctbpf daemon{who} already tracks{where} with the maps in "
                         f"{shown}; stop it first (a stopped or killed one's "
                         f"datapath is adopted)")
    return lock
