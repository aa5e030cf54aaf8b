"""The staging directories beside a pin dir: `<pin>+rebuild-<pid>`, where a
rebuild pins its new maps (ctbpf.agent.rebuild), and `<pin>+start-<pid>`,
where a first start pins its set before moving it into place
(ctbpf.agent.adoption.start_fresh); and the removal of those whose process
is gone."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ctbpf.datapath import pins

log = logging.getLogger(__name__)


# bpffs refuses dots in names ("reserved for future use"); `+` is allowed
# there and in the loader's pin dir pattern, and rare in real pin dirs.
TEMP_SUFFIX = "+rebuild-"


# A first start pins into `<pin>+start-<pid>` and moves the set into place
# once ct_config is written (see start_fresh).
START_SUFFIX = "+start-"


def temp_pin_dir(pin_dir: Path) -> Path:
    return pin_dir.parent / f"{pin_dir.name}{TEMP_SUFFIX}{os.getpid()}"


def remove_stale_temp(pin_dir: Path) -> None:
    """Remove `<pin>+rebuild-<pid>` and `<pin>+start-<pid>` directories
    whose process is gone."""
    from ctbpf.datapath.loader import remove_pins  # noqa: PLC0415

    suffixes = "|".join(re.escape(x) for x in (TEMP_SUFFIX, START_SUFFIX))
    pattern = re.compile(re.escape(pin_dir.name) + f"(?:{suffixes})" + r"(\d+)$")
    try:
        names = os.listdir(pin_dir.parent)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        log.info("removing the leftover %s", pins.display(pin_dir.parent / name))
        remove_pins(pin_dir.parent / name)
