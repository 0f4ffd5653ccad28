"""What the commands share: options written once, configuration, the database to read.

The query commands import neither asyncio nor SQLAlchemy (half a second of
imports on a small machine): they read through :mod:`recorder.db.readonly`. Only
``recorder db`` and ``recorder run`` load the writer's stack.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from recorder.addresses import redact_url
from recorder.config import Config, ConfigError, load_config, normalize_database_url
from recorder.db.backend import display_database
from recorder.db.urls import url_of_argument
from recorder.times import parse_when

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from recorder.db.backend import Backend
    from recorder.db.recordings import Recordings

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# SQLite and PostgreSQL integers (ids, limits, microsecond times) are signed 64-bit:
# a larger number is the user's mistake, not the database's, so the option says so.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Count(click.types.IntParamType):
    """A row count or id: at least ``least``, and never more than databases hold.

    Not click.IntRange: its help would print the 19-digit bound on every option.
    """

    def __init__(self, least: int = INT64_MIN) -> None:
        self.least = least

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = super().convert(value, param, ctx)
        if number < self.least:
            self.fail(f"must be at least {self.least}, got {number}", param, ctx)
        if number > INT64_MAX:
            self.fail(f"must be at most {INT64_MAX}, got {number}", param, ctx)
        return number


class FiniteRange(click.FloatRange):
    """A FloatRange without nan and inf, which the range lets through (nan compares
    false with its bounds) and which would stall a replay or put NaN in a .cast file."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class UsageFailure(click.ClickException):
    """A usage or configuration error: one line, exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Target:
    """The loaded configuration and how messages name its database."""

    config: Config
    shown: str

    @property
    def url(self) -> str:
        return self.config.storage.url

    @property
    def backend(self) -> Backend:
        from recorder.db.backend import backend

        return backend(self.url)


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


def target_options(fn: F) -> F:
    """``--config`` and ``--database``: which database a command works on."""
    return config_option(database_option(fn))


def load(config_path: str | None, database: str | None = None) -> Target:
    env = dict(os.environ)
    if database is not None and not database.strip():
        # Empty fell back to the configured database: not what was asked for.
        raise UsageFailure("--database: expected a database URL or a file path, got ''")
    if database:
        try:
            url = url_of_argument(database)
        except ValueError as exc:
            raise UsageFailure(f"--database: {exc}") from None
        try:
            # Checked on its own first: a bad URL here is the option's fault, not
            # the configuration's, and the message must say --database.
            normalize_database_url("--database", url.strip(), env)
        except ConfigError as exc:
            raise UsageFailure(
                str(exc).replace("--database: storage.url: ", "--database: ", 1)
            ) from None
        env["RECORDER_DATABASE_URL"] = url
    try:
        config = load_config(config_path, env)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    if not database:
        shown = display_database(config.storage.url)
    elif "://" in database:
        shown = redact_url(database)  # as the user typed it, but never with its password
    else:
        shown = redact_url(database)  # a path; but u:pw@h/x was meant as a URL
    return Target(config, shown)


@contextmanager
def reading(target: Target) -> Iterator[Recordings]:
    """The database's recordings, read-only; any failure to read is one line, exit 1."""
    from recorder.db.readonly import ReadError
    from recorder.db.recordings import Recordings

    try:
        recordings = Recordings.open(target.url, target.shown)
    except ReadError as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, OverflowError) as exc:
        # The driver's verdict on a URL it cannot parse (a port of "abc" or 99999,
        # an sslmode it does not know): the URL is wrong, not the database.
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageFailure(f"bad database URL {target.shown}: {text}") from None
    try:
        yield recordings
    except ReadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        recordings.close()


def running_recorder(target: Target) -> str | None:
    """Who runs the recorder ``target`` names (PID, host, since), or None if none runs.

    Every command that writes asks first, and none may guess: when the lock cannot be
    read (another user's recorder, its lock 0600), this is its one line, exit 1."""
    from recorder.db.locks import CannotTell
    from recorder.db.readonly import ReadError

    try:
        return target.backend.holder(target.config.storage.instance)
    except ReadError as exc:
        raise click.ClickException(str(exc)) from None
    except CannotTell as exc:
        raise click.ClickException(
            f"cannot tell whether a recorder is running on {target.shown}: {exc}; "
            "changed nothing (run this as the user the recorder runs as)"
        ) from None


@contextmanager
def writing(target: Target) -> Iterator[None]:
    """A command's writes to the database, their failures in one line (exit 1): a user
    who may read the database but not write it is told so, without a traceback."""
    from sqlalchemy.exc import DBAPIError

    from recorder.cli.main import OutputError
    from recorder.db.engine import StoreError, driver_errors
    from recorder.db.readonly import describe_error, os_reason

    try:
        yield
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except DBAPIError as exc:
        raise click.ClickException(describe_error(target.shown, exc.orig or exc, "write")) from None
    except driver_errors() as exc:
        raise click.ClickException(describe_error(target.shown, exc, "write")) from None
    except OutputError:
        raise  # stdout's failure, told by main(): not the database's
    except OSError as exc:
        raise click.ClickException(
            f"cannot write database {target.shown} ({os_reason(exc)})"
        ) from None


