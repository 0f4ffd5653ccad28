"""The writer's engine for a database URL (migrations, `recorder db`, the tests), and
the databases' errors as the recorder tells them: one line, never a value a driver
quotes (frame data). What differs by database is the backend's
(:mod:`recorder.db.backend`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


class StoreError(Exception):
    """A database problem worth one line to the user."""


def create_engine(url: str) -> AsyncEngine:
    from recorder.db.backend import backend

    return backend(url).engine()


def driver_errors() -> tuple[type[BaseException], ...]:
    """What the drivers raise for a database's refusal, below SQLAlchemy's wrapping."""
    import sqlite3

    from asyncpg import PostgresError

    return (sqlite3.Error, PostgresError)


def refusal(exc: BaseException) -> str | None:
    """If the database or its driver refused a value (it cannot encode it; SQLSTATE
    class 22, data exception, or 54, a limit such as an index entry's size), rather
    than being unable to write at all: which refusal, without the value (the
    drivers' messages quote it, and it is frame data). Else None."""
    seen: set[int] = set()
    found: BaseException | None = exc
    refused = None  # the innermost says most (SQLAlchemy and its adapter wrap it)
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        name = type(found).__name__
        state = getattr(found, "sqlstate", None)
        if isinstance(found, UnicodeError | OverflowError):
            refused = name
        elif isinstance(state, str) and state.startswith(("22", "54")):
            refused = f"{name} (SQLSTATE {state})"
        elif name == "DataError" and type(found).__module__.startswith("asyncpg"):
            refused = name  # asyncpg's own: a value it cannot encode for the column
        found = getattr(found, "orig", None) or found.__cause__ or found.__context__
    return refused
