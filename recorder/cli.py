"""The ``recorder`` command. Each command is a thin shell around one library call."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import click

from recorder import __version__, logs
from recorder.config import Config, ConfigError, load_config, redact_url
from recorder.protocol import IN, OPCODE_TEXT, OUT
from recorder.times import format_us, parse_when

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# SQLAlchemy and the store are imported inside the commands that query: `recorder
# run` never loads them in the service's process (the writer process does).

F = TypeVar("F", bound=Callable[..., Any])


class UsageFailure(click.ClickException):
    """A usage or configuration error: one line, exit code 2."""

    exit_code = 2


def config_option(fn: F) -> F:
    return click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="RECORDER_CONFIG",
        help="TOML configuration file (default: $RECORDER_CONFIG, else built-in defaults).",
    )(fn)


def database_option(fn: F) -> F:
    return click.option(
        "--database",
        "database",
        metavar="URL",
        help="Database URL or SQLite file, instead of the configured one.",
    )(fn)


def load(config_path: str | None, database: str | None = None) -> Config:
    env = dict(os.environ)
    if database:
        env["RECORDER_DATABASE_URL"] = database if "://" in database else f"sqlite:///{database}"
    try:
        return load_config(config_path, env)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None


T = TypeVar("T")


def run_db(
    config: Config, fn: Callable[[AsyncEngine], Coroutine[Any, Any, T]], *, create: bool = False
) -> T:
    """Run ``fn(engine)``, turning database failures into one-line errors."""
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    from recorder import store

    async def go() -> T:
        url = config.storage.url
        if create:
            store.prepare_sqlite_file(url)
        else:
            store.require_database(url)
        engine = store.create_engine(url)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except store.StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except (OperationalError, ProgrammingError) as exc:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if "no such table" in text or "does not exist" in text:
            raise click.ClickException(
                f"database {redact_url(config.storage.url)} has no recorder tables; run `recorder db upgrade`"
            ) from None
        raise click.ClickException(f"database error: {text.splitlines()[0]}") from None
    except (DBAPIError, OSError) as exc:
        raise click.ClickException(
            f"cannot use database {redact_url(config.storage.url)}: {exc}"
        ) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recorder")
def cli() -> None:
    """Record every frame an orchestrator daemon sends and receives.

    Start with `recorder run`; query with `recorder sessions` and `recorder frames`.
    """


@cli.command()
@config_option
def run(config_path: str | None) -> None:
    """Run the recorder service in the foreground until SIGTERM or Ctrl-C.

    Example: recorder run --config /etc/orchestrator-recorder/config.toml
    """
    from recorder import service

    config = load(config_path)
    logs.configure(config.log.level, config.log.format)
    sys.exit(asyncio.run(service.main(config)))


@cli.group()
def db() -> None:
    """Database schema: migrate and inspect."""


@db.command("upgrade")
@config_option
@database_option
def db_upgrade(config_path: str | None, database: str | None) -> None:
    """Create or migrate the database to the newest schema.

    Example: recorder db upgrade --database /var/lib/orchestrator-recorder/recorder.db
    """
    from recorder import store

    config = load(config_path, database)
    before, after = run_db(config, store.upgrade, create=True)
    if before == after:
        click.echo(f"already at {after} (head)")
    else:
        click.echo(f"upgraded {before or 'empty database'} -> {after}")


@db.command("current")
@config_option
@database_option
def db_current(config_path: str | None, database: str | None) -> None:
    """Show the database's schema revision and the newest one this recorder knows.

    Example: recorder db current
    """
    from recorder import store

    config = load(config_path, database)
    rev = run_db(config, store.current)
    head = store.head_revision()
    state = "up to date" if rev == head else "needs `recorder db upgrade`"
    click.echo(f"{rev or 'none'} (head: {head}; {state})")


def parse_time_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


@cli.command()
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
    from recorder import store

    config = load(config_path, database)
    rows = run_db(
        config, functools.partial(store.list_sessions, status=status, since_us=since, limit=limit)
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(session_json(row)))
        return
    header = f"{'SESSION':<34} {'STATUS':<10} {'TYPE':<12} {'FRAMES':>7} {'FIRST SEEN':<27} TASK"
    click.echo(header)
    for row in rows:
        task = (row.task_description or "").replace("\n", " ")
        click.echo(
            f"{row.id:<34} {row.status or '?':<10} {row.session_type or '':<12} {row.frame_count:>7} "
            f"{format_us(row.first_seen_us):<27} {task[:60]}"
        )


def session_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "orchestrator_id": row.orchestrator_id,
        "session_type": row.session_type,
        "task_id": row.task_id,
        "task_description": row.task_description,
        "first_seen": format_us(row.first_seen_us),
        "last_seen": format_us(row.last_seen_us),
        "started_at": format_us(row.started_at_us) or None,
        "ended_at": format_us(row.ended_at_us) or None,
        "frame_count": row.frame_count,
        "last_error": row.last_error,
    }


def frame_json(row: Any) -> dict[str, Any]:
    """The JSONL contract of ``recorder frames --format jsonl``. Keep it stable."""
    out: dict[str, Any] = {
        "id": row.id,
        "connection_id": row.connection_id,
        "seq": row.seq,
        "direction": row.direction,
        "received_at": format_us(row.received_at_us),
        "type": row.type,
        "session_id": row.session_id,
        "task_id": row.task_id,
        "opcode": "text" if row.opcode == OPCODE_TEXT else "binary",
        "size": row.size,
    }
    text = frame_text(row)
    if text is not None:
        out["payload"] = text
    else:
        out["payload_b64"] = base64.b64encode(row.payload_bytes or b"").decode()
    return out


def frame_text(row: Any) -> str | None:
    """The exact frame text, or None when the frame is binary or not valid UTF-8."""
    if row.payload is not None:
        return str(row.payload)
    if row.opcode == OPCODE_TEXT and row.payload_bytes is not None:
        try:
            return bytes(row.payload_bytes).decode()
        except UnicodeDecodeError:
            return None
    return None


@cli.command()
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
    from recorder import store

    config = load(config_path, database)
    query = store.FrameFilter(
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
    render: Callable[[BinaryIO, Any], None] = write_jsonl if fmt == "jsonl" else write_table

    async def go(engine: AsyncEngine) -> None:
        if fmt == "table":
            out.write(
                f"{'ID':>8} {'TIME':<27} {'CONN':>4} DIR {'TYPE':<24} {'SESSION':<34} {'SIZE':>7} PAYLOAD\n".encode()
            )
        async for row in store.iter_frames(engine, query):
            render(out, row)

    try:
        run_db(config, go)
    except BrokenPipeError:
        # `recorder frames | head` is normal use.
        sys.stderr.close()
    out.flush()


def write_jsonl(out: BinaryIO, row: Any) -> None:
    out.write(json.dumps(frame_json(row), ensure_ascii=False).encode() + b"\n")


def write_table(out: BinaryIO, row: Any) -> None:
    text = frame_text(row)
    preview = (
        text
        if text is not None
        else f"<{row.size} bytes {'binary' if row.opcode != OPCODE_TEXT else 'invalid UTF-8'}>"
    )
    # One line per frame, and no raw control characters on the terminal.
    preview = "".join(
        c if c.isprintable() else ("\\n" if c == "\n" else f"\\x{ord(c):02x}") for c in preview[:80]
    )[:80]
    arrow = "<-" if row.direction == IN else "->"
    line = (
        f"{row.id:>8} {format_us(row.received_at_us):<27} {row.connection_id:>4} {arrow:<3} "
        f"{(row.type or '-')[:24]:<24} {(row.session_id or '-')[:34]:<34} {row.size:>7} {preview}\n"
    )
    out.write(line.encode())


@cli.command()
@config_option
@database_option
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
def status(config_path: str | None, database: str | None, as_json: bool) -> None:
    """Is the recorder connected, and what has it recorded?

    Example: recorder status --json
    """
    from recorder import store

    config = load(config_path, database)
    st = run_db(config, store.status)
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


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--sessions",
    "n_sessions",
    type=click.IntRange(min=0),
    default=0,
    help="Sessions to spawn on its own.",
)
@click.option("--session-interval", type=click.FloatRange(min=0), default=0.5, show_default=True)
@click.option(
    "--chunk-delay",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Mean seconds between stream frames (the rate).",
)
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.2, show_default=True)
@click.option("--seed", type=int, help="Random seed: the same seed gives the same sessions.")
@click.option(
    "--status-interval",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Broadcast daemon_status_update every N s.",
)
@click.option(
    "--disconnect-after",
    type=click.IntRange(min=0),
    default=0,
    help="Force-close a connection after N frames.",
)
@click.option(
    "--disconnects",
    type=click.IntRange(min=0),
    default=0,
    help="At most N forced disconnects (0: no limit).",
)
@click.option(
    "--firehose",
    type=click.IntRange(min=0),
    default=0,
    help="Send N stream_chunk frames to each new client.",
)
@click.option("--token", envvar="SIMULATOR_TOKEN", help="Require this bearer token (or ?token=).")
@click.option("--api-key", envvar="SIMULATOR_API_KEY", help="Require this x-api-key (or ?apiKey=).")
@click.option(
    "--max-connections", type=click.IntRange(min=0), default=0, help="Answer 429 beyond N clients."
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False),
    help="Append every frame sent and received to this JSONL file.",
)
def simulate(**opts: Any) -> None:
    """Run a simulated orchestrator daemon (for demos, tests and benchmarks).

    Example: recorder simulate --port 8787 --sessions 5 --seed 1
    """
    from recorder.simulator import SimulatorOptions, serve

    options = SimulatorOptions(
        host=opts["host"],
        port=opts["port"],
        sessions=opts["n_sessions"],
        session_interval=opts["session_interval"],
        chunk_delay=opts["chunk_delay"],
        fail_rate=opts["fail_rate"],
        seed=opts["seed"],
        status_interval=opts["status_interval"],
        disconnect_after=opts["disconnect_after"],
        disconnects=opts["disconnects"],
        firehose=opts["firehose"],
        token=opts["token"],
        api_key=opts["api_key"],
        max_connections=opts["max_connections"],
        journal_path=opts["journal"],
        # A long-running simulator must not keep every frame in memory.
        journal=False,
    )

    def ready(port: int) -> None:
        click.echo(f"simulated daemon listening on ws://{options.host}:{port}", err=True)

    try:
        asyncio.run(serve(options, ready=ready))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        ) from None


def main() -> None:
    cli(prog_name="recorder")
