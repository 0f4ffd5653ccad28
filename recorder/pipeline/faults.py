"""Database faults as the database process lives through them.

What an error may say in a log line (never frame data: SQL parameters and
exception messages can quote it), how long a failed write waits before it is
tried again and what is logged meanwhile (:class:`Outage`), and the one fault
that retrying cannot help (:func:`stop_if_corrupt`).
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from recorder.db.connection import WriterDatabase

log = structlog.get_logger("recorder.pipeline")

# A failed batch write is retried after this, doubling up to the cap: a disk that
# was full and is no longer is written to within seconds.
RETRY_FIRST = 0.5
RETRY_CAP = 2.0
# While a fault lasts, it is logged again this often.
STILL_FAILING_EVERY = 60.0


def raised_at(exc: BaseException) -> str:
    """An exception as its type and the line that raised it: no message, which could
    quote frame data."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {Path(last.filename).name}:{last.lineno} in {last.name}"


def short_error(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line without SQL parameters: what a log line may carry."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    text = f"{type(orig or exc).__name__}: {orig or exc}".splitlines()[0]
    return text if len(text) <= limit else text[:limit] + "..."


def stop_if_corrupt(exc: BaseException) -> None:
    """Exit the process when ``exc`` says the database file is corrupt.

    Retrying cannot help. The service notices at once, reports what was lost and
    exits; its restart finds the file unclean, checks it, and sets it aside
    (recorder.db.integrity).
    """
    from recorder.db.integrity import broken

    if broken(exc):
        log.error("database is corrupt; stopping the writer", error=short_error(exc))
        os._exit(3)


class Outage:
    """A write of ``frames`` frames that keeps failing, from its first failure on.

    The write is kept and retried: the service's queue fills meanwhile and pushes
    back on the sockets, so nothing is dropped while the database is away. Logged
    when the fault begins, now and then while it lasts, and when it ends; one short
    line each time, never frame data.
    """

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.delay = RETRY_FIRST
        # When the first failure was (time.monotonic()); None: none yet.
        self.since: float | None = None
        self._logged = 0.0

    @property
    def began(self) -> bool:
        """The write has failed at least once."""
        return self.since is not None

    async def retry_after(self, db: WriterDatabase, error: str) -> None:
        """A failure (``error``, a short line): logged if due, then wait, and reopen
        the database connection for the next attempt."""
        now = time.monotonic()
        if self.since is None or now - self._logged >= STILL_FAILING_EVERY:
            log.error(
                "database write failed; retrying"
                if self.since is None
                else "database writes still failing; retrying",
                error=error,
                frames=self.frames,
                retry_in=self.delay,
            )
            self._logged = now
        if self.since is None:
            self.since = now
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, RETRY_CAP)
        try:
            await db.reopen()
        except Exception:
            pass  # the next attempt fails and waits again

    def ended(self) -> None:
        """The write went through: say so, if it had failed."""
        if self.since is not None:
            log.warning(
                "database writes resumed", failed_for=round(time.monotonic() - self.since, 1)
            )
