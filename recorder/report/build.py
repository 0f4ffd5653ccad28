"""The report of a window of time, built from what the read library returns.

:func:`build_report` reads (through :class:`recorder.db.recordings.Recordings`, no SQL
here) and hands the rows to :func:`aggregate`, a pure function over small row types
that the tests can feed by hand. A scheduled digest reuses both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recorder.db.report_reads import DaemonTokens
from recorder.db.rows import CleanupRun, Connection, Session, Tally
from recorder.protocol.story import span
from recorder.protocol.tame import one_line
from recorder.report.frames import ERROR_CHARS, FirstError, FrameFold, ToolTally, percentile
from recorder.report.links import LinkUptime, link_uptimes

if TYPE_CHECKING:
    from recorder.db.recordings import Recordings

# Rows of each list the report shows, at most (each list says how many there were).
FAILED_SHOWN = 20
SLOWEST_SHOWN = 10
ORCHESTRATORS_SHOWN = 20
TOKEN_SESSIONS_SHOWN = 5


@dataclass(frozen=True)
class FailedSession:
    id: str
    orchestrator: str | None
    ended_us: int
    # Its first error in the window (else the last it had), and where that came from.
    error: str | None
    error_source: str | None


@dataclass(frozen=True)
class SlowSession:
    id: str
    status: str | None
    orchestrator: str | None
    seconds: float
    ended: bool
    frames: int


@dataclass(frozen=True)
class ToolLine:
    name: str
    calls: int
    failed: int
    unanswered: int
    p50_s: float | None
    p95_s: float | None


@dataclass(frozen=True)
class Tokens:
    """The tokens the sessions said they used (metrics.tokensUsed, the last each said
    in the window), and the daemon's own total (metrics.totalTokensUsed) at the
    window's ends."""

    sessions_total: int | float = 0
    sessions_reporting: int = 0
    top: list[tuple[str, int | float]] = field(default_factory=list)
    daemon_before: DaemonTokens | None = None
    daemon_last: DaemonTokens | None = None

    @property
    def daemon_in_window(self) -> int | float | None:
        last, before = self.daemon_last, self.daemon_before
        if last is None or last.tokens is None:
            return None
        start = before.tokens if before is not None and before.tokens is not None else 0
        return last.tokens - start if last.tokens >= start else None  # the daemon restarted


@dataclass(frozen=True)
class CleanupLine:
    policy: str
    action: str
    runs: int
    dry_runs: int
    matched: int
    acted: int
    frames: int
    failed: int


@dataclass(frozen=True)
class Growth:
    days: list[tuple[int, int, int]]  # (day_us, frames, bytes)
    database_bytes: int | None

    @property
    def frames(self) -> int:
        return sum(d[1] for d in self.days)

    @property
    def bytes(self) -> int:
        return sum(d[2] for d in self.days)


@dataclass(frozen=True)
class Report:
    since_us: int
    now_us: int
    sessions: int
    by_status: list[tuple[str, int]]
    # (orchestrator, sessions, failed), most first; the rest summed as "(others)".
    by_orchestrator: list[tuple[str, int, int]]
    failed: list[FailedSession]
    failed_total: int
    tools: list[ToolLine]
    slowest: list[SlowSession]
    tokens: Tokens
    links: list[LinkUptime]
    cleanup: list[CleanupLine]
    growth: Growth

    @property
    def tool_calls(self) -> int:
        return sum(t.calls for t in self.tools)

    @property
    def tools_failed(self) -> int:
        return sum(t.failed for t in self.tools)


@dataclass(frozen=True)
class Inputs:
    """What the report is built from, as the read library returns it."""

    since_us: int
    now_us: int
    sessions: Sequence[Session]
    fold: FrameFold
    links: Sequence[Connection] = ()
    first_links: Mapping[str, int] = field(default_factory=dict)
    heartbeats: Mapping[str, int] = field(default_factory=dict)
    runs: Sequence[CleanupRun] = ()
    days: Sequence[Tally] = ()
    database_bytes: int | None = None
    daemon: tuple[DaemonTokens | None, DaemonTokens | None] = (None, None)


def build_report(recordings: Recordings, since_us: int, now_us: int) -> Report:
    """The report of [since, now), read through ``recordings``."""
    fold = FrameFold()
    for frame in recordings.report_frames(since_us, now_us):
        fold.add(frame)
    return aggregate(
        Inputs(
            since_us,
            now_us,
            recordings.sessions_between(since_us, now_us),
            fold,
            recordings.links_between(since_us, now_us),
            recordings.first_links(),
            {i.name: i.heartbeat_us for i in recordings.instances_seen()},
            recordings.cleanup_runs_between(since_us, now_us),
            recordings.days_between(since_us, now_us),
            recordings.reader.size_bytes(),
            recordings.daemon_tokens(since_us, now_us),
        )
    )


