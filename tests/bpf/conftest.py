"""Harness for the datapath unit tests: the real programs, compiled once and
loaded into this kernel, fed crafted frames through BPF_PROG_TEST_RUN.

    datapath  (session) the loaded Datapath, maps pinned in a unique
              /sys/fs/bpf/ctbpf-test-<hex>; closed and unpinned at the end,
              whatever happened
    tracker   (per test) a Tracker on that datapath, with both flow tables
              emptied and every tunable at its default before and after

Needs root and a kernel that loads BPF. Without them the tests skip, except
under CI=true, where they fail with the reason: CI must never pass by
skipping.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctbpf import abi, tunables  # noqa: E402
from ctbpf.datapath import bpfsys, stats, table
from ctbpf.errors import CtbpfError  # noqa: E402

BPFFS = Path("/sys/fs/bpf")
PIN_PREFIX = "ctbpf-test-"
MAX_ENTRIES = 4096
XDP_PASS = 2
NS = 1_000_000_000

STATE_NAMES = abi.PKT_STATE_NAMES                 # index -> new/established/...
REASON_NAMES = abi.INVALID_REASON_NAMES           # reason -> tcp_state/...
EVENT_NAMES = {v: n for v, n in abi.STAT_NAMES.items() if not n.startswith("pkt_")}
INVALID_BASE = abi.const("CT_STAT_INVALID_BASE")
KEY_SIZE = ctypes.sizeof(abi.CtKey)
ENTRY_SIZE = ctypes.sizeof(abi.CtEntry)
TABLES = ("ct_new", "ct_assured")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def cannot(reason: str) -> None:
    """Skip, or fail under CI=true."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------
# the loaded datapath


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the datapath tests need root (CAP_BPF, CAP_NET_ADMIN) to load BPF programs"
    try:
        import bcc  # noqa: F401, PLC0415
    except ImportError:
        return "BCC is missing (Debian python3-bpfcc in a venv with --system-site-packages)"
    from ctbpf.datapath.pins import is_bpffs  # noqa: PLC0415

    if not is_bpffs(BPFFS):
        return f"{BPFFS} is not a BPF filesystem (mount -t bpf bpf {BPFFS})"
    return None


@pytest.fixture(scope="session")
def datapath():
    from ctbpf.datapath.loader import Datapath, remove_pins  # noqa: PLC0415

    reason = _unavailable()
    if reason:
        cannot(reason)
    pin_dir = BPFFS / f"{PIN_PREFIX}{secrets.token_hex(4)}"
    dp = Datapath(pin_dir, max_entries=MAX_ENTRIES)
    try:
        try:
            dp.load()
        except CtbpfError as e:
            cannot(f"BPF cannot load here: {e}")
        yield dp
    finally:
        dp.close()
        remove_pins(pin_dir)
    assert not pin_dir.exists(), f"pins left behind in {pin_dir}"


# --------------------------------------------------------------------------
# what one packet did


@dataclass(frozen=True)
class Outcome:
    """The counters one frame moved: its user-land state (None for a
    non-IP frame), the invalid reason if INVALID, and the other events
    (found, insert, delete, promote, ignored, ...) with their increments."""

    state: str | None
    reason: str | None = None
    events: dict = field(default_factory=dict)

    def moved(self, event: str) -> int:
        return self.events.get(event, 0)

    def __str__(self) -> str:
        extra = f"/{self.reason}" if self.reason else ""
        return f"{self.state}{extra} {self.events}"


@dataclass
class RawEntry:
    table: str          # "ct_new" or "ct_assured"
    key: object         # abi.CtKey
    entry: object       # abi.CtEntry

    @staticmethod
    def timeout_is(flow: table.Flow, seconds: int) -> bool:
        """A listed timeout equals `seconds`, within the second that may
        have passed since the packet stamped it."""
        return seconds - 1 <= flow.timeout <= seconds

    def flow(self) -> table.Flow:
        return table.decode(self.key, self.entry, time.monotonic_ns(), self.table)


