"""Recordings written batch by batch by the writer's own code, for the read side's
tests: frames as the writer takes them, committed as one batch each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recorder.pipeline.classifier import Classifier
from tests.helpers import writer_database

# (connection, seq, direction, received_us, monotonic_ns, is_text, data)
Frame = tuple[int, int, str, int, int, bool, bytes]


async def write(url: str, batches: Callable[[Any, Any, int], Any]) -> None:
    """Batches written by the writer's own code: ``batches(db, store, closed_link)`` is
    awaited with a migrated database whose first connection (opened at 1 µs) is closed."""
    db, store, first = await writer_database(url)
    try:
        await db.run(
            lambda c: store.close_connection(
                c, first, 2, code=1000, reason="", closed_by="recorder", error=None
            )
        )
        await batches(db, store, first)
    finally:
        await db.shutdown()


async def commit(db: Any, store: Any, frames: list[Frame]) -> None:
    rows, index = Classifier().rows_and_index(frames)
    await db.run(store.write_batch, rows, index)