def aggregate(given: Inputs) -> Report:
    """The report, from its inputs. Pure."""
    sessions = given.sessions
    failed = _failed(sessions, given.fold.errors, given.since_us)
    return Report(
        given.since_us,
        given.now_us,
        len(sessions),
        Counter(s.status or "?" for s in sessions).most_common(),
        _orchestrators(sessions),
        failed[:FAILED_SHOWN],
        len(failed),
        _tools(given.fold.done()),
        _slowest(sessions, given.now_us),
        _tokens(given.fold.tokens, given.daemon),
        link_uptimes(
            given.links, given.first_links, given.heartbeats, given.since_us, given.now_us
        ),
        _cleanup(given.runs),
        Growth(
            [(int(t.day_us or 0), int(t.frames), int(t.bytes)) for t in given.days],
            given.database_bytes,
        ),
    )


def _failed(
    sessions: Iterable[Session], errors: Mapping[str, FirstError], since_us: int
) -> list[FailedSession]:
    """The sessions that failed in the window, the latest first."""
    found = []
    for s in sessions:
        ended = s.finished_us or s.last_seen_us
        if s.status != "failed" or ended < since_us:
            continue
        first = errors.get(s.id)
        error: str | None = None
        source: str | None = None
        if first is not None:
            error, source = first.text, first.source
        elif s.last_error is not None:
            error, source = one_line(s.last_error, ERROR_CHARS), "last_error"
        found.append(FailedSession(s.id, s.orchestrator_id, ended, error, source))
    found.sort(key=lambda f: (-f.ended_us, f.id))
    return found


def _orchestrators(sessions: Iterable[Session]) -> list[tuple[str, int, int]]:
    counts: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for s in sessions:
        name = s.orchestrator_id or "?"
        counts[name] += 1
        failed[name] += s.status == "failed"
    ranked = sorted(counts, key=lambda n: (-counts[n], n))
    shown = [(n, counts[n], failed[n]) for n in ranked[:ORCHESTRATORS_SHOWN]]
    rest = ranked[ORCHESTRATORS_SHOWN:]
    if rest:
        shown.append(("(others)", sum(counts[n] for n in rest), sum(failed[n] for n in rest)))
    return shown


def _tools(tallies: Mapping[str, ToolTally]) -> list[ToolLine]:
    lines = []
    for name, t in tallies.items():
        ordered = sorted(t.durations)
        p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
        lines.append(ToolLine(name, t.calls, t.failed, t.unanswered, p50, p95))
    lines.sort(key=lambda line: (-line.calls, line.name))
    return lines


def _slowest(sessions: Iterable[Session], now_us: int) -> list[SlowSession]:
    """The longest sessions, from their first frame to their end (or to now, for those
    not ended): the recorder's own times, never the daemon's clock."""
    found = []
    for s in sessions:
        start, end = span(vars(s))
        seconds = round(((min(end, now_us) if end is not None else now_us) - start) / 1e6, 3)
        found.append(
            SlowSession(
                s.id,
                s.status,
                s.orchestrator_id,
                max(0.0, seconds),
                end is not None,
                int(s.frame_count),
            )
        )
    found.sort(key=lambda s: (-s.seconds, s.id))
    return found[:SLOWEST_SHOWN]


def _tokens(
    used: Mapping[str, int | float], daemon: tuple[DaemonTokens | None, DaemonTokens | None]
) -> Tokens:
    top = sorted(used.items(), key=lambda kv: (-kv[1], kv[0]))[:TOKEN_SESSIONS_SHOWN]
    before, last = daemon
    return Tokens(sum(used.values()), len(used), top, before, last)


def _cleanup(runs: Iterable[CleanupRun]) -> list[CleanupLine]:
    """The runs in the window, summed per policy and action."""
    lines: dict[tuple[str, str], CleanupLine] = {}
    for run in runs:
        key = (run.policy, run.action)
        was = lines.get(key, CleanupLine(run.policy, run.action, 0, 0, 0, 0, 0, 0))
        lines[key] = CleanupLine(
            run.policy,
            run.action,
            was.runs + 1,
            was.dry_runs + bool(run.dry_run),
            was.matched + int(run.matched),
            was.acted + int(run.acted),
            was.frames + int(run.frames or 0),
            was.failed + (run.error is not None or run.state == "interrupted"),
        )
    return sorted(lines.values(), key=lambda line: (line.policy, line.action))
