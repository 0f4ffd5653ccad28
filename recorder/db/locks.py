"""One recorder per database: the instance lock, and whether a recorder holds it.

Chosen by the backend (:meth:`recorder.db.backend.Backend.lock`); both kinds are
taken and released the same way (:class:`InstanceLock`).

SQLite: an exclusive ``flock`` on ``<database>.lock`` beside the file, held for the
service's life and released by the kernel however the process ends (SIGKILL
included), so a stale lock cannot outlive its holder. The file says who holds it
(PID, host, since) for the one-line refusal a second recorder prints. It holds no
secret, yet stays 0600: whoever can open it can hold a shared ``flock`` on it for as
long as they like, and no recorder could start on the database meanwhile. Another user
therefore cannot tell from it whether a recorder runs (:class:`CannotTell`).
PostgreSQL: an advisory lock per instance name (:class:`AdvisoryLock`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from recorder.db.readonly import os_reason
from recorder.times import format_us, now_us

if TYPE_CHECKING:
    from recorder.db.readonly import Reader


class AlreadyRunning(Exception):
    """Another recorder holds this database."""


class CannotTell(Exception):
    """The lock file is there but cannot be opened (another user's, 0600): whether a
    recorder holds it is unknown. The message says which file and why."""


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class InstanceLock(Protocol):
    """Held by whoever writes: the service, or a direct `recorder cleanup run`."""

    # A recorder held it before and did not say it stopped cleanly (SQLite; the next
    # start checks the file), and one had held it at all (the database is ours).
    unclean: bool
    used_before: bool

    async def acquire(self) -> None:
        """Take it, or raise AlreadyRunning naming the holder (OSError: a full disk)."""
        ...

    async def release(self, clean: bool = True, refused: bool = False) -> None:
        """``clean``: the run stopped cleanly. ``refused``: it refused the database
        before using it (a lock file it made goes)."""
        ...

    async def give_back(self) -> None:
        """Release a lock borrowed for a moment, leaving what it said of the last run."""
        ...


class FileLock:
    """SQLite: ``flock`` on ``<database>.lock``."""

    def __init__(self, database: Path, shown: str) -> None:
        self.path = lock_path(database)
        self.shown = shown
        self._fd: int | None = None
        # What the lock file said before this acquire.
        self.previous = b""
        self.unclean = False
        # A recorder has held this lock before: the database beside it is ours.
        self.used_before = False
        # This acquire made the lock file (no recorder had been here).
        self.created = False

    async def acquire(self) -> None:
        """Take the lock, or raise AlreadyRunning naming the holder."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"another recorder is running on {self.shown} ({holder}); "
                "stop it first, or point this one at another database"
            ) from None
        previous = os.pread(fd, 4096, 0)
        # Who held it last left "stopped" in it only if it stopped cleanly.
        self.unclean = bool(previous) and b'"stopped": true' not in previous
        self.used_before = bool(previous)
        self.previous = previous
        info = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": format_us(now_us())}
        ).encode()
        try:
            # Written over the old text, then cut to length: on a full disk a write
            # fails before anything is lost (the service waits for room, and retries).
            os.pwrite(fd, info, 0)
            os.ftruncate(fd, len(info))
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    async def release(self, clean: bool = True, refused: bool = False) -> None:
        """``clean``: the run stopped cleanly (the next start skips its check).
        ``refused``: the run refused the database before using it; a lock file this
        run made goes, or the next start would take the file for a recorder's."""
        if refused and self.created:
            self.path.unlink(missing_ok=True)
        if self._fd is not None:
            if clean:
                info = {"pid": os.getpid(), "stopped": True, "at": format_us(now_us())}
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, json.dumps(info).encode(), 0)
            os.close(self._fd)
            self._fd = None

    async def give_back(self) -> None:
        """Release a lock borrowed for a moment (a direct cleanup run): the file says
        again what it said, so the next recorder's start judges the last one's stop."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, self.previous, 0)
            finally:
                os.close(self._fd)
                self._fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"PID {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "its PID is unknown"


def file_holder(database: Path) -> str | None:
    """Who holds the lock of ``database`` (PID, host, since), or None if nobody does
    (no lock file: no recorder has run here). CannotTell when the file cannot be opened."""
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CannotTell(f"cannot read its lock {path} ({os_reason(exc)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError as exc:
        raise CannotTell(f"cannot lock its lock {path} ({os_reason(exc)})") from None
    finally:
        os.close(fd)
    return None


def advisory_key(instance: str) -> int:
    """The PostgreSQL advisory lock of one named instance: a signed 64-bit number."""
    digest = hashlib.blake2b(f"orchestrator-recorder:{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLock:
    """PostgreSQL: a session advisory lock per instance name, held on a connection of
    its own for the service's life (the server releases it when the connection goes,
    however the process ends). Recorders with different names share the database."""

    def __init__(self, dsn: str, instance: str, shown: str) -> None:
        self.dsn = dsn
        self.instance = instance
        self.shown = shown
        self._conn: Any = None
        # The server keeps nothing of a stop: a start cannot tell a clean one.
        self.unclean = self.used_before = False

    async def acquire(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=10)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", advisory_key(self.instance)):
            holder = await _postgres_holder(conn, self.instance)
            await conn.close()
            raise AlreadyRunning(
                f"another recorder named {self.instance!r} is running on {self.shown} ({holder}); "
                "stop it first, or give this one another storage.instance"
            )
        self._conn = conn

    async def release(self, clean: bool = True, refused: bool = False) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def give_back(self) -> None:
        await self.release()


async def _postgres_holder(conn: Any, instance: str) -> str:
    import asyncpg

    try:
        row = await conn.fetchrow(
            "SELECT pid, host, started_us FROM instances WHERE name = $1", instance
        )
    except asyncpg.PostgresError:
        return "its PID is unknown"
    if row is None:
        return "its PID is unknown"
    return f"PID {row['pid']} on {row['host']}, since {format_us(row['started_us'])}"


def advisory_holder(reader: Reader, instance: str) -> str | None:
    """Who holds the lock of the recorder named ``instance`` on PostgreSQL (PID, host,
    since), or None if no recorder of that name is running. On the CLI's reader: a
    database that cannot be reached is its one-line error."""
    key = advisory_key(instance)
    if reader.rows("SELECT pg_try_advisory_lock(:key) AS got", {"key": key})[0]["got"]:
        reader.rows("SELECT pg_advisory_unlock(:key)", {"key": key})
        return None
    rows = reader.rows(
        "SELECT pid, host, started_us FROM instances WHERE name = :name", {"name": instance}
    )
    if not rows:
        return "its PID is unknown"
    row = rows[0]
    return f"PID {row['pid']} on {row['host']}, since {format_us(row['started_us'])}"
