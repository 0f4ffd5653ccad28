"""Where a benchmark's recorder writes, a SQLite file or a new PostgreSQL database, and
the benchmark's reads of it (the same SQL on both, written once with ``?`` parameters)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import BenchError, poll_row, ro_connect


def pg_sql(sql: str) -> str:
    """The benchmark's SQL is written once with ``?`` parameters; asyncpg wants $1, $2..."""
    numbers = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


class Database:
    """One fresh database for one measurement: the recorder writes it (``url`` is its
    ``storage.url``); the benchmark reads it, :meth:`scalar` while the recorder runs
    (None while the tables do not exist yet), :meth:`rows` afterwards."""

    kind = ""
    url = ""

    def scalar(self, sql: str, *params: Any) -> Any:
        raise NotImplementedError

    def rows(self, sql: str, *params: Any) -> Iterator[tuple[Any, ...]]:
        raise NotImplementedError

    def row(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        rows = self.rows(sql, *params)
        try:
            return next(rows, None)
        finally:
            rows.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def scalar(self, sql: str, *params: Any) -> Any:
        row = poll_row(self.path, sql, params)
        return None if row is None else row[0]

    def rows(self, sql: str, *params: Any) -> Iterator[tuple[Any, ...]]:
        con = ro_connect(self.path)
        try:
            yield from con.execute(sql, params)
        finally:
            con.close()


class PostgresDatabase(Database):
    """A new database on the server of ``server`` (a PostgreSQL URL naming any database
    the benchmark may connect to, to create and drop its own); dropped by :meth:`close`
    unless ``keep``. The benchmark reads it over one asyncpg connection of its own."""

    kind = "postgresql"

    def __init__(self, server: str, name: str, keep: bool) -> None:
        self.server = pg_url(server)
        self.name = name
        self.keep = keep
        self.url = pg_url(server, name)
        self._loop = asyncio.new_event_loop()
        self._conn: Any = None
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{name}"')

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def _admin(self, sql: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.server, timeout=10)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        try:
            self._run(run())
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(f"PostgreSQL at {self.server}: {sql}: {exc}") from None

    def _connection(self) -> Any:
        import asyncpg

        if self._conn is None:
            # No statement cache: the migrations change the tables under the polls.
            self._conn = self._run(asyncpg.connect(self.url, timeout=10, statement_cache_size=0))
        return self._conn

    def scalar(self, sql: str, *params: Any) -> Any:
        """One statement in its own transaction; None while the tables do not exist yet."""
        import asyncpg

        try:
            return self._run(self._connection().fetchval(pg_sql(sql), *params))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            return None

    def rows(self, sql: str, *params: Any) -> Iterator[tuple[Any, ...]]:
        """Through a cursor in one read-only transaction, 10 000 rows at a time."""
        conn = self._connection()
        transaction = conn.transaction(readonly=True)
        self._run(transaction.start())
        try:
            cursor = self._run(conn.cursor(pg_sql(sql), *params))
            while chunk := self._run(cursor.fetch(10_000)):
                yield from (tuple(row) for row in chunk)
        finally:
            self._run(transaction.rollback())

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._run(self._conn.close())
                self._conn = None
            if self.keep:
                print(f"kept database {self.url}", file=sys.stderr)
            else:
                self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            self._loop.close()


def pg_url(url: str, database: str | None = None) -> str:
    """``postgresql://...`` (for asyncpg, and for storage.url), with another database."""
    parts = urllib.parse.urlsplit(url)
    parts = parts._replace(scheme="postgresql")
    if database is not None:
        parts = parts._replace(path=f"/{database}")
    return urllib.parse.urlunsplit(parts)


def database_factory(url: str | None, keep: bool) -> Callable[[Path], Database]:
    """A fresh database per measurement: a file in its directory, or a new PostgreSQL one."""
    if url is None:
        return lambda workdir: SqliteDatabase(workdir / "bench.db")
    numbers = itertools.count(1)
    return lambda _: PostgresDatabase(url, f"bench_ingest_{os.getpid()}_{next(numbers)}", keep)
