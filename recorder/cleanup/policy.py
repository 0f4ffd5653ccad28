"""Cleanup policies as data, and which sessions they match: pure, tested without I/O.

A policy says when (a cron expression, or ``every 5m``), what (``stop_session``,
``purge`` or ``compact``) and which sessions: every condition given in ``when``
must hold. ``keep_last`` spares the newest matching sessions; pinned sessions are
never touched; purge and compact, which destroy recorded data, wait until a
session has matched for ``cleanup.grace``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recorder.protocol.index import LOST_STATUS, TERMINAL_STATUSES

ACTIONS = ("stop_session", "purge", "compact")
DESTRUCTIVE = frozenset({"purge", "compact"})
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
    name: str
    schedule: str
    action: str
    when: Conditions = field(default_factory=Conditions)
    enabled: bool = True
    dry_run: bool = False
    keep_last: int = 0

    @property
    def destructive(self) -> bool:
        return self.action in DESTRUCTIVE


@dataclass(frozen=True)
class SessionFacts:
    """What matching reads of a session (a row of the sessions table).

    Only the recorder's own times: when it first and last saw the session, and when
    it recorded its final status. The daemon's startedAt/endedAt are data from a
    clock that may be anywhere (a year behind, a century ahead), and are not here.
    """

    id: str
    status: str | None
    orchestrator_id: str | None
    session_type: str | None
    first_seen_us: int
    last_seen_us: int
    finished_us: int | None
    frame_count: int

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> SessionFacts:
        # A copy made before migration 0011 has no finished_us: last seen stands in.
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


def matches(conditions: Conditions, session: SessionFacts, now_us: int) -> bool:
    c = conditions
    if c.status is not None and session.status not in c.status:
        return False
    if c.idle_for is not None and now_us - session.last_seen_us < c.idle_for * 1e6:
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


# A stop the daemon does not act on (the session goes on matching) is sent again
# after 1, 4 and 16 minutes, then the policy gives up on that session: a daemon that
# answers each stop with a 10 MB error must not be asked every run.
STOP_ATTEMPTS = 4
STOP_RETRY_S = 60.0


def stop_retry_delay(attempts: int) -> float:
    """Seconds before the next stop request, after ``attempts`` were sent."""
    return STOP_RETRY_S * 4.0 ** max(0, attempts - 1)


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
    # "act", or why not: "pinned", "kept" (keep_last), "grace", "active" (purge and
    # compact leave a session that is still running), "unknown" (the daemon no longer
    # knows it: nothing to stop), "waiting" (a stop was sent; the next waits for its
    # backoff), "given up" (stops sent STOP_ATTEMPTS times, and it still matches).
    verdict: str


def decide(
    policy: Policy,
    sessions: Iterable[SessionFacts],
    now_us: int,
    *,
    pinned: frozenset[str] = frozenset(),
    matched: Mapping[str, MatchState] | None = None,
    grace: float = 0.0,
) -> list[Decision]:
    """Every session the policy matches, newest first, and what to do with it."""
    found = sorted(
        (s for s in sessions if matches(policy.when, s, now_us)),
        key=lambda s: (s.started_us, s.id),
        reverse=True,
    )
    known = matched or {}
    return [
        Decision(session.id, _verdict(policy, session, rank, now_us, pinned, known, grace))
        for rank, session in enumerate(found)
    ]


def _verdict(
    policy: Policy,
    session: SessionFacts,
    rank: int,
    now_us: int,
    pinned: frozenset[str],
    known: Mapping[str, MatchState],
    grace: float,
) -> str:
    state = known.get(session.id)
    if session.id in pinned:
        return "pinned"
    if rank < policy.keep_last:
        return "kept"
    if policy.destructive and not session.finished:
        return "active"
    if policy.action == "stop_session":
        if session.status == LOST_STATUS:
            return "unknown"
        if state is not None and state.attempts >= STOP_ATTEMPTS:
            return "given up"
        if state is not None and state.retry_us is not None and now_us < state.retry_us:
            return "waiting"
    first = state.first_matched_us if state is not None else now_us
    if policy.destructive and grace > 0 and now_us - first < grace * 1e6:
        return "grace"
    return "act"


_SAID = {
    "given up": f"given up: still matching after {STOP_ATTEMPTS} stop requests",
    "waiting": "waiting: a stop was sent; the next waits for its backoff",
}


def said(policy: Policy, decision: Decision) -> str:
    """What a run's record says of a session: why it was left alone, or, for a dry
    run, what would be done to it."""
    if decision.verdict == "act":
        return f"would {policy.action}"
    return _SAID.get(decision.verdict, decision.verdict)
