"""Recordings the report's tests read: link connections opened and closed at chosen
times, each with its script of frames, written by the writer's own code with the
monotonic clock following the received time (so a tool call's duration is known)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from recorder.db.connection import WriterDatabase
from recorder.db.migrations import upgrade_sync
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from tests.web_recordings import Link, url_of

__all__ = ["Link", "message", "write_timed"]


def message(kind: str, **fields: Any) -> bytes:
    return json.dumps({"type": kind, **fields}).encode()


def write_timed(db: Path | str, links: Sequence[Link]) -> None:
    """Each link connection with its frames; a frame's monotonic time is its received
    time (in ns), so durations are differences of received times."""
    asyncio.run(_record(url_of(db), links))


async def _record(url: str, links: Sequence[Link]) -> None:
    db = await WriterDatabase.open(url)
    try:
        await db.run(upgrade_sync)
        store = Store(db.dialect, "default")
        classifier = Classifier()
        for link in links:
            cid = await db.run(store.open_connection, "link", "ws://daemon", link.opened_us)
            frames = [
                (cid, seq, direction, at, at * 1000, True, data)
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
