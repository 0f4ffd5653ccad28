"""Sessions for the web replay's tests, written by the writer's own code: frames on
link connections that open and close when told (a span between two is a gap), and
the replay as one whole pass of the replay's machinery, to compare pages against."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from recorder.db.connection import WriterDatabase
from recorder.db.migrations import upgrade_sync
from recorder.db.recordings import Recordings
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.replay import source
from recorder.replay.text import show
from tests.cleanup_scripts import SECOND, Script, chunk, status

T0 = 1_795_692_537_000_000
MS = SECOND // 1000


def tool(sid: str, name: str, given: Any) -> bytes:
    data = {"sessionId": sid, "toolName": name, "toolInput": given, "status": "started"}
    return json.dumps({"type": "tool_call_start", "data": data}).encode()


def tool_failed(sid: str, name: str, error: str) -> bytes:
    data = {"sessionId": sid, "toolName": name, "status": "failed", "result": {"error": error}}
    return json.dumps({"type": "tool_call_result", "data": data}).encode()


def task_failed(sid: str, error: str) -> bytes:
    frame = {"type": "task_failed", "sessionId": sid, "taskId": "t1", "error": error}
    return json.dumps(frame).encode()


def error(sid: str, text: str) -> bytes:
    return json.dumps({"type": "error", "sessionId": sid, "error": text}).encode()


# (opened, closed or None, the frames it received): one link connection each.
Link = tuple[int, int | None, Script]


async def _record(url: str, links: Sequence[Link]) -> None:
    db = await WriterDatabase.open(url)
    try:
        await db.run(upgrade_sync)
        store = Store(db.dialect, "default")
        classifier = Classifier()
        for opened, closed, script in links:
            cid = await db.run(store.open_connection, "link", "ws://daemon", opened)
            frames = [
                (cid, seq, direction, at, at * 1000, True, data)
                for seq, (at, direction, data) in enumerate(script, 1)
            ]
            for start in range(0, len(frames), 5000):
                rows, index = classifier.rows_and_index(frames[start : start + 5000])
                await db.run(store.write_batch, rows, index)
            if closed is not None:
                close = functools.partial(
                    store.close_connection, code=1000, reason=None, closed_by="daemon", error=None
                )
                await db.run(close, cid, closed)
    finally:
        await db.shutdown()


def record_links(url: str, links: Sequence[Link]) -> None:
    """``links`` recorded into ``url`` (a SQLAlchemy URL for the writer), in a thread
    of its own: Playwright's sync API keeps an event loop in the test's."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _record(url, links)).result()


def whole_pass(url: str, sid: str) -> list[tuple[float, str, str]]:
    """The session's replay as ``recorder replay`` plays it, one pass: each shown cue
    as (t, marker kind or "", its text)."""
    with Recordings.open(url, "test") as reader:
        plan = source.open_session(reader, sid)
        found = []
        for cue in source.cues(reader, plan):
            shown = show(cue)
            if shown is not None:
                text = shown.label if shown.is_marker else shown.output
                found.append((cue.t, shown.kind, text))
        return found


def talk(sid: str, chunks: int, at: int = T0) -> Script:
    """A session that runs, says ``chunks`` numbered words a millisecond apart with a
    tool call every 100th, and completes."""
    script: list[tuple[int, str, bytes]] = [(at, "in", status(sid, "running"))]
    for k in range(chunks):
        script.append((at + (k + 1) * MS, "in", chunk(sid, f"w{k:05d} ")))
        if k % 100 == 99:
            script.append((at + (k + 1) * MS + 500, "in", tool(sid, f"tool{k}", {"k": k})))
    script.append((at + (chunks + 1) * MS, "in", status(sid, "completed")))
    return script
