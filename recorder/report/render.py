"""The report written out: text for a terminal, markdown for a notification's body,
a standalone HTML document, or JSON. Pure.

Every recorded string is hostile. Text: one line of printable characters each
(:mod:`recorder.report.sections`). Markdown: every character markdown gives a meaning
to is backslash-escaped, so recorded text makes no link, image, emphasis, HTML or
table cell of its own. HTML: Jinja2's autoescape, and no script at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from recorder.report.build import Report
from recorder.report.sections import Section, sections, title
from recorder.times import format_us

FORMATS = ("text", "markdown", "json", "html")

_TEMPLATES = Environment(
    loader=PackageLoader("recorder.report", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
# Every ASCII punctuation character CommonMark lets a backslash escape but those that
# mean nothing anywhere in a line ('"$%',/;=?): links and images ([]()<>!), emphasis
# (*_~), code (`), HTML and entities (<>&), table cells (|), headings and lists at a
# line's start (#+-.), and the autolinks GFM finds in bare text (: . @).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~&:@^])")


def render(report: Report, fmt: str) -> str:
    """``report`` as ``fmt`` (one of :data:`FORMATS`), ending with a newline."""
    if fmt == "json":
        return json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n"
    parts = sections(report)
    if fmt == "markdown":
        return _markdown(report, parts)
    if fmt == "html":
        return _TEMPLATES.get_template("report.html").render(title=title(report), sections=parts)
    if fmt == "text":
        return _text(report, parts)
    raise ValueError(f"unknown format {fmt!r}")


# Between two digits (2026-12-05, 09:28:11, 0.026) these make no link, list or
# heading: left as they are, so that a digest reads as it renders.
_BETWEEN_DIGITS = re.compile(r"(?<=\d)[-.:](?=\d)")


def markdown_text(text: str) -> str:
    """``text`` with every character markdown would read as syntax escaped."""
    return _MARKDOWN.sub(_escaped, text)


def _escaped(found: re.Match[str]) -> str:
    at = found.start()
    if _BETWEEN_DIGITS.match(found.string, at):
        return found.group(1)
    return "\\" + found.group(1)


def _text(report: Report, parts: list[Section]) -> str:
    out = [title(report)]
    for part in parts:
        out += ["", part.title, *(f"  {line}" for line in part.lines)]
        if part.rows:
            out += [f"  {row}" for row in _aligned(part)]
    return "\n".join(out) + "\n"


def _aligned(part: Section) -> list[str]:
    table = [part.header, *part.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(part.header))]
    return [
        "  ".join(
            cell.rjust(w) if i in part.numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]


def _markdown(report: Report, parts: list[Section]) -> str:
    out = [f"# {markdown_text(title(report))}"]
    for part in parts:
        out += ["", f"## {markdown_text(part.title)}", ""]
        out += [markdown_text(line) + "  " for line in part.lines]
        if part.rows:
            if part.lines:
                out.append("")
            out.append(_md_row(part.header))
            out.append(
                "|"
                + "|".join(
                    " ---: " if i in part.numeric else " --- " for i in range(len(part.header))
                )
                + "|"
            )
            out += [_md_row(row) for row in part.rows]
    return "\n".join(out) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(markdown_text(c) for c in cells) + " |"


def report_json(report: Report) -> dict[str, Any]:
    """The report as ``--format json`` prints it: whole values, times in ISO-8601 and
    microseconds, durations in seconds."""
    r = report
    t = r.tokens
    return {
        "since": format_us(r.since_us),
        "until": format_us(r.now_us),
        "sessions": {
            "seen": r.sessions,
            "by_status": dict(r.by_status),
            "by_orchestrator": [
                {"orchestrator": o, "sessions": n, "failed": f} for o, n, f in r.by_orchestrator
            ],
        },
        "failed_sessions": {
            "total": r.failed_total,
            "latest": [{**asdict(f), "ended": format_us(f.ended_us)} for f in r.failed],
        },
        "tool_calls": {
            "calls": r.tool_calls,
            "failed": r.tools_failed,
            "by_tool": [asdict(line) for line in r.tools],
        },
        "slowest_sessions": [asdict(s) for s in r.slowest],
        "tokens": {
            "sessions_total": t.sessions_total,
            "sessions_reporting": t.sessions_reporting,
            "top_sessions": [{"id": sid, "tokens": n} for sid, n in t.top],
            "daemon_total": t.daemon_last.tokens if t.daemon_last else None,
            "daemon_reported_at": format_us(t.daemon_last.at_us) if t.daemon_last else None,
            "daemon_in_window": t.daemon_in_window,
        },
        "links": [_link_json(link) for link in r.links],
        "cleanup": [asdict(c) for c in r.cleanup],
        "growth": {
            "frames": r.growth.frames,
            "bytes": r.growth.bytes,
            "database_bytes": r.growth.database_bytes,
            "by_day": [
                {"day": format_us(day)[:10], "frames": frames, "bytes": size}
                for day, frames, size in r.growth.days
            ],
        },
    }


def _link_json(link: Any) -> dict[str, Any]:
    return {
        "instance": link.instance,
        "connections": link.connections,
        "from": format_us(link.start_us),
        "covered_seconds": round(link.covered_us / 1e6, 3),
        "up_seconds": round(link.up_us / 1e6, 3),
        "share": None if link.share is None else round(link.share, 6),
        "connected": link.connected,
        "gap_count": link.gap_count,
        "longest_gap_seconds": round(link.longest_gap_us / 1e6, 3),
        "gaps": [
            {"from": format_us(g.start_us), "to": format_us(g.end_us), "seconds": g.seconds}
            for g in link.gaps
        ],
    }
