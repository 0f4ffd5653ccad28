"""Cleanup policies as data: what a policy says, what matching reads of a session,
and whether a session meets a policy's conditions. Pure, tested without I/O, and
below the database layer, which reads and stores these; what each action does and
which matched sessions it leaves alone is :mod:`recorder.cleanup.actions`.

Every age is the recorder's own: when it first and last saw a session and when it
recorded its final status. A daemon's clock is data, never what decides a deletion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recorder.protocol.statuses import TERMINAL_STATUSES

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


# Longer than any recording is kept; past it the schedulers' and clocks' arithmetic
# overflows (an interval of 10^9 days raised from APScheduler).
MAX_DURATION = 100 * 365.25 * 86_400


class PolicyError(ValueError):
    """A policy that cannot run: the message names the key (the loader adds the file)."""


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` as seconds."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise PolicyError(f"expected a duration like 30s, 15m, 12h, 7d or 2w, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not seconds <= MAX_DURATION:  # also inf, which 400 digits make
        raise PolicyError(f"{text.strip()!r} is longer than a century")
    return seconds


def parse_size(text: str) -> int:
    """``500MB``, ``2GiB`` as bytes."""
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise PolicyError(f"expected a size like 500MB or 2GiB, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


@dataclass(frozen=True)
class Conditions:
    """The ``when`` table: every condition given must hold."""

    status: tuple[str, ...] | None = None
    idle_for: float | None = None
    ended_before: float | None = None
    started_before: float | None = None
    orchestrator_id: str | None = None
    session_type: str | None = None
    min_frames: int | None = None
    max_frames: int | None = None


@dataclass(frozen=True)
class Policy:
    """When (a cron expression, or ``every 5m``), what (an action's name, see
    :mod:`recorder.cleanup.actions`) and which sessions (``when``; ``keep_last`` spares
    the newest that match)."""

    name: str
    schedule: str
    action: str
    when: Conditions = field(default_factory=Conditions)
    enabled: bool = True
    dry_run: bool = False
    keep_last: int = 0


@dataclass(frozen=True)
class SessionFacts:
    """What matching reads of a session (a row of the sessions table).

    Only the recorder's own times: when it first and last saw the session, when it
    recorded its final status, and when it last saw the session at work
    (``active_us``: the recorder's own status polls and stops, which every frame's
    last_seen_us counts, are not work). The daemon's startedAt/endedAt are data
    from a clock that may be anywhere (a year behind, a century ahead), and are not
    here.
    """

    id: str
    status: str | None
    orchestrator_id: str | None
    session_type: str | None
    first_seen_us: int
    last_seen_us: int
    finished_us: int | None
    frame_count: int
    active_us: int | None = None

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> SessionFacts:
        # A copy made before migration 0011 has no finished_us nor active_us: last
        # seen stands in for both.
        keys = row.keys()
        values: dict[str, Any] = {
            name: row[name] if name in keys else None for name in cls.__dataclass_fields__
        }
        return cls(**values)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def ended_us(self) -> int | None:
        """When the recorder saw it end; never before the end it saw."""
        if not self.finished:
            return None
        return self.finished_us if self.finished_us is not None else self.last_seen_us

    @property
    def started_us(self) -> int:
        return self.first_seen_us

    @property
    def busy_us(self) -> int:
        """When the recorder last saw it at work: what ``idle_for`` is measured from."""
        return self.active_us if self.active_us is not None else self.last_seen_us


def matches(conditions: Conditions, session: SessionFacts, now_us: int) -> bool:
    c = conditions
    if c.status is not None and session.status not in c.status:
        return False
    if c.idle_for is not None and now_us - session.busy_us < c.idle_for * 1e6:
        return False
    if c.ended_before is not None:
        ended = session.ended_us
        if ended is None or ended > now_us - c.ended_before * 1e6:
            return False
    if c.started_before is not None and session.started_us > now_us - c.started_before * 1e6:
        return False
    if c.orchestrator_id is not None and session.orchestrator_id != c.orchestrator_id:
        return False
    if c.session_type is not None and session.session_type != c.session_type:
        return False
    if c.min_frames is not None and session.frame_count < c.min_frames:
        return False
    return not (c.max_frames is not None and session.frame_count > c.max_frames)


@dataclass(frozen=True)
class MatchState:
    """What the database remembers of a policy's match of a session."""

    first_matched_us: int
    # stop_session requests sent while it went on matching, and when the next may go.
    attempts: int = 0
    retry_us: int | None = None


@dataclass(frozen=True)
class Decision:
    session_id: str
    # "act", or why not: "pinned", "kept" (keep_last), or the action's own reason
    # (recorder.cleanup.actions: "active", "grace", "unknown", "waiting", "given up").
    verdict: str
