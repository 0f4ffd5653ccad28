"""What happened: ``show``, ``connections``, ``tasks`` and ``stats``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from recorder.cli.options import limit_option, load, output_option, reading, target_options
from recorder.cli.render import (
    CONNECTION_COLUMNS,
    TASK_COLUMNS,
    Column,
    connection_json,
    emit,
    table_lines,
    task_json,
    when,
)
from recorder.protocol.tame import on_one_line

if TYPE_CHECKING:
    from recorder.protocol.story import Story


@click.command()
@target_options
@click.argument("session")
@output_option(jsonl=False)
def show(config_path: str | None, database: str | None, session: str, fmt: str) -> None:
    """What happened in one session (its id, or the start of it), on one screen.

    Status changes, tasks, tool calls paired with their results, errors, the
    daemon's metrics, frames by type and by connection, and the spans when no
    connection was recording.

    Example: recorder show session_1795692537464
    """
    from recorder.db import read

    target = load(config_path, database)
    with reading(target) as reader:
        row = read.resolve_session(reader, session)
        story = read.story(reader, row)
        task_rows = read.tasks(reader, row["id"])
    if fmt == "json":
        out = {"session": _session_dict(row), "tasks": [task_json(t) for t in task_rows]}
        click.echo(json.dumps(out | story.to_json(), ensure_ascii=False, indent=2))
        return
    for line in story_lines(dict(row), task_rows, story):
        click.echo(on_one_line(line))  # a frame's strings must not steer the terminal


def _session_dict(row: Any) -> dict[str, Any]:
    from recorder.cli.render import session_json

    return session_json(row)


def story_lines(session: dict[str, Any], task_rows: list[Any], story: Story) -> list[str]:
    lines = [f"session   {session['id']}"]
    kind = ", ".join(
        x
        for x in (
            session.get("session_type"),
            session.get("orchestrator_id") and f"orchestrator {session['orchestrator_id']}",
        )
        if x
    )
    if kind:
        lines.append(f"          {kind}")
    duration = f" ({story.duration_s:.1f} s)" if story.duration_s is not None else " (still open)"
    lines.append(
        f"status    {session.get('status') or '?'}: {when(story.start_us)} -> "
        f"{when(story.end_us) or 'now'}{duration}"
    )
    if session.get("last_error"):
        lines.append(f"error     {on_one_line(session['last_error'])}")
    if story.timeline:
        lines += ["", "Status"]
        lines += [f"  {when(c.at_us)}  {c.status}" for c in story.timeline]
    if task_rows:
        lines += ["", "Tasks"]
        lines += [
            "  " + line
            for line in table_lines([c for c in TASK_COLUMNS if c.header != "SESSION"], task_rows)
        ]
    if story.tools:
        failed = sum(1 for t in story.tools if t.status == "failed")
        lines += ["", f"Tool calls: {len(story.tools)}, {failed} failed"]
        tool_columns = (
            Column("STARTED", lambda t: when(t.started_us)),
            Column("TOOL", lambda t: t.name),
            Column(
                "SECONDS", lambda t: "" if t.duration_s is None else f"{t.duration_s:.3f}", True
            ),
            Column("OUTCOME", lambda t: t.status or "no result"),
            Column("INPUT / ERROR", lambda t: t.error or json.dumps(t.input, ensure_ascii=False)),
        )
        lines += ["  " + line for line in table_lines(tool_columns, story.tools)]
    if story.errors:
        lines += ["", "Errors"]
        lines += [f"  {when(e.at_us)}  {e.source}: {on_one_line(e.text)}" for e in story.errors]
    if story.metrics:
        lines += ["", "Metrics (as the daemon last reported them)"]
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in story.metrics.items()))
    lines += ["", f"Frames: {sum(story.by_type.values())}"]
    lines.append("  " + ", ".join(f"{t} {n}" for t, n in story.by_type.items()))
    if story.connections:
        lines += ["", "Recorded by"]
        share_columns = (
            Column("CONN", lambda c: c.id, True),
            Column("ROLE", lambda c: c.role if c.role != "proxy" else f"UI {c.client_addr}"),
            Column("FRAMES", lambda c: c.frames, True),
            Column("OPENED", lambda c: when(c.opened_us)),
            Column("CLOSED", lambda c: when(c.closed_us) or "open"),
            Column("CODE", lambda c: c.close_code, True),
        )
        lines += ["  " + line for line in table_lines(share_columns, story.connections)]
    lines += [""]
    if story.gaps:
        lines.append("Gaps: no connection was recording")
        lines += [
            f"  {when(g.start_us)} -> {when(g.end_us)}  ({g.seconds:.1f} s)" for g in story.gaps
        ]
    else:
        lines.append("Gaps: none, a connection was recording throughout")
    return lines


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
    from recorder.db import read

    target = load(config_path, database)
    with reading(target) as reader:
        rows = read.connections(reader, role=role, limit=limit)
    emit(rows, fmt, CONNECTION_COLUMNS, connection_json, "connections")


@click.command()
@target_options
@click.option("--session", "session_id", help="Tasks of this session (its id or the start of it).")
@limit_option(50)
@output_option()
def tasks(
    config_path: str | None, database: str | None, session_id: str | None, limit: int, fmt: str
) -> None:
    """Recorded tasks, newest first, with their descriptions and outcomes.

    Example: recorder tasks --session session_1795692537464
    """
    from recorder.db import read

    target = load(config_path, database)
    with reading(target) as reader:
        sid = read.resolve_session(reader, session_id)["id"] if session_id else None
        rows = read.tasks(reader, sid, limit=limit)
    emit(rows, fmt, TASK_COLUMNS, task_json, "tasks")


@click.command()
@target_options
@output_option(jsonl=False)
def stats(config_path: str | None, database: str | None, fmt: str) -> None:
    """Frames by type and by day, sessions by status, the busiest sessions, the database's
    size and the daemon's last reported metrics.

    Example: recorder stats --json
    """
    from recorder.db import read

    target = load(config_path, database)
    with reading(target) as reader:
        st = read.stats(reader)
    info: dict[str, Any] = {
        "frames_by_type": {(r["type"] or "(none)"): int(r["frames"]) for r in st.by_type},
        "frames_by_day": {when(r["day_us"])[:10]: int(r["frames"]) for r in st.by_day},
        "bytes_by_day": {when(r["day_us"])[:10]: int(r["bytes"]) for r in st.by_day},
        "sessions_by_status": {r["status"]: int(r["sessions"]) for r in st.by_status},
        "busiest_sessions": [
            {"id": r["id"], "status": r["status"], "frames": int(r["frame_count"])}
            for r in st.busiest
        ],
        "database": target.shown,
        "database_bytes": st.database_bytes,
        "daemon": st.daemon,
        "daemon_reported_at": when(st.daemon_at_us) or None,
    }
    if fmt == "json":
        click.echo(json.dumps(info, ensure_ascii=False, indent=2))
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
            click.echo(f"  {value:>12,}  {on_one_line(str(key))}")
    if st.busiest:
        click.echo("\nBusiest sessions")
        for r in info["busiest_sessions"]:
            click.echo(on_one_line(f"  {r['frames']:>12,}  {r['id']}  {r['status'] or '?'}"))
    if st.daemon:
        click.echo(f"\nDaemon, as reported at {info['daemon_reported_at']}")
        metrics = st.daemon.get("metrics")
        status, uptime = st.daemon.get("status"), st.daemon.get("uptime")
        click.echo(on_one_line(f"  status {status}, uptime {uptime} ms"))
        if isinstance(metrics, dict):
            click.echo(on_one_line("  " + ", ".join(f"{k} {v}" for k, v in metrics.items())))