def run_db(
    target: Target, fn: Callable[[AsyncEngine], Coroutine[Any, Any, T]], *, create: bool = False
) -> T:
    """For ``recorder db``: run ``fn(engine)`` on the writer's engine, errors in one line."""
    import asyncio

    from recorder.db.backend import backend
    from recorder.db.engine import StoreError

    database = backend(target.url)

    async def go() -> T:
        if create:
            database.prepare()
        elif (missing := database.missing()) is not None:
            raise StoreError(missing)
        engine = database.engine()
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    with writing(target):
        return asyncio.run(go())


def parse_moment(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A time option's value as epoch microseconds."""
    if value is None:
        return None
    try:
        moment: int | None = parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    except OverflowError:  # a relative time so large that it is no longer a number
        moment = None
    # Only a relative time can leave the range: ISO-8601 stops at years 1 and 9999.
    if moment is None or not INT64_MIN <= moment <= INT64_MAX:
        raise click.BadParameter(
            f"too far back: {value!r} (databases hold times within 292,000 years of 1970)",
            param=param,
        )
    return moment


def time_options(fn: F) -> F:
    """``--since`` and ``--until``, as epoch microseconds; since must come first."""
    fn = click.option("--until", callback=parse_moment, help="Before this time.")(fn)
    return click.option(
        "--since", callback=parse_moment, help="From this time: ISO-8601, or 30s, 15m, 2h, 7d ago."
    )(fn)


def limit_option(default: int) -> Callable[[F], F]:
    """``--limit N``: at most N rows, 0 for all."""
    return click.option(
        "--limit", type=Count(0), default=default, show_default=True, help="0 for all."
    )


def connection_option(help: str) -> Callable[[F], F]:
    """``--connection ID`` as the command's ``connection_id`` argument."""
    return click.option("--connection", "connection_id", type=Count(), help=help)


SESSION_HELP = "its id, or the start of it"


def _session_text(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # Empty is the start of every id: it would name the one session of a database
    # that has one, and a mistake (an unset shell variable) must not.
    if value is not None and not value.strip():
        raise click.BadParameter(f"expected a session id or the start of one, got {value!r}")
    return value


def session_option(help: str) -> Callable[[F], F]:
    """``--session SESSION`` as the command's ``session_id`` argument: an id or a unique
    start of one, resolved by the read library (``Recordings.session``)."""
    return click.option(
        "--session",
        "session_id",
        metavar="SESSION",
        callback=_session_text,
        help=f"{help} ({SESSION_HELP}).",
    )


def session_argument(fn: F) -> F:
    """The ``SESSION`` argument, as ``session``: an id or a unique start of one."""
    return click.argument("session", metavar="SESSION", callback=_session_text)(fn)


def optional_session_argument(fn: F) -> F:
    """``[SESSION]``, as ``session`` (None when not given)."""
    return click.argument("session", metavar="[SESSION]", required=False, callback=_session_text)(
        fn
    )


def check_span(since: int | None, until: int | None) -> None:
    if since is not None and until is not None and since > until:
        raise click.UsageError("--since is later than --until")


def output_option(json_means: str = "json", *, stream: bool = False) -> Callable[[F], F]:
    """``--format table|json|jsonl`` as the command's ``fmt`` argument, the same on every
    query command, and ``--json`` as the alias it was before: ``json_means`` is
    ``jsonl`` for the list commands that had it (one object per line), else ``json``.

    A ``stream`` (``tail``) has no end at which to close one document: json is JSON
    lines there. A command that prints one document prints it on one line for jsonl
    (:func:`document`)."""
    if stream:
        json_means = "jsonl"
        shapes = "json and jsonl for one object per line (a stream never ends a document)."
    else:
        shapes = "json for one document, jsonl for one object per line."

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def command(*args: Any, as_json: bool, fmt: str, **kwargs: Any) -> Any:
            chosen = json_means if as_json else fmt
            return fn(*args, fmt="jsonl" if stream and chosen == "json" else chosen, **kwargs)

        command = click.option(
            "--json", "as_json", is_flag=True, help=f"Same as --format {json_means}."
        )(command)
        command = click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json", "jsonl"]),
            default="table",
            show_default=True,
            help="table for people (sized to the terminal), " + shapes,
        )(command)
        return cast(F, command)

    return decorate


def document(value: Any, fmt: str) -> None:
    """One JSON document as ``--format`` asks: indented for json, one line for jsonl."""
    import json

    click.echo(json.dumps(value, ensure_ascii=False, indent=2 if fmt == "json" else None))


def nothing(what: str) -> None:
    """Say on stderr that a query matched nothing (exit status stays 0)."""
    click.echo(f"no {what} match", err=True)
