"""A long session for the read side's tests: its frames, interleaved with another
session's and with requests, recorded by the writer's own code."""

from __future__ import annotations

import json

from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from tests.helpers import writer_database

T0_US = 1_795_692_537_000_000
SID = "session_1795692537464_reading"


def chunk(i: int, pad: int = 0, sid: str = SID) -> bytes:
    data = {"sessionId": sid, "chunk": f"{i} " + "x" * pad}
    return json.dumps({"type": "stream_chunk", "data": data}).encode()


def status(state: str, sid: str = SID) -> bytes:
    return json.dumps(
        {"type": "session_status_update", "session": {"id": sid, "status": state}}
    ).encode()


async def fill(url: str, frames: list[tuple[str, bytes]], step_us: int = 1000) -> None:
    """``frames`` (direction, data) recorded by the writer's own code on one link."""
    db, store, cid = await writer_database(url)
    classifier = Classifier()
    rows = [
        (cid, i, d, T0_US + i * step_us, i * step_us * 1000, True, data)
        for i, (d, data) in enumerate(frames, 1)
    ]
    for start in range(0, len(rows), 500):
        batch, index = classifier.rows_and_index(rows[start : start + 500])
        await db.run(store.write_batch, batch, index)
    await db.shutdown()


def a_session(count: int, pad: int = 0) -> list[tuple[str, bytes]]:
    """A session's frames, interleaved with another session's and with requests."""
    frames = [(IN, status("running"))]
    for i in range(count):
        frames.append((IN, chunk(i, pad)))
        if i % 3 == 0:
            frames.append((IN, chunk(i, sid="session_other")))
        if i % 7 == 0:
            ask = {"type": "session_status", "payload": {"sessionId": SID}}
            frames.append((OUT, json.dumps(ask).encode()))
    frames.append((IN, status("completed")))
    return frames
