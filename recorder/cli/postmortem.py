"""What happened: ``show``, ``connections``, ``tasks`` and ``stats``."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from recorder.cli.options import (
    document,
    limit_option,
    load,
    output_option,
    reading,
    session_argument,
    session_option,
    target_options,
)
from recorder.cli.render import (
    CELL_CHARS,
    CONNECTION_COLUMNS,
    TASK_COLUMNS,
    VALUE_CHARS,
    Column,
    connection_json,
    emit,
    pairs,
    session_json,
    shown,
    table_lines,
    task_json,
    when,
)
from recorder.db.rows import Session, Task
from recorder.protocol.story import ConnectionShare, partly
from recorder.protocol.tame import on_one_line
from recorder.protocol.timeline import clock_notes

if TYPE_CHECKING:
    from recorder.db.recordings import Recordings, Stats
    from recorder.protocol.kept import Kept
    from recorder.protocol.story import Story


@click.command()
@target_options
@session_argument
@output_option()
def show(config_path: str | None, database: str | None, session: str, fmt: str) -> None:
    """What happened in one session (its id, or the start of it), on one screen.

    Status changes, tasks, tool calls paired with their results, errors, the
    daemon's metrics, frames by type and by connection, and the spans when no
    connection was recording. Long lists show their first and last entries, and
    long values their start; --format json has every value whole.

    Example: recorder show session_1795692537464
    """
    target = load(config_path, database)
    if fmt != "table":
        with reading(target) as recordings:
            out = show_json(recordings, session)
        document(out, fmt)
        return
    with reading(target) as recordings:
        row = recordings.session(session)
        _echo(name_lines(vars(row)))  # at once: the rest reads every frame of the session
        tasks = recordings.session_tasks(row.id)
        wanted = [t.task_id for t in tasks.items]
        story = recordings.story(row, longest=VALUE_CHARS, tasks=wanted)
    told = [_outcome(t, story) for t in tasks.items]
    _echo(span_lines(vars(row), story) + story_lines(told, tasks, story))


def show_json(recordings: Recordings, session: str) -> dict[str, Any]:
    """What ``recorder show --format json`` prints of a session, every value whole
    (the web console's ``/api/sessions/{id}`` answers the same); NoSuchSession."""
    row = recordings.session(session)
    tasks = recordings.session_tasks(row.id)
    wanted = [t.task_id for t in tasks.items]
    story = recordings.story(row, longest=None, tasks=wanted)
    told = [_outcome(t, story) for t in tasks.items]
    out: dict[str, Any] = {
        "session": session_json(row),
        "tasks": [task_json(t) for t in told],
    }
    out |= story.to_json()
    out["task_count"] = tasks.total
    # Said of the session as the recorder sees it: a cleanup part-way, a daemon's clock.
    out["partly"] = partly(vars(row))
    out["clock_notes"] = clock_notes(vars(row))
    out["left_out"]["tasks"] = tasks.left_out
    return out


def show_lines(recordings: Recordings, session: str) -> list[str]:
    """What ``recorder show`` prints of a session, as lines; NoSuchSession if none is
    ``session`` or starts with it."""
    return told_story(recordings, session)[0]


def told_story(recordings: Recordings, session: str) -> tuple[list[str], Session, Story]:
    """:func:`show_lines`, with the session's row and its story (the web console's
    story page shows the lines and draws the story's gaps): read once."""
    row = recordings.session(session)
    tasks = recordings.session_tasks(row.id)
    wanted = [t.task_id for t in tasks.items]
    story = recordings.story(row, longest=VALUE_CHARS, tasks=wanted)
    told = [_outcome(t, story) for t in tasks.items]
    lines = name_lines(vars(row)) + span_lines(vars(row), story) + story_lines(told, tasks, story)
    return [on_one_line(line) for line in lines], row, story


def _outcome(task: Task, story: Story) -> Task:
    """The task as its own frames tell it: the index gives a session's first task the
    session's latest status (a stop after it completed made it "stopped")."""
    outcome = story.outcomes.get(task.task_id)
    if outcome is None:
        return task
    error = outcome.error if outcome.error is not None else task.error
    return replace(task, status=outcome.status, ended_at_us=outcome.at_us, error=error)


def _echo(lines: list[str]) -> None:
    for line in lines:
        click.echo(on_one_line(line))  # a frame's strings must not steer the terminal


def name_lines(session: dict[str, Any]) -> list[str]:
    """The session's id and kind, from its row: printed before its frames are read."""
    lines = [f"session   {shown(session['id'])}"]
    kind = ", ".join(
        shown(x)
        for x in (
            session.get("session_type"),
            session.get("orchestrator_id") and f"orchestrator {session['orchestrator_id']}",
        )
        if x
    )
    if kind:
        lines.append(f"          {kind}")
    return lines


def span_lines(session: dict[str, Any], story: Story) -> list[str]:
    """Its status and span by the recording (from its first recorded frame to the one
    that first showed its final status), its own last error, and what is said of it:
    a cleanup part-way, a daemon's clock far from the recorder's."""
    start, end = story.start_us, story.end_us
    duration = f" ({(end - start) / 1e6:.1f} s)" if end is not None else " (still open)"
    lines = [
        f"status    {shown(session.get('status') or '?')}: {when(start)} -> "
        f"{when(end) or 'now'}{duration}"
    ]
    # The row's last error may be the answer to a request the daemon turned down (a
    # task for a session that was over): that is listed with its task, not here.
    error = story.own_error if story.last_error_rejected else session.get("last_error")
    if error:
        lines.append(f"error     {shown(error)}")
    cut = partly(session)
    if cut is not None:
        lines.append(
            f"partly {cut}: a cleanup run is part-way through it, or was cut short there "
            f"({session['frame_count']:,} frames left); a later run finishes it"
        )
    for note in clock_notes(session):
        lines.append(f"clock     {note}")
    return lines


def _with_left_out(lines: list[str], at: int, left_out: int, what: str) -> list[str]:
    """``lines`` with a line saying how many ``what`` were left out, before ``at``."""
    if not left_out:
        return lines
    return [*lines[:at], f"  … {left_out:,} more {what} …", *lines[at:]]


def story_lines(told: list[Task], tasks: Kept[Task], story: Story) -> list[str]:
    """The story below the header: ``told`` are the kept ``tasks`` with their outcomes."""
    keep = story.keep
    lines = _course_lines(told, tasks, story)
    if story.tools:
        lines += ["", f"Tool calls: {story.tool_calls}, {story.tools_failed} failed"]
        table = table_lines(TOOL_COLUMNS, story.tools, indent="  ")
        lines += _with_left_out(table, 1 + keep, story.left_out["tools"], "tool calls")
    if story.errors:
        errors = [f"  {when(e.at_us)}  {e.source}: {shown(e.text)}" for e in story.errors]
        lines += ["", "Errors", *_with_left_out(errors, keep, story.left_out["errors"], "errors")]
    if story.metrics:
        lines += ["", "Metrics (as the daemon last reported them)", "  " + pairs(story.metrics)]
    lines += ["", f"Frames: {sum(story.by_type.values())}", "  " + pairs(story.by_type)]
    if story.connections:
        lines += ["", "Recorded by"]
        did = Column("DID", functools.partial(_did, ended=story.end_us is not None))
        table = table_lines((*SHARE_COLUMNS[:-1], did), story.connections, indent="  ")
        lines += _with_left_out(table, 1 + keep, story.left_out["connections"], "connections")
    lines += [""]
    if story.gaps:
        lines.append("Gaps: no connection was recording")
        spans = [
            f"  {when(g.start_us)} -> {when(g.end_us)}  ({g.seconds:.1f} s)" for g in story.gaps
        ]
        lines += _with_left_out(spans, keep, story.left_out["gaps"], "gaps")
    else:
        lines.append("Gaps: none, a connection was recording throughout")
    return lines


def _course_lines(told: list[Task], tasks: Kept[Task], story: Story) -> list[str]:
    """Its statuses in order, each with the frame that first carried it; its tasks with
    their own outcomes; the requests the daemon turned down."""
    keep = story.keep
    lines: list[str] = []
    if story.timeline:
        width = max(len(shown(c.status, CELL_CHARS)) for c in story.timeline)
        status = [
            f"  {when(c.at_us)}  {shown(c.status, CELL_CHARS):<{width}}  "
            f"{c.source or '?'} on connection {c.connection_id}"
            for c in story.timeline
        ]
        lines += [
            "",
            "Status",
            *_with_left_out(status, keep, story.left_out["timeline"], "status changes"),
        ]
    if told:
        columns = [c for c in TASK_COLUMNS if c.header != "SESSION"]
        table = table_lines(columns, told, indent="  ")
        lines += ["", "Tasks", *_with_left_out(table, 1 + tasks.keep, tasks.left_out, "tasks")]
    if story.rejected:
        turned = [
            f"  {when(r.at_us)}  {shown(r.task_id, CELL_CHARS)}: {shown(r.error or '')}"
            for r in story.rejected
        ]
        lines += [
            "",
            "Requests turned down (the session was over when they were asked)",
            *_with_left_out(turned, keep, story.left_out["rejected"], "requests"),
        ]
    return lines


def _did(share: ConnectionShare, ended: bool = False) -> str:
    """What a connection did in the session: its requests about it, or that it only
    watched; and how many sessions_list replies it got that named it (up to its end,
    where it ``ended``: later ones are not read)."""
    asked = ", ".join(k if n == 1 else f"{k} x{n}" for k, n in share.asked.items())
    did = f"asked {asked}" if asked else "watched only"
    if not share.listed:
        return did
    return did + f"; saw it in {share.listed} sessions_list" + (" up to its end" if ended else "")


def _tool_input(call: Any) -> str:
    # Told for a screen, an input is its JSON text already, cut short.
    if call.error:
        return str(call.error)
    return call.input if isinstance(call.input, str) else json.dumps(call.input, ensure_ascii=False)


TOOL_COLUMNS = (
    Column("STARTED", lambda t: when(t.started_us)),
    Column("TOOL", lambda t: t.name),
    Column("SECONDS", lambda t: "" if t.duration_s is None else f"{t.duration_s:.3f}", True),
    Column("OUTCOME", lambda t: t.status or "no result"),
    Column("INPUT / ERROR", _tool_input),
)
SHARE_COLUMNS = (
    Column("CONN", lambda c: c.id, True),
    Column("ROLE", lambda c: c.role if c.role != "proxy" else f"UI {c.client_addr}"),
    Column("FRAMES", lambda c: c.frames, True),
    Column("OPENED", lambda c: when(c.opened_us)),
    Column("CLOSED", lambda c: when(c.closed_us) or "open"),
    Column("CODE", lambda c: c.close_code, True),
    Column("DID", _did),
)


@click.command()
@target_options
@click.option("--role", type=click.Choice(["link", "proxy"]), help="Only this kind.")
@limit_option(50)
@output_option()
def connections(
    config_path: str | None, database: str | None, role: str | None, limit: int, fmt: str
) -> None:
    """Each recording connection, newest first: the link, or a UI through the proxy.

    Example: recorder connections --role proxy
    """
    target = load(config_path, database)
    with reading(target) as recordings:
        rows = recordings.connections(role=role, limit=limit)
    emit(rows, fmt, CONNECTION_COLUMNS, connection_json, "connections")


@click.command()
@target_options
@session_option("Tasks of this session")
@limit_option(50)
@output_option()
def tasks(
    config_path: str | None, database: str | None, session_id: str | None, limit: int, fmt: str
) -> None:
    """Recorded tasks, newest first, with their descriptions and outcomes.

    Example: recorder tasks --session session_1795692537464
    """
    target = load(config_path, database)
    with reading(target) as recordings:
        sid = recordings.session(session_id).id if session_id else None
        rows = recordings.tasks(sid, limit=limit)
    emit(rows, fmt, TASK_COLUMNS, task_json, "tasks")


@click.command()
@target_options
@output_option()
def stats(config_path: str | None, database: str | None, fmt: str) -> None:
    """Frames by type and by day, sessions by status, the busiest sessions, the database's
    size and the daemon's last reported metrics.

    Example: recorder stats --json
    """
    target = load(config_path, database)
    with reading(target) as recordings:
        st = recordings.stats()
    info = stats_json(st, target.shown)
    if fmt != "table":
        document(info, fmt)
        return
    size = st.database_bytes
    click.echo(
        f"database  {target.shown}" + (f"  {size / 1048576:.1f} MiB" if size is not None else "")
    )
    for title, mapping in (
        ("Frames by type", info["frames_by_type"]),
        ("Frames by day (UTC)", info["frames_by_day"]),
        ("Sessions by status", info["sessions_by_status"]),
    ):
        click.echo(f"\n{title}")
        for key, value in mapping.items():
            click.echo(f"  {value:>12,}  {shown(key)}")
    if st.busiest:
        click.echo("\nBusiest sessions")
        for r in info["busiest_sessions"]:
            click.echo(f"  {r['frames']:>12,}  {shown(r['id'])}  {shown(r['status'] or '?')}")
    if st.daemon:
        click.echo(f"\nDaemon, as reported at {info['daemon_reported_at']}")
        metrics = st.daemon.get("metrics")
        status, uptime = st.daemon.get("status"), st.daemon.get("uptime")
        click.echo(f"  status {shown(status)}, uptime {shown(uptime)} ms")
        if isinstance(metrics, dict):
            click.echo("  " + pairs(metrics))


def stats_json(st: Stats, database: str) -> dict[str, Any]:
    """What ``recorder stats --format json`` prints (the web console's ``/api/stats``
    carries the same under "stats"); ``database`` as the user named it."""
    return {
        "frames_by_type": {(t.type or "(none)"): int(t.frames) for t in st.by_type},
        "frames_by_day": {when(t.day_us)[:10]: int(t.frames) for t in st.by_day},
        "bytes_by_day": {when(t.day_us)[:10]: int(t.bytes) for t in st.by_day},
        "sessions_by_status": dict(st.by_status),
        "busiest_sessions": [
            {"id": s.id, "status": s.status, "frames": int(s.frame_count)} for s in st.busiest
        ],
        "database": database,
        "database_bytes": st.database_bytes,
        "daemon": st.daemon,
        "daemon_reported_at": when(st.daemon_at_us) or None,
    }
