"""Where the datapath's maps are pinned.

Pins live on the BPF filesystem. `ip netns exec` gives each command a fresh
/sys without the bpffs mount, so when /sys/fs/bpf is not a bpffs we reach
the host's through /proc/PID/root of init or of the nearest ancestor that
still sees it (the shell that ran `ip netns exec`): a tracker started under
`ip netns exec NS` and a `ctbpf list` run the same way then meet in the
same directory. Each network namespace gets its own default directory, so
trackers in several namespaces never share maps.

A path through another process's root dies with that process: an agent
started in the background from a shell that then exits would lose its maps.
So the bpffs found that way is held open (an O_PATH descriptor) and reached
through /proc/<our pid>/fd/N, which lives exactly as long as we do.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from pathlib import Path

from ctbpf.errors import CtbpfError, UsageError

BPF_FS_MAGIC = 0xCAFE4A11
# The pin directory reaches the C preprocessor as a string literal, so only
# characters that cannot end or escape it are allowed.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_@.+/-]+$")

_MAX_SCAN = 512  # processes looked at before giving up

MAP_NAMES = ("ct_new", "ct_assured", "ct_acct", "ct_config", "ct_stats", "ct_events", "ct_timers",
             "ct_policy", "ct_verdicts", "ct_scratch", "ct_jump_xdp", "ct_jump_tc",
             "ct_fwd_stats")
# Programs the control plane runs without compiling (the sweep program, for
# `ctbpf delete`); replaced with the maps on every load.
PROG_SWEEP = "prog_sweep"
PIN_NAMES = MAP_NAMES + (PROG_SWEEP,)


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(None, use_errno=True)


def is_bpffs(path: str | os.PathLike) -> bool:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(str(path)), ctypes.byref(buf)) != 0:
        return False
    return (buf.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def _ancestors() -> list[int]:
    pids, pid = [], os.getppid()
    while pid > 1 and len(pids) < 64:
        pids.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _candidates():
    yield "/sys/fs/bpf"
    for pid in [1, *_ancestors()]:
        yield f"/proc/{pid}/root/sys/fs/bpf"
    # Orphaned (started in the background, its shell gone): any process
    # that still sees the host's /sys will do.
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in pids[:_MAX_SCAN]:
        yield f"/proc/{pid}/root/sys/fs/bpf"


_held: dict[str, Path] = {}   # /proc/PID/root/sys/fs/bpf -> our /proc/<pid>/fd/N


def _hold(cand: str) -> Path:
    """A path to the bpffs at cand that does not depend on the process
    whose root it goes through staying alive."""
    if not cand.startswith("/proc/"):
        return Path(cand)
    if cand not in _held:
        try:
            fd = os.open(cand, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return Path(cand)
        _held[cand] = Path(f"/proc/{os.getpid()}/fd/{fd}")
    return _held[cand]


def bpffs_root(mount: bool = False) -> Path:
    """The BPF filesystem to pin under; mounts one at /sys/fs/bpf if asked
    and none is reachable."""
    for cand in _candidates():
        if is_bpffs(cand):
            return _hold(cand)
    if mount:
        result = subprocess.run(["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"],
                                capture_output=True, text=True)
        if result.returncode == 0 and is_bpffs("/sys/fs/bpf"):
            return Path("/sys/fs/bpf")
    raise CtbpfError("no BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`")


def netns_name() -> str | None:
    """The `ip netns` name of this network namespace; None for the host's
    (or any unnamed one we cannot tell from it), `ns<inode>` for an unnamed
    namespace that is not the host's."""
    try:
        mine = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    try:
        for entry in sorted(os.listdir("/run/netns")):
            st = os.stat(os.path.join("/run/netns", entry))
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return entry
    except OSError:
        pass
    try:
        host = os.stat("/proc/1/ns/net")
    except OSError:
        return None
    if (mine.st_dev, mine.st_ino) == (host.st_dev, host.st_ino):
        return None
    return f"ns{mine.st_ino}"


def default_pin_dir(mount: bool = False) -> Path:
    root = bpffs_root(mount=mount)
    name = netns_name()
    return root / ("ctbpf" if name is None else f"ctbpf@{name}")


def resolve(pin_dir: str | None, mount: bool = False) -> Path:
    """The pin directory to use: the given one, or this namespace's default."""
    if pin_dir is None:
        path = default_pin_dir(mount=mount)
    else:
        path = Path(pin_dir)
        # A path under /sys/fs/bpf that this mount namespace cannot see
        # is reached through the host's mount namespace.
        if str(path).startswith("/sys/fs/bpf/") and not is_bpffs("/sys/fs/bpf"):
            try:
                path = bpffs_root() / path.relative_to("/sys/fs/bpf")
            except CtbpfError:
                pass
    if not _SAFE_PATH.match(str(path)):
        raise UsageError(f"pin dir {pin_dir!r}: use an absolute path of letters, digits and _@.+/-")
    return path


def display(path: Path | str) -> str:
    """The path as users know it: /sys/fs/bpf/..., never /proc/PID/root/...
    or /proc/PID/fd/N/... (a held bpffs root, see _hold)."""
    parts = Path(path).parts
    if len(parts) > 4 and parts[1] == "proc" and parts[3] == "root":
        return "/" + "/".join(parts[4:])
    if len(parts) >= 5 and parts[1] == "proc" and parts[3] == "fd":
        return "/".join(("/sys/fs/bpf",) + parts[5:])
    return str(path)
