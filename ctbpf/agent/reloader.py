"""The daemon's reload of its config file on SIGHUP: tunables, table size
and policies, each applied only when it changed, and the status file
updated with the file's digest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ctbpf.agent.configfile import ConfigFile, effective_max, load_file
from ctbpf.datapath.configmap import write_values
from ctbpf.errors import CtbpfError
from ctbpf.policy import mapio, model

# --------------------------------------------------------------------------
# the daemon: apply at start, reload on SIGHUP


def _say(line: str) -> None:
    print(f"ctbpf: {line}", file=sys.stderr, flush=True)


class Reloader:
    """A Daemon reload hook: re-read the config file and apply it. A bad file
    raises UsageError (the daemon prints it and keeps what runs)."""

    def __init__(self, daemon, path: Path, cli_max: int | None, running_max: int,
                 cli_mode: str | None = None) -> None:
        self.cli_mode = cli_mode
        self.daemon = daemon
        self.path = path
        self.cli_max = cli_max
        self.running_max = running_max

    def __call__(self) -> None:
        cfg = load_file(self.path)
        try:
            changes = write_values(self.daemon.pin_dir, cfg.datapath_values())
        except OSError as e:
            raise CtbpfError(f"cannot write ct_config: {e}") from None
        changed = [f"{n}: {old} -> {new}" for n, (old, new) in changes.items() if old != new]
        if changed:
            for line in changed:
                _say(f"reload {self.path}: {line}")
        else:
            _say(f"reload {self.path}: no change")
        for line in apply_policy(self.daemon.pin_dir, cfg, self.cli_mode):
            _say(f"reload {self.path}: {line}")
        wanted = effective_max(self.cli_max, cfg)
        if wanted != self.running_max:
            _say(f"reload {self.path}: max {wanted} needs a restart (`ctbpf run --max "
                 f"{wanted}`); the tables keep {self.running_max} entries")
        self.daemon.write_status(config_sha256=cfg.digest, config_loaded=time.time())


def apply_policy(pin_dir: Path, cfg: ConfigFile | None, cli_mode: str | None) -> list[str]:
    """Put the config's policy (and mode; --mode wins over the file's) in
    force. Without either, the pinned policy stays as it is (a restart
    keeps it, like the flows). Returns what changed."""
    has_policy = cfg is not None and cfg.policies is not None
    mode = cli_mode or (cfg.mode if cfg is not None else None)
    if not has_policy and mode is None:
        return []
    current, _ = mapio.read(pin_dir)
    wanted = model.PolicySet(mode or current.mode,
                              list(cfg.policies) if has_policy else list(current.policies))
    forced = set(cfg.forced) if has_policy else {p.name for p in current.policies}
    return mapio.apply(pin_dir, wanted, forced)


def status_fields(cfg: ConfigFile | None) -> dict:
    """What daemon.json records about the config file."""
    if cfg is None:
        return {"config": None}
    return {"config": str(cfg.path), "config_sha256": cfg.digest, "config_loaded": time.time()}
