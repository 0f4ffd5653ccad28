"""The database at a glance (``/stats``) and its JSON (``/api/stats``): frames and bytes
per day, sessions by status, the busiest sessions, the database's size, each
recorder's status and link uptime, the recent connections and cleanup runs.

Each part is what a command prints as JSON (``recorder stats``, ``status``,
``connections``, ``cleanup history``), read from the writer's rollups and small
tables: the cost does not grow with the frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from recorder.cli.cleanup import run_json
from recorder.cli.postmortem import stats_json
from recorder.cli.render import connection_json
from recorder.db.locks import CannotTell
from recorder.db.recordings import Recordings, Stats
from recorder.db.rows import CleanupRun, Connection
from recorder.db.stats_reads import LinkSpans
from recorder.service.report import report
from recorder.times import format_us, now_us
from recorder.web.charts import DayChart, day_chart
from recorder.web.render import Reader, html, session_href

# The newest connections and cleanup runs shown (the commands' own defaults differ).
CONNECTIONS = 20
RUNS = 20
# What the status says of the daemon's URL when no recorder ever linked here: the
# console has no daemon of its own to name.
NO_DAEMON_URL = ""


@dataclass(frozen=True)
class Overview:
    """Everything the stats page shows, read in one short visit."""

    shown: str
    stats: Stats
    status: dict[str, dict[str, Any]]
    uptime: list[dict[str, Any]]
    connections: list[Connection]
    runs: list[CleanupRun]

    def to_json(self) -> dict[str, Any]:
        return {
            "stats": stats_json(self.stats, self.shown),
            "status": self.status,
            "link_uptime": self.uptime,
            "connections": [connection_json(c) for c in self.connections],
            "cleanup_runs": [run_json(r) for r in self.runs],
        }


def overview(recordings: Recordings, shown: str) -> Overview:
    now = now_us()
    names = recordings.instance_names() or ["default"]
    status = {name: _status(recordings, name, shown) for name in names}
    beats = {name: recordings.instance(name) for name in names}
    uptime = []
    for spans in recordings.link_spans():
        beat = beats.get(spans.instance)
        said = status.get(spans.instance, {})
        heartbeat = beat.heartbeat_us if beat is not None else None
        uptime.append(link_uptime(spans, bool(said.get("running")), heartbeat, now))

    def told(run: CleanupRun) -> CleanupRun:
        # As `cleanup history` says it: a run marked running whose recorder is not
        # running was cut short.
        who = status.get(run.instance or "default", {})
        if run.state == "running" and who and not who.get("running"):
            return replace(run, state="interrupted")
        return run

    return Overview(
        shown,
        recordings.stats(),
        status,
        uptime,
        recordings.connections(limit=CONNECTIONS),
        [told(r) for r in recordings.cleanup_runs(limit=RUNS)],
    )


def _status(recordings: Recordings, instance: str, shown: str) -> dict[str, Any]:
    """``recorder status --format json`` for the recorder ``instance``."""
    holder = lock_error = None
    try:
        holder = recordings.holder(instance)
    except CannotTell as exc:
        lock_error = str(exc)
    return report(
        recordings.status(instance),
        holder=holder,
        daemon_url=NO_DAEMON_URL,
        database=shown,
        lock_error=lock_error,
    )


def link_uptime(
    spans: LinkSpans, running: bool, heartbeat_us: int | None, now: int
) -> dict[str, Any]:
    """The share of the time since an instance's first link connection that a link
    was up, and the current connection's age. The newest connection, when its row is
    open, is up until now while its recorder runs; else until the recorder's last
    heartbeat (it stopped without closing it), or not at all if it never beat."""
    newest = spans.newest
    current = newest.closed_at_us is None and running
    if newest.closed_at_us is not None:
        end = newest.closed_at_us
    elif running:
        end = now
    else:
        end = max(newest.opened_at_us, min(heartbeat_us or 0, now))
    up = spans.up_us + max(0, end - newest.opened_at_us)
    covered = max(0, now - spans.first_opened_us)
    return {
        "instance": spans.instance,
        "connections": spans.connections,
        "since": format_us(spans.first_opened_us),
        "up_seconds": round(up / 1e6, 3),
        "covered_seconds": round(covered / 1e6, 3),
        "share": round(min(1.0, up / covered), 6) if covered else None,
        "connected": current,
        "current_since": format_us(newest.opened_at_us) if current else None,
        "current_age_seconds": round((now - newest.opened_at_us) / 1e6, 3) if current else None,
    }


def page_values(seen: Overview) -> dict[str, Any]:
    """The stats page's template values."""
    st = seen.stats
    days = [(int(t.day_us or 0), int(t.frames)) for t in st.by_day]
    day_bytes = [(int(t.day_us or 0), int(t.bytes)) for t in st.by_day]
    frames: DayChart = day_chart(days, "frames")
    size: DayChart = day_chart(day_bytes, "bytes")
    return {
        "data": seen.to_json(),
        "frames_chart": frames,
        "bytes_chart": size,
        "busiest": [
            {
                "id": s.id,
                "href": session_href(s.id),
                "status": s.status or "?",
                "frames": s.frame_count,
            }
            for s in st.busiest
        ],
        "mib": None if st.database_bytes is None else f"{st.database_bytes / 1048576:,.1f} MiB",
        "daemon": json.dumps(st.daemon, ensure_ascii=False, indent=1)[:4000] if st.daemon else "",
        "runs": [
            (run_json(r), ", ".join(f"{n} {what}" for what, n in _results(r).items()))
            for r in seen.runs
        ],
    }


def _results(run: CleanupRun) -> dict[str, int]:
    """What a run did to its sessions, counted by result (as `cleanup history` says)."""
    counts: dict[str, int] = {}
    try:
        actions = json.loads(run.actions)
    except ValueError:
        return counts
    for action in actions if isinstance(actions, list) else []:
        if isinstance(action, dict):
            result = str(action.get("result", "")).split(" ")[0]
            counts[result] = counts.get(result, 0) + 1 + int(action.get("more", 0) or 0)
    return counts


def routes(reads: Reader, shown: str) -> list[Route]:
    """``shown``: the database as the user named it (the commands say it so)."""

    async def page(_request: Request) -> Response:
        return html("stats.html", **page_values(await reads(lambda r: overview(r, shown))))

    async def api(_request: Request) -> Response:
        return JSONResponse((await reads(lambda r: overview(r, shown))).to_json())

    return [
        Route("/stats", page, methods=["GET"]),
        Route("/api/stats", api, methods=["GET"]),
    ]
