"""What was recorded: ``sessions``, ``frames``, ``tail`` and ``status``."""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

import click

from recorder.cli.options import (
    Count,
    check_span,
    connection_option,
    limit_option,
    load,
    output_option,
    parse_moment,
    reading,
    session_option,
    target_options,
    time_options,
)
from recorder.cli.render import SESSION_COLUMNS, FrameWriter, emit, session_json
from recorder.db.session_ids import NoSuchSession
from recorder.protocol.frames import IN, OUT

if TYPE_CHECKING:
    from recorder.db.recordings import Recordings

# How often `recorder tail` looks for newly committed frames.
TAIL_POLL = 0.2


@click.command()
@target_options
@click.option("--status", help="Only sessions with this status (running, completed, failed, ...).")
@click.option("--since", callback=parse_moment, help="Only sessions seen since then.")
@limit_option(50)
@output_option(json_means="jsonl")
def sessions(
    config_path: str | None,
    database: str | None,
    status: str | None,
    since: int | None,
    limit: int,
    fmt: str,
) -> None:
    """List recorded sessions, newest first.

    Example: recorder sessions --status running --since 2h
    """
    target = load(config_path, database)
    with reading(target) as recordings:
        found = recordings.sessions(status=status, since_us=since, limit=limit)
    emit(found, fmt, SESSION_COLUMNS, session_json, "sessions")


def frame_filters(fn: Any) -> Any:
    """The filters `frames` and `tail` share."""
    fn = time_options(fn)
    fn = click.option(
        "--grep",
        metavar="TEXT",
        help="Frames whose payload contains TEXT (a scan: narrow it with the other filters).",
    )(fn)
    fn = connection_option("Frames of this connection.")(fn)
    fn = click.option(
        "--direction", type=click.Choice([IN, OUT]), help="in: from the daemon; out: to it."
    )(fn)
    fn = click.option(
        "--type", "type_", help="Frames of this type (stream_chunk, session_status_update, ...)."
    )(fn)
    fn = click.option("--task", help="Frames of this task: its id or its description.")(fn)
    return session_option("Frames of this session")(fn)


def _filter(filters: dict[str, Any], **more: Any) -> Any:
    from recorder.db.recordings import FrameFilter

    check_span(filters["since"], filters["until"])
    return FrameFilter(
        session_id=filters["session_id"],
        task=filters["task"],
        type=filters["type_"],
        direction=filters["direction"],
        connection_id=filters["connection_id"],
        since_us=filters["since"],
        until_us=filters["until"],
        grep=filters["grep"],
        **more,
    )


@click.command()
@target_options
@frame_filters
@limit_option(100)
@click.option("--last", type=Count(1), help="The newest N frames (still oldest first).")
@output_option(json_means="jsonl")
def frames(
    config_path: str | None,
    database: str | None,
    limit: int,
    last: int | None,
    fmt: str,
    **filters: Any,
) -> None:
    """Show recorded frames in recording order.

    JSONL lines carry id, connection_id, seq, direction, received_at, type,
    session_id, task_id, opcode, size and payload (the exact frame text) or
    payload_b64 (binary frames and text that is not UTF-8).

    Example: recorder frames --session session_1795692537464_eeayv91i6 --format jsonl --limit 0
    """
    query = _filter(filters, limit=0 if last else limit, last=last or 0)
    target = load(config_path, database)
    out = FrameWriter(fmt)
    with reading(target) as recordings:
        for frame in recordings.frames(recordings.named(query)):
            out.write(frame)
    out.finish()


def _unknown_session(recordings: Recordings, session: str | None) -> None:
    """Say so where ``--session`` names no recorded session: what was typed is resolved
    once, as tail starts, and then followed as an exact id."""
    if session is None:
        return
    try:
        recordings.session(session)
    except NoSuchSession:
        click.echo(
            f"no recorded session is {session!r} or starts with it yet: "
            "following frames of exactly that session (a prefix is resolved as tail starts)",
            err=True,
        )


def _in_the_background() -> None:
    """Run on what the recorder leaves of the CPU: behind a firehose a follower prints
    as fast as it can read, on the cores the recorder needs. A SCHED_IDLE task runs
    when a core would be idle and gives way at once when the recorder wakes; so it
    lags, and catches up once the firehose ends (bench/tail.py, 2 cores: ingest at
    0.96 of its rate beside such a tail, 0.85 beside one at nice 10, 0.76 on main)."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError):
        os.nice(19)  # where there is no SCHED_IDLE


@click.command()
@target_options
@frame_filters
@click.option(
    "--last",
    type=Count(0),
    default=10,
    show_default=True,
    help="Start with the newest N frames already recorded.",
)
@output_option(stream=True)
def tail(
    config_path: str | None, database: str | None, last: int, fmt: str, **filters: Any
) -> None:
    """Print frames as they are committed, until Ctrl-C.

    It reads in short pages and holds nothing open while it prints, and it runs as a
    background task: behind a firehose it falls behind, not the recorder.

    Example: recorder tail --session session_1795692537464_eeayv91i6 --format jsonl
    """
    target = load(config_path, database)
    out = FrameWriter(fmt, flush_each=True)
    _in_the_background()
    with reading(target) as recordings:
        try:
            query = recordings.named(_filter(filters))
            _unknown_session(recordings, query.session_id)
            for frame in recordings.follow(query, last=last, poll=TAIL_POLL):
                out.write(frame)
        except KeyboardInterrupt:
            pass


@click.command()
@target_options
@output_option()
def status(config_path: str | None, database: str | None, fmt: str) -> None:
    """Is a recorder running on this database, is it connected, what has it recorded?

    Example: recorder status --json
    """
    from recorder.db.locks import CannotTell
    from recorder.service.report import lines, report

    target = load(config_path, database)
    instance = target.config.storage.instance
    holder = lock_error = None
    with reading(target) as recordings:
        try:
            holder = recordings.holder(instance)
        except CannotTell as exc:
            lock_error = str(exc)  # another user's recorder: its heartbeat tells instead
        st = recordings.status(instance)
    info = report(
        st,
        holder=holder,
        daemon_url=target.config.daemon.url,
        database=target.shown,
        lock_error=lock_error,
    )
    if fmt != "table":
        click.echo(json.dumps(info))  # one line for json too, as it always was
    else:
        for line in lines(info):
            click.echo(line)
