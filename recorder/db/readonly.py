"""Read-only connections for the query commands: the stdlib's sqlite3, or asyncpg.

A query command must answer at once and must never change a database it reads: a
postmortem often runs on a copy, in a directory the reader cannot write. So the
read side does not go through SQLAlchemy (half a second of imports here) nor the
writer's engine set-up (which switches a file to WAL). SQL is written once with
``:name`` parameters; PostgreSQL gets them as ``$1, $2, ...``.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from recorder.db.backend import Backend

# Rows come back as sqlite3.Row or asyncpg.Record: both are read by column name.
Row = Any


class ReadError(Exception):
    """A database the user named cannot be read; one line, naming it as they wrote it."""


class Reader(Protocol):
    """A read-only connection. Every call is one statement, fetched whole and ended
    before it returns: no read snapshot outlives a call, so a reader never keeps a
    SQLite writer's WAL from starting over (nor PostgreSQL's vacuum from its work)
    while its caller prints or waits. Long reads go page by page
    (:mod:`recorder.db.pages`)."""

    # What differs between databases (the SQL spellings among it).
    backend: Backend

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]: ...

    def page(self, sql: str, params: Mapping[str, Any], budget: int) -> list[Row]:
        """The rows of ``sql`` (a page: its LIMIT bounds their number), taken until
        their ``size`` column adds up to ``budget`` bytes: a page of hostile 10 MB
        frames holds a few of them, not a thousand."""
        ...

    def size_bytes(self) -> int | None: ...

    def close(self) -> None: ...


def open_reader(url: str, shown: str | None = None) -> Reader:
    """A read-only connection to ``url``; ``shown`` is how messages name the database."""
    from recorder.db.backend import backend

    return backend(url).read_only(shown)


def first_row(reader: Reader, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
    rows = reader.rows(sql, params)
    return rows[0] if rows else None


class SqliteReader:
    """SQLite opened with ``mode=ro``: the file's bytes never change.

    A live recorder's database, or a copy with its ``-wal`` beside it, is read with
    the WAL's content. SQLite needs a ``-shm`` file for that; where one can be
    neither found nor created (a copy in a read-only directory), a file without WAL
    content is read as immutable, and one with it is copied, with its WAL, to a
    private temporary directory and read there.
    """

    def __init__(self, path: Path, shown: str, backend: Backend) -> None:
        self.path = path
        self.shown = shown
        self.backend = backend
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise ReadError(
                f"no database at {shown} (start `recorder run` or run `recorder db upgrade`)"
            ) from None
        except OSError as exc:  # a directory on the way this user may not enter
            raise ReadError(f"cannot read {shown} ({os_reason(exc)})") from None
        if stat.S_ISDIR(mode):
            raise ReadError(f"{shown} is a directory, not a database file")
        if not os.access(path, os.R_OK):
            raise ReadError(f"cannot read {shown} (permission denied)")
        self.conn = self._connect(path)
        try:
            self._probe()
        except sqlite3.OperationalError as exc:
            if not _needs_private_copy(exc):
                self.conn.close()
                raise self.error(exc) from None
            self.conn.close()
            wal = Path(f"{path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                self.conn = self._private_copy(shown)
            else:
                # Nothing beyond the file itself to read, and no writer here: read it
                # as an immutable file, without locks or a -shm.
                self.conn = self._connect(path, immutable=True)
            try:
                self._probe()
            except sqlite3.Error as exc2:
                self.close()
                raise self.error(exc2) from None
        except sqlite3.Error as exc:
            self.conn.close()
            raise self.error(exc) from None

    @staticmethod
    def _connect(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
        uri = f"file:{quote(str(path.absolute()))}?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # A live writer may hold the lock for a moment; a query waits for it.
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _probe(self) -> None:
        self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def _private_copy(self, shown: str) -> sqlite3.Connection:
        self._tmp = tempfile.TemporaryDirectory(prefix="recorder-read-")
        copy = Path(self._tmp.name) / self.path.name
        for suffix in ("", "-wal"):
            source = Path(f"{self.path}{suffix}")
            try:
                if source.exists():
                    shutil.copyfile(source, f"{copy}{suffix}")
            except OSError as exc:
                # A live recorder's WAL (its latest commits) that this user may not read:
                # the file alone would be an older database, shown as the current one.
                self.close()
                raise ReadError(f"cannot read {shown}{suffix} ({os_reason(exc)})") from None
        return self._connect(copy)

    def error(self, exc: BaseException) -> ReadError:
        return ReadError(describe_error(self.shown, exc))

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        try:
            return self.conn.execute(sql, params or {}).fetchall()
        except sqlite3.Error as exc:
            raise self.error(exc) from None

    def page(self, sql: str, params: Mapping[str, Any], budget: int) -> list[Row]:
        # Stepped row by row (the driver reads no row before it is asked for), and
        # stopped at the budget: the statement ends here, and its snapshot with it.
        taken: list[Row] = []
        held = 0
        try:
            cursor = self.conn.execute(sql, params)
            try:
                for row in cursor:
                    taken.append(row)
                    held += row["size"]
                    if held >= budget:
                        break
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise self.error(exc) from None
        return taken

    def size_bytes(self) -> int | None:
        return files_bytes(self.path)

    def close(self) -> None:
        self.conn.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def files_bytes(path: Path) -> int:
    """What a SQLite database takes on disk: the file, its -wal (a running recorder's
    latest commits, often most of it) and its -shm; what `recorder status` and
    /metrics report."""
    total = 0
    for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            total += part.stat().st_size
        except FileNotFoundError:
            pass  # no WAL: checkpointed and closed, or never written
    return total


def _needs_private_copy(exc: sqlite3.OperationalError) -> bool:
    # Read-only WAL access without a -shm file it may create.
    text = str(exc)
    return "unable to open database file" in text or "readonly" in text


def os_reason(exc: OSError) -> str:
    """An OSError as a few words ("permission denied"), without the path it repeats."""
    return (exc.strerror or type(exc).__name__).lower()


def describe_error(shown: str, exc: BaseException, doing: str = "read") -> str:
    """A database error as one line that names the database the way the user did;
    ``doing`` is what failed ("read", "write")."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return f"database {shown} has no recorder tables; run `recorder db upgrade`"
    if "file is not a database" in text or "malformed" in text:
        return f"{shown} is not a usable SQLite database ({text})"
    return f"cannot {doing} database {shown}: {text}"