class Tracker:
    """The datapath seen from a test: send frames, read flows, set
    tunables, and edit entries' clocks so nothing needs to sleep."""

    def __init__(self, dp) -> None:
        self.dp = dp
        self.pin_dir: Path = dp.pin_dir
        self.prog_fd = dp.prog_fd()

    # -- packets ---------------------------------------------------------

    def counters(self) -> list[int]:
        return stats.read_counters(self.pin_dir)

    def send(self, frm: bytes) -> Outcome:
        """Run the XDP program once on frm; return what it counted. Exactly
        one user-land state counter moves for an IP frame, none (but
        non_ip) for anything else; exactly one reason counter moves iff
        the packet is INVALID."""
        before = self.counters()
        run = bpfsys.prog_test_run(self.prog_fd, frm)
        after = self.counters()
        delta = [a - b for a, b in zip(after, before)]
        assert run.retval == XDP_PASS, f"XDP verdict {run.retval}: observe mode must pass all"
        states = {STATE_NAMES[i]: delta[i] for i in STATE_NAMES if delta[i]}
        reasons = {REASON_NAMES[r]: delta[INVALID_BASE + r] for r in REASON_NAMES
                   if delta[INVALID_BASE + r]}
        events = {EVENT_NAMES[i]: delta[i] for i in EVENT_NAMES if delta[i]}
        assert len(states) <= 1 and all(v == 1 for v in states.values()), \
            f"one frame moved state counters {states}"
        state = next(iter(states), None)
        if state is None:
            assert events.get("non_ip") == 1, \
                f"no state counter moved for an IP frame (events {events})"
        if state == "invalid":
            assert len(reasons) == 1 and list(reasons.values()) == [1], \
                f"an INVALID packet must move one reason counter, moved {reasons}"
        else:
            assert not reasons, f"reason counters {reasons} moved for a {state} packet"
        return Outcome(state, next(iter(reasons), None), events)

    # -- flows -----------------------------------------------------------

    def flows(self) -> list[table.Flow]:
        return table.read_flows(self.pin_dir)

    @staticmethod
    def timeout_is(flow: table.Flow, seconds: int) -> bool:
        """A listed timeout equals `seconds`, within the second that may
        have passed since the packet stamped it."""
        return seconds - 1 <= flow.timeout <= seconds

    def flow(self) -> table.Flow:
        flows = self.flows()
        assert len(flows) == 1, f"expected exactly one flow, found {len(flows)}: {flows}"
        return flows[0]

    def entries(self) -> list[RawEntry]:
        """Every entry of both tables, expired or not, raw."""
        out = []
        for name in TABLES:
            keys, values, count = table.read_raw(self.pin_dir, name)
            for i in range(count):
                out.append(RawEntry(name, abi.CtKey.from_buffer_copy(keys, i * KEY_SIZE),
                                    abi.CtEntry.from_buffer_copy(values, i * ENTRY_SIZE)))
        return out

    def entry(self, match=None) -> RawEntry:
        found = [e for e in self.entries() if match is None or match(e.flow())]
        assert len(found) == 1, f"expected one matching entry, found {len(found)}"
        return found[0]

    def _write(self, raw: RawEntry) -> None:
        fd = bpfsys.obj_get(str(self.pin_dir / raw.table))
        try:
            bpfsys.update(fd, raw.key, raw.entry, bpfsys.BPF_EXIST)
        finally:
            os.close(fd)

    def age(self, *, expires_in: float | None = None, created_ago: float | None = None,
            match=None) -> None:
        """Rewrite one entry's clocks: expiry `expires_in` seconds from now
        (negative: already expired), creation `created_ago` seconds ago."""
        raw = self.entry(match)
        now = time.monotonic_ns()
        if expires_in is not None:   # the tick the instant falls in: expired from then on
            raw.entry.expires = abi.ticks(now + int(expires_in * NS))
        if created_ago is not None:
            raw.entry.created = abi.ticks(now - int(created_ago * NS))
        self._write(raw)

    def expire(self, match=None) -> None:
        self.age(expires_in=-1, match=match)

    # -- tunables and reset ---------------------------------------------

    def set(self, **values: int) -> None:
        """Write tunables (by sysctl name); the others keep their current value."""
        from ctbpf.datapath.configmap import read_config, write_config  # noqa: PLC0415

        unknown = set(values) - set(tunables.BY_NAME)
        assert not unknown, f"unknown tunables {unknown}"
        current = tunables.from_config(read_config(self.pin_dir))
        current.update(values)
        write_config(self.pin_dir, current)

    def reset(self) -> None:
        """Empty both flow tables, every tunable back to TEST_DEFAULTS."""
        from ctbpf.datapath.configmap import set_event_listeners, write_config  # noqa: PLC0415

        for name in (*TABLES, table.ACCT_MAP):
            keys, _, count = table.read_raw(self.pin_dir, name)
            if count:
                fd = bpfsys.obj_get(str(self.pin_dir / name))
                try:
                    bpfsys.delete_batch(fd, keys, KEY_SIZE)
                finally:
                    os.close(fd)
            assert table.read_raw(self.pin_dir, name)[2] == 0, f"{name} not emptied"
        write_config(self.pin_dir, TEST_DEFAULTS)
        set_event_listeners(self.pin_dir, 0)


# The tunables each test starts from: the defaults, with acct on, since most
# tests read a flow's counters (the tests of acct off say so).
TEST_DEFAULTS = {**tunables.defaults(), "acct": 1}


@pytest.fixture
def tracker(datapath):
    t = Tracker(datapath)
    t.reset()
    yield t
    t.reset()
