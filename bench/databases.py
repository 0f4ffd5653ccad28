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


class SqliteDatabase:
    """A file for one measurement: the recorder writes it (``url`` is its ``storage.url``);
    the benchmark reads it, :meth:`scalar` while the recorder runs (None while the tables
    do not exist yet), :meth:`rows` afterwards."""

    def __init__(self, path: Path) -> None:
        self.path, self.url = path, f"sqlite:///{path}"

    def scalar(self, sql: str, *params: Any) -> Any:
        return (poll_row(self.path, sql, params) or (None,))[0]

    def rows(self, sql: str, *params: Any) -> Iterator[tuple[Any, ...]]:
        con = ro_connect(self.path)
        try:
            yield from con.execute(sql, params)
        finally:
            con.close()

    def close(self) -> None:
        pass


class PostgresDatabase:
    """A new database ``name`` on the server ``server`` names (any database there the
    benchmark may connect to), read over one asyncpg connection; dropped by
    :meth:`close` unless ``keep``."""

    def __init__(self, server: str, name: str, keep: bool) -> None:
        import asyncpg

        self.server, self.url = pg_url(server), pg_url(server, name)
        self.name, self.keep = name, keep
        self._loop = asyncio.new_event_loop()
        try:
            self._admin = self._run(asyncpg.connect(self.server, timeout=10))
            self._run(self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            self._run(self._admin.execute(f'CREATE DATABASE "{name}"'))
            # No statement cache: the migrations change the tables under the polls.
            self._conn = self._run(asyncpg.connect(self.url, timeout=10, statement_cache_size=0))
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(f"PostgreSQL at {self.server}: {exc}") from None

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    @staticmethod
    def _sql(sql: str) -> str:
        numbers = itertools.count(1)  # asyncpg wants $1, $2... for ?
        return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)

    def scalar(self, sql: str, *params: Any) -> Any:
        import asyncpg

        try:
            return self._run(self._conn.fetchval(self._sql(sql), *params))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            return None

    def rows(self, sql: str, *params: Any) -> Iterator[tuple[Any, ...]]:
        """Through a cursor in one read-only transaction, 10 000 rows at a time."""
        transaction = self._conn.transaction(readonly=True)
        self._run(transaction.start())
        try:
            cursor = self._run(self._conn.cursor(self._sql(sql), *params))
            while chunk := self._run(cursor.fetch(10_000)):
                yield from (tuple(row) for row in chunk)
        finally:
            self._run(transaction.rollback())

    def close(self) -> None:
        try:
            self._run(self._conn.close())
            if self.keep:
                print(f"kept database {self.url}", file=sys.stderr)
            else:
                self._run(
                    self._admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                )
            self._run(self._admin.close())
        finally:
            self._loop.close()


def pg_url(url: str, database: str | None = None) -> str:
    """``postgresql://...`` (for asyncpg, and for storage.url), with another database."""
    parts = urllib.parse.urlsplit(url)._replace(scheme="postgresql")
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}") if database else parts)


# One fresh database for one measurement, either kind.
Database = SqliteDatabase | PostgresDatabase


def database_factory(url: str | None, keep: bool) -> Callable[[Path], Database]:
    """A fresh database per measurement: a file in its directory, or a new PostgreSQL one."""
    if url is None:
        return lambda workdir: SqliteDatabase(workdir / "bench.db")
    numbers = itertools.count(1)
    return lambda _: PostgresDatabase(url, f"bench_ingest_{os.getpid()}_{next(numbers)}", keep)
