"""Recordings the console's stats and session tests read: link connections that open
and close at chosen times (a gap between two of them), each with its script of frames,
written by the writer's own code."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from recorder.db.connection import WriterDatabase
from recorder.db.migrations import upgrade_sync
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from tests.cleanup_scripts import Script


@dataclass(frozen=True)
class Link:
    """One link connection: opened and (None: left open) closed at these times, the
    frames of ``script`` recorded on it."""

    opened_us: int
    closed_us: int | None
    script: Script


def url_of(db: Path | str) -> str:
    if isinstance(db, Path):
        return f"sqlite:///{db}"
    return db.replace("postgresql://", "postgresql+asyncpg://")  # the writer's driver


def write_links(
    db: Path | str, links: Sequence[Link], instance: str = "default", *, timed: bool = False
) -> None:
    """Each link connection with its frames. ``timed``: a frame's monotonic time is its
    received time (in ns), so durations are differences of received times; else its
    sequence number."""
    asyncio.run(_record(url_of(db), links, instance, timed))


async def _record(url: str, links: Sequence[Link], instance: str, timed: bool) -> None:
    db = await WriterDatabase.open(url)
    try:
        await db.run(upgrade_sync)
        store = Store(db.dialect, instance)
        classifier = Classifier()
        for link in links:
            cid = await db.run(store.open_connection, "link", "ws://daemon", link.opened_us)
            frames = [
                (cid, seq, direction, at, at * 1000 if timed else seq, True, data)
                for seq, (at, direction, data) in enumerate(link.script, 1)
            ]
            if frames:
                rows, index = classifier.rows_and_index(frames)
                await db.run(store.write_batch, rows, index)
            if link.closed_us is not None:
                close = partial(
                    store.close_connection,
                    code=1006,
                    reason="",
                    closed_by="remote",
                    error="the daemon went away",
                )
                await db.run(close, cid, link.closed_us)
    finally:
        await db.shutdown()


def write_beside(db: Path | str, script: Script) -> None:
    """:func:`tests.web_console.write` from a thread of its own: Playwright's sync API
    runs an event loop in the test's thread, and the writer's code needs one."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.web_console import write

    with ThreadPoolExecutor(1) as pool:
        pool.submit(write, db, script).result()
