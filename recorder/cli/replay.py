"""``recorder replay`` and ``recorder export``: a recorded session played back."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from recorder.cli.options import (
    Count,
    FiniteRange,
    Target,
    UsageFailure,
    load,
    optional_session_argument,
    reading,
    session_argument,
    target_options,
)
from recorder.cli.otel_export import otlp_options
from recorder.times import parse_when

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s?)?$")
LIVE_SCHEMES = ("ws://", "wss://")


def parse_point(text: str, *, option: str = "--from") -> tuple[float | None, int | None]:
    """``--from``/``--until``: an offset into the session (``90``, ``1m30s``, ``2h``) as
    seconds, or a moment (ISO-8601) as epoch µs."""
    match = _DURATION.match(text.strip())
    if match and any(match.groups()):
        hours, minutes, seconds = match.groups()
        return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0), None
    try:
        return None, parse_when(text)
    except ValueError:
        kinds = "an offset (90, 1m30s) nor a time (2026-11-26T10:00:00Z)"
        raise click.BadParameter(f"{text!r} is neither {kinds}", param_hint=f"'{option}'") from None


def _gone_to(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """--to meant two things (where the replay stops, or a daemon to replay against)."""
    if value is not None:
        raise UsageFailure(
            "--to is gone: --until OFFSET|TIME says where the replay stops, "
            "--against ws://HOST:PORT replays the session against a live daemon"
        )


def pace_options(fn: Any) -> Any:
    fn = click.option("--instant", is_flag=True, help="No pauses at all.")(fn)
    fn = click.option(
        "--max-idle",
        type=FiniteRange(min=0),
        metavar="SECONDS",
        help="Cap every pause at this (recorded time). Without it, a gap in the "
        "recording between two frames is waited at most 5 s.",
    )(fn)
    fn = click.option("--speed", type=FiniteRange(min=0.01), default=1.0, show_default=True)(fn)
    fn = click.option(
        "--connection", type=Count(), help="Play this connection only (see `recorder show`)."
    )(fn)
    fn = click.option(
        "--until", "stop", metavar="OFFSET|TIME", help="Stop here: 90, 1m30s, or an ISO time."
    )(fn)
    fn = click.option("--to", hidden=True, expose_value=False, callback=_gone_to)(fn)
    return click.option(
        "--from", "start", metavar="OFFSET|TIME", help="Start here: 90, 1m30s, or an ISO time."
    )(fn)


def make_pace(
    start: str | None, stop: str | None, speed: float, max_idle: float | None, instant: bool
) -> Any:
    from recorder.replay.timing import Pace

    # "" is a value given, and wrong: not the option left out (it was ignored).
    begin = parse_point(start) if start is not None else (None, None)
    end = parse_point(stop, option="--until") if stop is not None else (None, None)
    return Pace(speed, max_idle, instant, begin[0], end[0], begin[1], end[1])


def _check_modes(
    serve: str | None, against: str | None, *, wait_for_client: bool, loop: bool, as_json: bool
) -> None:
    """Refuse options of a mode given without it, and two modes at once."""
    if serve == "":
        raise UsageFailure("--serve: expected HOST:PORT, got ''")
    if against is not None and not against.startswith(LIVE_SCHEMES):
        raise UsageFailure(f"--against: expected a ws:// or wss:// URL, got {against!r}")
    if serve and against:
        raise UsageFailure("--serve and --against: choose one (be the daemon, or replay to one)")
    # Options of one mode, given without it, were silently ignored.
    for given, flag, needs in (
        (wait_for_client, "--wait-for-client", serve),
        (loop, "--loop", serve),
        (as_json, "--json", against),
    ):
        if given and not needs:
            mode = "--against ws://..." if flag == "--json" else "--serve HOST:PORT"
            raise UsageFailure(f"{flag} needs {mode}")


@click.command()
@target_options
@session_argument
@pace_options
@click.option(
    "--against",
    metavar="URL",
    help="Replay the session's requests against this live daemon (ws://host:port) instead, "
    "and compare its replies with the recorded ones; exit 1 only when the daemon differed "
    "(not where the replay could not keep the recorded order).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="jsonl: the frames played, one JSON object a line as `frames` writes them, both "
    "directions (the UI's requests, out; the daemon's frames, in).",
)
@click.option("--follow", is_flag=True, help="Keep playing what is still being recorded.")
@click.option("--serve", metavar="HOST:PORT", help="Be the daemon for a real client instead.")
@click.option(
    "--wait-for-client",
    is_flag=True,
    help="With --serve: hold each recorded reply until the client sends its request "
    "(the same type and ids; its own text is fine).",
)
@click.option("--loop", is_flag=True, help="With --serve: every new client from the start.")
@click.option("--json", "as_json", is_flag=True, help="With --against: the comparison as JSON.")
def replay(
    config_path: str | None,
    database: str | None,
    session: str,
    start: str | None,
    stop: str | None,
    against: str | None,
    connection: int | None,
    speed: float,
    max_idle: float | None,
    instant: bool,
    fmt: str,
    follow: bool,
    serve: str | None,
    wait_for_client: bool,
    loop: bool,
    as_json: bool,
) -> None:
    """Play a session as it happened (its id, or the start of it).

    One conversation: that of the UI that created the session, followed across its
    reconnects (a connection opened after it closed that asked about the session, or
    was sent its stream), with what only the recorder's own link saw. Another tab that
    only watched is not played.

    Stream text is written as it arrived; what the UI asked ([asked] execute_task:
    "..."), tool calls, status changes, task events, errors and gaps in the recording
    are marked lines. A gap before the first frame or after the last is marked and not
    waited; one between frames is waited at most --max-idle, else 5 s. On a terminal,
    space pauses and resumes, `.` steps while paused, Ctrl-C stops.

    Example: recorder replay session_1795692537464 --speed 4 --max-idle 2
    """
    from recorder.replay import source
    from recorder.replay.timing import paced

    target = load(config_path, database)
    _check_modes(serve, against, wait_for_client=wait_for_client, loop=loop, as_json=as_json)
    pace = make_pace(start, stop, speed, max_idle, instant)
    if serve or against:
        from recorder.cli.replay_modes import serve_or_replay_live

        serve_or_replay_live(
            target,
            session,
            serve=serve,
            daemon=against,
            connection=connection,
            pace=pace,
            wait_for_client=wait_for_client,
            loop=loop,
            as_json=as_json,
        )
        return
    with reading(target) as reader:
        plan = source.open_session(reader, session, connection)
        timed = Counted(paced(source.cues(reader, plan, follow=follow), pace))
        try:
            if fmt == "jsonl":
                _jsonl(timed)
            else:
                _text(timed)
        except KeyboardInterrupt:
            click.echo("", err=True)
    if fmt != "jsonl":  # the JSONL writer says "no frames match" itself
        timed.say_if_empty()


def _text(timed: Any) -> None:
    from recorder.replay.terminal import Player, keys_from, on_a_terminal

    interactive = on_a_terminal()
    player = Player(sys.stdout, colour=interactive)
    with keys_from(sys.stdin, interactive) as keys:
        player.play(timed, keys)


def _jsonl(timed: Any) -> None:
    import time

    from recorder.cli.render import FrameWriter
    from recorder.replay.timing import on_time

    def sleep(seconds: float) -> bool:
        # Not time.sleep(0): on Linux even that sleeps out the timer slack (about
        # 60 µs), which made an --instant JSONL replay 7 times slower than text.
        if seconds > 0:
            time.sleep(seconds)
        return False  # no keys: never held or let go early

    out = FrameWriter("jsonl", flush_each=True)
    for cue in on_time(timed, time.monotonic, sleep):
        if cue.frame is not None and cue.frame.row is not None:
            out.write(cue.frame.row)
    out.finish()


@click.command()
@target_options
@optional_session_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["asciicast", "jsonl", "otlp"]),
    default="asciicast",
    show_default=True,
    help="otlp: sessions as OpenTelemetry traces (OTLP/HTTP, or OTLP JSON lines).",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout)."
)
@click.option(
    "--max-idle",
    type=FiniteRange(min=0),
    metavar="SECONDS",
    help="idle_time_limit of the cast.",
)
@click.option("--connection", type=Count(), help="This connection only.")
@otlp_options
def export(
    config_path: str | None,
    database: str | None,
    session: str | None,
    fmt: str,
    output: str | None,
    max_idle: float | None,
    connection: int | None,
    **otlp: Any,
) -> None:
    """Write a session as an asciicast v2 file (for `asciinema play`) or as JSONL frames;
    or sessions as OpenTelemetry traces (--format otlp).

    The frames of the replay (see `recorder replay`): the UI's requests and the
    daemon's frames, both directions in JSONL; in the cast, requests, tool calls,
    status changes, task events, errors and gaps are markers.

    --format otlp sends every session seen since --since (all: without it), or the
    one --session names, to --endpoint (else [otel] endpoint) over OTLP/HTTP, or
    writes them to --output as OTLP JSON lines. Tool arguments and results, task
    descriptions and stream text only with --content (or [otel] content = true).

    Example: recorder export session_1795692537464 --output session.cast --max-idle 2

    Example: recorder export --format otlp --since 7d --endpoint http://127.0.0.1:4318
    """
    if fmt == "otlp":
        from recorder.cli.otel_export import export_otlp

        if max_idle is not None or connection is not None:
            raise UsageFailure("--format otlp: --max-idle and --connection are for a replay")
        export_otlp(load(config_path, database), session, output, **otlp)
        return
    given = [f"--{k.replace('_', '-')}" for k, v in otlp.items() if v not in (None, False)]
    if given:
        raise UsageFailure(f"{given[0]} is for --format otlp")
    if session is None:
        raise UsageFailure("Missing argument 'SESSION'.")
    _export_replay(load(config_path, database), session, fmt, output, max_idle, connection)


def _export_replay(
    target: Target,
    session: str,
    fmt: str,
    output: str | None,
    max_idle: float | None,
    connection: int | None,
) -> None:
    """The frames of a session's replay as an asciicast, or as JSONL."""
    from recorder.cli.render import frame_json
    from recorder.replay import source
    from recorder.replay.export import asciicast
    from recorder.replay.timing import Pace, output_times, paced

    with reading(target) as reader:
        plan = source.open_session(reader, session, connection)
        with output_file(output, target.url) as stream:
            timed = Counted(output_times(paced(source.cues(reader, plan), Pace())))
            if fmt == "asciicast":
                asciicast(
                    timed,
                    stream,
                    title=f"recorder replay {plan.id}",
                    started_us=plan.row.started_at_us or plan.row.first_seen_us,
                    idle_time_limit=max_idle,
                )
            else:
                import json

                for _, cue in timed:
                    if cue.frame is not None and cue.frame.row is not None:
                        stream.write(
                            json.dumps(frame_json(cue.frame.row), ensure_ascii=False) + "\n"
                        )
    timed.say_if_empty()