_PARAM = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


def numbered(sql: str, params: Mapping[str, Any] | None) -> tuple[str, Sequence[Any]]:
    """``:name`` parameters to asyncpg's ``$1, $2, ...``, and the values in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = _PARAM.sub(number, sql)
    values = params or {}
    return text, [values[name] for name in names]


class PostgresReader:
    """PostgreSQL through asyncpg, in read-only transactions, driven from sync code."""

    def __init__(self, dsn: str, shown: str, backend: Backend) -> None:
        import asyncio

        import asyncpg

        self.shown = shown
        self.backend = backend
        self._asyncpg = asyncpg
        self._loop = asyncio.new_event_loop()
        try:
            self.conn = self._loop.run_until_complete(asyncpg.connect(dsn, timeout=10))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            self._loop.close()
            raise ReadError(describe_error(shown, exc)) from None

    def _run(self, awaitable: Any) -> Any:
        try:
            return self._loop.run_until_complete(awaitable)
        except (OSError, self._asyncpg.PostgresError) as exc:
            raise ReadError(describe_error(self.shown, exc)) from None

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        text, values = numbered(sql, params)
        return list(self._run(self.conn.fetch(text, *values)))

    def page(self, sql: str, params: Mapping[str, Any], budget: int) -> list[Row]:
        # One statement, outside any transaction; the page's SQL (recorder.db.pages)
        # cuts it at the budget itself, since stopping a server-side cursor early
        # would need a transaction around it.
        return self.rows(sql, {**params, "budget": budget})

    def size_bytes(self) -> int | None:
        return int(self._run(self.conn.fetchval("SELECT pg_database_size(current_database())")))

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self.conn.close())
        finally:
            self._loop.close()


def frames_since(url: str, after_id: int | None) -> int | None:
    """With ``after_id`` None: the newest frame id; else how many frames have a larger
    one. Read-only, through its own connection; None if the database cannot say."""
    try:
        reader = open_reader(url)
    except ReadError:
        return None
    try:
        if after_id is None:
            row = first_row(reader, "SELECT coalesce(max(id), 0) AS n FROM frames")
        else:
            row = first_row(
                reader, "SELECT count(*) AS n FROM frames WHERE id > :after", {"after": after_id}
            )
        return int(row["n"]) if row is not None else None
    except ReadError:
        return None
    finally:
        reader.close()
