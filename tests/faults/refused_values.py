"""A batch holding a value the database refuses, written by the writer's own code
beside a good one: what SQLite's and PostgreSQL's tests of that refusal share."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from recorder.pipeline import ops
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.helpers import selected, writer_database

TIMEOUT = 30


def refused_batch(cid: int, bad: str) -> ops.WriteRows:
    """A batch holding a value the database will not take, as a classifier that let
    it through would send it: the frame's type, and its session."""
    data = b'{"type":"stream_chunk","data":{"sessionId":"s1","chunk":"x"}}'
    rows, index = Classifier().rows_and_index([(cid, 1, IN, now_us(), 1, True, data)])
    row = rows[0]
    rows = [(*row[:7], bad, bad, *row[9:])]
    index.tallies = {(c, bad, d, day): v for (c, _, d, day), v in index.tallies.items()}
    index.sessions = {bad: index.sessions["s1"]}
    return ops.WriteRows(rows, index)


async def check_refused_values_leave_the_index_out(
    url: str, bad: str
) -> tuple[list[tuple[Any, ...]], str]:
    """Write a refused batch and a good one; returns the frames as stored, and the
    refusal as logged."""
    db, store, cid = await writer_database(url)
    try:
        good = Classifier().rows_and_index(
            [(cid, 2, IN, now_us(), 2, True, b'{"type":"x","sessionId":"s2"}')]
        )
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(
                ops.write_together(db, store, [refused_batch(cid, bad), ops.WriteRows(*good)]),
                TIMEOUT,
            )
        stored = await selected(
            db,
            "SELECT seq, type, session_id, payload,"
            " (SELECT frame_count FROM connections) FROM frames ORDER BY seq",
        )
    finally:
        await db.shutdown()
    (event,) = [e for e in logs if e["log_level"] == "error"]
    assert event["event"].startswith("database refused a value") and event["frames"] == 1
    # Which refusal, not the value: the drivers' messages quote it, and it is frame data.
    assert bad not in str(event) and repr(bad)[1:-1] not in str(event)
    assert "chunk" not in str(event)
    return stored, event["error"]