class Counted:
    """A replay's cues, counted as they go: a filter that leaves none (--connection,
    --from/--until) is said on stderr, as `frames` says "no frames match"."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.count += 1
            yield item

    def say_if_empty(self) -> None:
        if not self.count:
            click.echo("nothing to play: no frame of the session matches", err=True)


@contextlib.contextmanager
def output_file(output: str | None, database_url: str) -> Iterator[IO[str]]:
    """Where ``export`` writes: stdout, or a file written whole or not at all.

    A file is written beside itself and renamed into place at the end, so that a
    failed export leaves what was there; the database (or its WAL) is refused, which
    the open for writing would have emptied."""
    from recorder.db.backend import backend

    if output is None or output == "-":
        with click.open_file("-", "w", encoding="utf-8") as stream:
            yield stream
        return
    path = Path(output)
    database = backend(database_url).path
    if database is not None:
        for part in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            if path.resolve() == part.resolve():
                raise UsageFailure(f"--output: {output} is the database being read")
    try:
        special = path.exists() and not stat.S_ISREG(path.stat().st_mode)
        # A device or a pipe is written as it is: renaming over it would replace it.
        target = path if special else path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with open(target, "w", encoding="utf-8") as stream:
                yield stream
            if not special:
                os.replace(target, path)
        finally:
            if not special:
                target.unlink(missing_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
