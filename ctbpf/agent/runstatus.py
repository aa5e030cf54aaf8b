"""The daemon's run directory (/run/ctbpf, or /run/ctbpf@NETNS) and its
status file daemon.json: what a command reads to find the daemon that
tracks on a pin dir, and whether it is alive.
"""

from __future__ import annotations




import json
import os
from pathlib import Path

from ctbpf.datapath import pins

def daemon_status(pin_dir: Path) -> dict | None:
    """daemon.json of this network namespace's daemon if it is alive and
    runs on pin_dir."""

    try:
        status = json.loads((run_dir() / "daemon.json").read_text())
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
    """The pid of this network namespace's daemon if it runs on pin_dir."""
    status = daemon_status(pin_dir)
    return int(status["pid"]) if status else None


RUN_ROOT = Path("/run/ctbpf")


def run_dir(netns: str | None = None) -> Path:
    """Where a daemon of this network namespace keeps its status file and
    sockets (plain files cannot live on bpffs)."""
    name = pins.netns_name() if netns is None else netns
    return RUN_ROOT / (name or "host")
