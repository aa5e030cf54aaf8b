"""The daemon's run directory (/run/ctbpf, or /run/ctbpf@NETNS) and its
status file daemon.json: what a command reads to find the daemon that
tracks on a pin dir, and whether it is alive.
"""

from __future__ import annotations




import json
import os
from pathlib import Path

from ctbpf.datapath import pins

#: Other namespaces' status files looked at, at most.
_MAX_RUN_DIRS = 256


def daemon_status(pin_dir: Path, anywhere: bool = True) -> dict | None:
    """daemon.json of the daemon that runs on pin_dir, if it is alive: this
    network namespace's, else (anywhere) another namespace's: `--pin-dir`
    may name maps that a daemon in another namespace serves."""
    own = run_dir()
    found = _status_in(own, pin_dir)
    if found is not None or not anywhere:
        return found
    try:
        others = sorted(p for p in RUN_ROOT.iterdir() if p != own)[:_MAX_RUN_DIRS]
    except OSError:
        return None
    for d in others:
        found = _status_in(d, pin_dir)
        if found is not None:
            return found
    return None


def _status_in(directory: Path, pin_dir: Path) -> dict | None:
    try:
        status = json.loads((directory / "daemon.json").read_text())
        pid = int(status["pid"])
        a, b = os.stat(status["pin_dir"]), os.stat(pin_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return status


def daemon_pid(pin_dir: Path) -> int | None:
    """The pid of this network namespace's daemon if it runs on pin_dir
    (requests to it go through this namespace's run dir)."""
    status = daemon_status(pin_dir, anywhere=False)
    return int(status["pid"]) if status else None


RUN_ROOT = Path("/run/ctbpf")


def run_dir(netns: str | None = None) -> Path:
    """Where a daemon of this network namespace keeps its status file and
    sockets (plain files cannot live on bpffs)."""
    name = pins.netns_name() if netns is None else netns
    return RUN_ROOT / (name or "host")
