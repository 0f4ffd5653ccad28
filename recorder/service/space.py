"""A full disk at start is a state to wait out, not a failure to restart into.

`recorder run` on a disk with no room could not open its database and exited 1 in
0.2 s, every time: under ``Restart=on-failure`` a restart loop. Now the service says
"disk full" once, tells systemd (``STATUS=``, the watchdog fed), watches the
filesystem, and starts when room comes back; a stop signal meanwhile is a clean stop.
SQLite only: a PostgreSQL server's disk is not this machine's to watch.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from recorder.db.backend import backend, display_database
from recorder.db.readonly import files_bytes
from recorder.pipeline.cleanup_ops import DatabaseBytes
from recorder.service.notify import Notifier

if TYPE_CHECKING:
    from recorder.pipeline.writer import Writer

log = structlog.get_logger("recorder.service")

# Less than this free on the database's filesystem is a full disk: SQLite needs room
# for its -wal and -shm, and a page or two, before it can even open the database.
FULL_BELOW = 1 << 20
# How often the filesystem is looked at while waiting.
POLL = 1.0
# What SQLite and the OS say when the disk (or a quota) has no room.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_WORDS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def available(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of ``path`` (the
    file need not exist); 0 when no inode is left; None if it cannot be known."""
    for place in (path, *path.parents):
        try:
            st = os.statvfs(place)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if st.f_files and not st.f_favail:
            return 0
        return st.f_bavail * st.f_frsize
    return None


def disk_full(error: str, free: int | None) -> bool:
    """Whether a start that failed with ``error`` failed for want of room. SQLite
    often says only "disk I/O error" (a -shm it could not grow), so the filesystem's
    free space decides too."""
    return any(word in error.lower() for word in FULL_WORDS) or (
        free is not None and free < FULL_BELOW
    )


def room_again(free: int | None, at_failure: int | None) -> bool:
    """Whether to try starting again: the filesystem has gained room since the
    attempt that failed (``at_failure`` free then), and has enough to open."""
    if free is None:
        return False
    return free >= FULL_BELOW and free >= (at_failure or 0) + FULL_BELOW


def status(path: Path, free: int | None) -> str:
    shown = "unknown" if free is None else f"{free:,} bytes"
    return f"waiting for disk space: {path.parent} is full ({shown} free); SIGTERM stops"


async def wait_for_room(
    path: Path, stop: asyncio.Event, notifier: Notifier, at_failure: int | None
) -> bool:
    """Until the filesystem of ``path`` has room again (True) or ``stop`` is set
    (False). systemd hears READY=1 (the service is up, waiting), what it waits for
    in STATUS=, and WATCHDOG=1 all along."""
    notifier.send(READY=1, STATUS=status(path, at_failure))
    interval = min(POLL, notifier.watchdog or POLL)
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
        if stop.is_set():
            return False
        free = available(path)
        if room_again(free, at_failure):
            return True
        fields: dict[str, str | int] = {"STATUS": status(path, free)}
        if notifier.watchdog is not None:
            fields["WATCHDOG"] = 1
        notifier.send(**fields)


class FullDisk:
    """The waits of one start for room on the disk of a SQLite database: "disk full"
    is said once for them all (the lock file's disk, then the database's)."""

    def __init__(self, url: str, notifier: Notifier) -> None:
        self.url = url
        # A file's disk can be watched for room; a server's is the server's business.
        self.path = backend(url).path
        self.notifier = notifier
        self.said = False

    def full(self, error: str) -> bool:
        """Whether a start that failed with ``error`` failed for want of room."""
        return self.path is not None and disk_full(error, available(self.path))

    async def wait(self, stop: asyncio.Event, error: str) -> bool:
        """Until there is room again (True, try again) or ``stop`` is set (False)."""
        assert self.path is not None  # full() said so
        free = available(self.path)
        if not self.said:
            log.error(
                "disk full: waiting for space before starting",
                database=display_database(self.url),
                available=free,
                error=error,
            )
            self.said = True
        if not await wait_for_room(self.path, stop, self.notifier, free):
            return False
        log.info("disk has room again; starting", available=available(self.path))
        return True


async def measured(writer: Writer, url: str) -> int:
    """The database's size for /metrics, as `recorder status` counts it: a file with
    its -wal and -shm (the WAL left out, a busy recorder's 3 MiB read as 240 KiB); a
    server's database as the writer measures it (what storage.max_db_size holds)."""
    path = backend(url).path
    if path is not None:
        return await asyncio.to_thread(files_bytes, path)
    return await writer.perform(DatabaseBytes())
