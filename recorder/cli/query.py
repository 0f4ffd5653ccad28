"""The query commands: ``sessions``, ``frames``, ``status``."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from recorder.cli.options import config_option, database_option, load, parse_time_option, run_db
from recorder.cli.render import (
    FRAME_TABLE_HEADER,
    SESSION_TABLE_HEADER,
    session_json,
    session_line,
    write_frame_jsonl,
    write_frame_line,
)
from recorder.config import redact_url
from recorder.protocol.frames import IN, OUT
from recorder.times import format_us

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@click.command()
@config_option
@database_option
@click.option("--status", help="Only sessions with this status (running, completed, failed, ...).")
@click.option(
    "--since", callback=parse_time_option, help="Only sessions seen since: ISO time or 15m, 2h, 7d."
)
@click.option(
    "--limit", type=click.IntRange(min=0), default=50, show_default=True, help="0 for all."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def sessions(
    config_path: str | None,
    database: str | None,
    status: str | None,
    since: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded sessions, newest first.

    Example: recorder sessions --status running --since 2h
    """
    from recorder.db.read import list_sessions

    config = load(config_path, database)
    rows = run_db(
        config, functools.partial(list_sessions, status=status, since_us=since, limit=limit)
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(session_json(row)))
        return
    click.echo(SESSION_TABLE_HEADER)
    for row in rows:
        click.echo(session_line(row))


@click.command()
@config_option
@database_option
@click.option("--session", "session_id", help="Frames of this session.")
@click.option("--task", "task_id", help="Frames of this task.")
@click.option(
    "--type", "type_", help="Frames of this type (stream_chunk, session_status_update, ...)."
)
@click.option("--direction", type=click.Choice([IN, OUT]), help="in: from the daemon; out: to it.")
@click.option("--connection", "connection_id", type=int, help="Frames of this connection id.")
@click.option(
    "--since", callback=parse_time_option, help="From this time: ISO time or 15m, 2h, 7d."
)
@click.option("--until", callback=parse_time_option, help="Before this time.")
@click.option(
    "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="0 for all."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True
)
def frames(
    config_path: str | None,
    database: str | None,
    fmt: str,
    **filters: Any,
) -> None:
    """Show recorded frames in recording order.

    JSONL lines carry id, connection_id, seq, direction, received_at, type,
    session_id, task_id, opcode, size and payload (the exact frame text) or
    payload_b64 (binary frames and text that is not UTF-8).

    Example: recorder frames --session session_1795692537464_eeayv91i6 --format jsonl --limit 0
    """
    from recorder.db.read import FrameFilter, iter_frames

    config = load(config_path, database)
    query = FrameFilter(
        session_id=filters["session_id"],
        task_id=filters["task_id"],
        type=filters["type_"],
        direction=filters["direction"],
        connection_id=filters["connection_id"],
        since_us=filters["since"],
        until_us=filters["until"],
        limit=filters["limit"],
    )
    out: BinaryIO = sys.stdout.buffer
    render: Callable[[BinaryIO, Any], None] = (
        write_frame_jsonl if fmt == "jsonl" else write_frame_line
    )

    async def go(engine: AsyncEngine) -> None:
        if fmt == "table":
            out.write(FRAME_TABLE_HEADER.encode() + b"\n")
        async for row in iter_frames(engine, query):
            render(out, row)

    try:
        run_db(config, go)
    except BrokenPipeError:
        # `recorder frames | head` is normal use.
        sys.stderr.close()
    out.flush()


@click.command()
@config_option
@database_option
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def status(config_path: str | None, database: str | None, as_json: bool) -> None:
    """Is the recorder connected, and what has it recorded?

    Example: recorder status --json
    """
    from recorder.db.read import status as read_status

    config = load(config_path, database)
    st = run_db(config, read_status)
    conn = st.last_connection
    info: dict[str, Any] = {
        "connected": st.connected_since_us is not None,
        "connected_since": format_us(st.connected_since_us) or None,
        "daemon_url": conn.url if conn is not None else config.daemon.url,
        "last_disconnect": format_us(conn.closed_at_us)
        if conn is not None and conn.closed_at_us
        else None,
        "last_close_code": conn.close_code if conn is not None else None,
        "last_error": conn.error if conn is not None else None,
        "last_frame_at": format_us(st.last_frame_us) or None,
        "frames": st.frame_count,
        "sessions": st.session_count,
        "active_sessions": st.active_sessions,
        "database": redact_url(config.storage.url),
        "database_bytes": st.database_bytes,
    }
    if as_json:
        click.echo(json.dumps(info))
        return
    if info["connected"]:
        state = f"connected since {info['connected_since']}"
    elif conn is None:
        state = "never connected"
    else:
        state = f"disconnected since {info['last_disconnect']} (code {info['last_close_code']})"
        if info["last_error"]:
            state += f": {info['last_error']}"
    size = st.database_bytes
    click.echo(f"daemon      {info['daemon_url']}: {state}")
    click.echo(f"last frame  {info['last_frame_at'] or 'none'}")
    click.echo(f"frames      {st.frame_count:,}")
    click.echo(f"sessions    {st.session_count:,} ({st.active_sessions:,} active)")
    click.echo(
        f"database    {info['database']}"
        + (f" ({size / 1048576:.1f} MiB)" if size is not None else "")
    )
