"""What the commands share: options written once, configuration loading, database errors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from recorder.config import Config, ConfigError, load_config, redact_url
from recorder.times import parse_when

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# SQLAlchemy and the database modules are imported inside the functions that query:
# `recorder run` never loads them in the service's process (the writer process does).

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

    from recorder.db.engine import StoreError, create_engine, prepare_sqlite_file, require_database

    async def go() -> T:
        url = config.storage.url
        if create:
            prepare_sqlite_file(url)
        else:
            require_database(url)
        engine = create_engine(url)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except StoreError as exc:
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


def parse_time_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
