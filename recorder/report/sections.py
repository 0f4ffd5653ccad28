"""The report as sections of text lines and tables of text cells: what the text,
markdown and HTML renderings share (each escapes the cells for its own medium). Pure.

Every recorded string (session ids, orchestrators, tool names, errors, policies) is
cut to one line of printable characters here (:func:`~recorder.protocol.tame.one_line`):
a daemon's 10 MB error is a line, and no terminal control reaches a screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recorder.protocol.tame import one_line
from recorder.report.build import Report
from recorder.report.links import LinkUptime
from recorder.times import format_us

# What a table shows of a recorded name or text.
NAME_CHARS = 60
TEXT_CHARS = 160


@dataclass(frozen=True)
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    # Columns aligned right (numbers), by index.
    numeric: frozenset[int] = frozenset()


def title(report: Report) -> str:
    return f"Recorder report {when(report.since_us)} to {when(report.now_us)}"


def sections(report: Report) -> list[Section]:
    return [
        _sessions(report),
        _orchestrators(report),
        _failed(report),
        _tools(report),
        _slowest(report),
        _tokens(report),
        _links(report),
        _cleanup(report),
        _growth(report),
    ]


def name(text: str | None) -> str:
    return "?" if text is None else one_line(text, NAME_CHARS)


def when(us: int | None) -> str:
    """A moment to the second, UTC."""
    return format_us(us)[:19].replace("T", " ") + " UTC" if us is not None else ""


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.3f} s"


def duration(us: int) -> str:
    s = us // 1_000_000
    if s < 120:
        return f"{us / 1e6:.1f} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _sessions(r: Report) -> Section:
    line = f"{_count(r.sessions, 'session')} seen"
    return Section(
        "Sessions by status",
        [line],
        ["status", "sessions"],
        [[name(status), f"{n:,}"] for status, n in r.by_status],
        frozenset({1}),
    )


def _orchestrators(r: Report) -> Section:
    rows = [[name(o), f"{n:,}", f"{failed:,}"] for o, n, failed in r.by_orchestrator]
    return Section(
        "Sessions by orchestrator",
        [],
        ["orchestrator", "sessions", "failed"],
        rows,
        frozenset({1, 2}),
    )


def _failed(r: Report) -> Section:
    lines = [f"{r.failed_total:,} failed"]
    if r.failed_total > len(r.failed):
        lines.append(f"the latest {len(r.failed)} shown")
    rows = [
        [name(f.id), when(f.ended_us), name(f.orchestrator), one_line(f.error or "", TEXT_CHARS)]
        for f in r.failed
    ]
    return Section(
        "Failed sessions", lines, ["session", "ended", "orchestrator", "first error"], rows
    )


def _tools(r: Report) -> Section:
    lines = [f"{_count(r.tool_calls, 'call')}, {r.tools_failed:,} failed"]
    rows = [
        [
            name(t.name),
            f"{t.calls:,}",
            f"{t.failed:,}",
            f"{t.unanswered:,}",
            seconds(t.p50_s),
            seconds(t.p95_s),
        ]
        for t in r.tools
    ]
    header = ["tool", "calls", "failed", "unanswered", "p50", "p95"]
    return Section("Tool calls", lines, header, rows, frozenset({1, 2, 3, 4, 5}))


def _slowest(r: Report) -> Section:
    rows = [
        [
            name(s.id),
            name(s.status),
            name(s.orchestrator),
            duration(int(s.seconds * 1e6)) + ("" if s.ended else " (not ended)"),
            f"{s.frames:,}",
        ]
        for s in r.slowest
    ]
    header = ["session", "status", "orchestrator", "duration", "frames"]
    return Section("Slowest sessions", [], header, rows, frozenset({3, 4}))


def _tokens(r: Report) -> Section:
    t = r.tokens
    lines = [
        f"{t.sessions_total:,} tokens used by {_count(t.sessions_reporting, 'session')}, "
        "as each last reported"
    ]
    if t.daemon_last is not None and t.daemon_last.tokens is not None:
        said = f"the daemon's total: {t.daemon_last.tokens:,} at {when(t.daemon_last.at_us)}"
        if t.daemon_in_window is not None:
            said += f" ({t.daemon_in_window:,} in this window)"
        lines.append(said)
    rows = [[name(sid), f"{n:,}"] for sid, n in t.top]
    return Section("Tokens", lines, ["session", "tokens"] if rows else [], rows, frozenset({1}))


def _links(r: Report) -> Section:
    lines = [_link_line(link) for link in r.links] or ["no recorder linked to a daemon"]
    rows = [
        [name(link.instance), when(g.start_us), when(g.end_us), duration(g.end_us - g.start_us)]
        for link in r.links
        for g in link.gaps
    ]
    header = ["instance", "down from", "to", "for"] if rows else []
    return Section("Link uptime and gaps", lines, header, rows, frozenset({3}))


def _link_line(link: LinkUptime) -> str:
    share = link.share
    up = f"{share * 100:.2f} %" if share is not None else "-"
    said = (
        f"{name(link.instance)}: up {up} of {duration(link.covered_us)} "
        f"({_count(link.connections, 'connection')}), {_count(link.gap_count, 'gap')}"
    )
    if link.gap_count:
        said += f", the longest {duration(link.longest_gap_us)}"
    return said + (", connected now" if link.connected else "")


def _cleanup(r: Report) -> Section:
    rows = [
        [
            name(c.policy),
            name(c.action),
            f"{c.runs:,}",
            f"{c.dry_runs:,}",
            f"{c.matched:,}",
            f"{c.acted:,}",
            f"{c.frames:,}",
            f"{c.failed:,}",
        ]
        for c in r.cleanup
    ]
    header = ["policy", "action", "runs", "dry runs", "matched", "acted", "frames", "failed"]
    lines = [] if rows else ["no cleanup runs"]
    return Section("Cleanup", lines, header if rows else [], rows, frozenset(range(2, 8)))


def _growth(r: Report) -> Section:
    g = r.growth
    lines = [f"{g.frames:,} frames, {_mib(g.bytes)} recorded on the days of the window"]
    if g.database_bytes is not None:
        lines.append(f"database size {_mib(g.database_bytes)}")
    rows = [[when(day)[:10], f"{frames:,}", _mib(size)] for day, frames, size in g.days]
    return Section(
        "Database growth", lines, ["day (UTC)", "frames", "bytes"], rows, frozenset({1, 2})
    )


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _mib(size: int) -> str:
    return f"{size / 1048576:,.1f} MiB"
