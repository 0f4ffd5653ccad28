"""Regression tests from an attack on the compaction: frames whose text it could not
read, chunks of several tasks, a lone surrogate, two runs folding one session at once.
Real parts only: the writer's own code builds the databases, the real Cleanup runs on
them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from recorder.cleanup.jobs import Cleanup
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.cleanup_scripts import (
    DAY,
    Pausing,
    chunk,
    config_for,
    open_db,
    policy,
    record,
    rows,
    run_policy,
    status,
)


def actions(db: Path, run_id: int) -> list[dict[str, Any]]:
    (text,) = rows(db, f"select actions from cleanup_runs where id = {run_id}")[0]
    result: list[dict[str, Any]] = json.loads(text)
    return result


@pytest.mark.parametrize(
    "frame",
    [
        # The classifier takes the session from the top level, or from payload: the
        # compaction reads text only from data.chunk.
        {"type": "stream_chunk", "sessionId": "s", "chunk": "TOP-LEVEL"},
        {"type": "stream_chunk", "payload": {"sessionId": "s", "chunk": "IN-PAYLOAD"}},
        {"type": "stream_chunk", "data": {"sessionId": "s", "chunk": {"text": "AN-OBJECT"}}},
        {"type": "stream_chunk", "data": {"sessionId": "s", "chunk": 12345}},
        {"type": "stream_chunk", "data": {"sessionId": "s", "content": "OTHER-KEY"}},
    ],
    ids=["top-level", "payload", "object", "number", "other-key"],
)
async def test_compaction_never_deletes_a_chunk_whose_text_it_cannot_read(
    tmp_path: Path, frame: dict[str, Any]
) -> None:
    """A stream_chunk frame the compaction cannot read text from is deleted and adds
    "" to the compacted text: what it said is gone. It should stay as it is."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    base = now_us() - DAY
    odd = json.dumps(frame)
    await record(
        url,
        [
            (base, IN, status("s", "running")),
            (base + 1, IN, chunk("s", "before ")),
            (base + 2, IN, odd.encode()),
            (base + 3, IN, chunk("s", " after")),
            (base + 4, IN, status("s", "completed")),
        ],
    )
    config = config_for(tmp_path, url, policy("fold", "compact", 'status = ["completed"]'))
    await run_policy(config, "fold")
    payloads = [p for (p,) in rows(db, "select payload from frames order by id")]
    marker = next(v for v in _strings(frame) if v.isupper() or v.isdigit())
    assert any(marker in p for p in payloads), (marker, payloads)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return [str(value)] if not isinstance(value, list) else []


def task_chunk(sid: str, task: str, text: str) -> bytes:
    data = {"sessionId": sid, "taskId": task, "chunk": text}
    return json.dumps({"type": "stream_chunk", "data": data}).encode()


async def test_compaction_keeps_each_tasks_text_under_its_task(tmp_path: Path) -> None:
    """Two tasks' chunks in one session: compaction folded them into one frame that
    carries the first chunk's task_id, so `recorder frames --task second` finds none
    of the second task's text afterwards (and tasks.frame_count still counts the
    deleted chunks)."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    await record(
        url,
        [
            (t, IN, status("s", "running")),
            (t + 1, IN, task_chunk("s", "first", "one ")),
            (t + 2, IN, task_chunk("s", "first", "two ")),
            (t + 3, IN, task_chunk("s", "second", "THREE ")),
            (t + 4, IN, task_chunk("s", "second", "FOUR")),
            (t + 5, IN, status("s", "completed")),
        ],
    )
    config = config_for(tmp_path, url, policy("fold", "compact", 'status = ["completed"]'))
    await run_policy(config, "fold")
    second = "".join(p for (p,) in rows(db, "select payload from frames where task_id = 'second'"))
    assert "THREE" in second and "FOUR" in second
    counted = dict(rows(db, "select task_id, frame_count from tasks"))
    held = dict(
        rows(db, "select task_id, count(*) from frames where task_id is not null group by 1")
    )
    assert counted == held


async def test_a_lone_surrogate_in_one_chunk_does_not_stop_compaction(tmp_path: Path) -> None:
    """A chunk spelling a lone surrogate (\\ud800, valid JSON, recorded as text) made
    every step holding it fail (UnicodeEncodeError when the compacted payload is
    encoded): the session is never compacted, and each run says "failed"."""
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    bad = b'{"type":"stream_chunk","data":{"sessionId":"s","chunk":"x\\ud800y"}}'
    await record(
        url,
        [
            (t, IN, status("s", "running")),
            (t + 1, IN, chunk("s", "one ")),
            (t + 2, IN, bad),
            (t + 3, IN, chunk("s", "three")),
            (t + 4, IN, status("s", "completed")),
        ],
    )
    config = config_for(tmp_path, url, policy("fold", "compact", 'status = ["completed"]'))
    run_id = await run_policy(config, "fold")
    assert next(a["result"] for a in actions(db, run_id)).startswith("compacted")


async def test_two_compactions_at_once_keep_the_text_in_order(tmp_path: Path) -> None:
    """Two runs compacting one session step by step (two `cleanup run` with no service,
    or two policies): each appended to its own frame and the text came out scrambled.
    The database says which run holds a session; the other leaves it alone. (Two
    `cleanup run` processes cannot both run: each holds the recorder's lock.)"""
    from recorder.pipeline.cleanup_ops import CompactSome

    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    t = now_us() - DAY
    pieces = [f"<{i:05d}>" for i in range(8000)]
    script = [(t, IN, status("s", "running"))]
    script += [(t + i, IN, chunk("s", p)) for i, p in enumerate(pieces, 1)]
    script += [(t + 9000, IN, status("s", "completed"))]
    await record(url, script)
    both = policy("fold", "compact", 'status = ["completed"]')
    config = config_for(tmp_path, url, both + policy("squash", "compact", 'status = ["completed"]'))
    handle, store, _ = await open_db(url)
    try:
        pausing = Pausing(handle, store, CompactSome, steps=1)
        cleanup = Cleanup(config, pausing, None)
        first = asyncio.create_task(cleanup.run(cleanup.policies["fold"]))
        await asyncio.wait_for(pausing.paused.wait(), 10)
        pausing.left = 10**9  # the second run goes on without pausing
        second = await asyncio.wait_for(cleanup.run(cleanup.policies["squash"]), 10)
        pausing.go.set()
        await asyncio.wait_for(first, 30)
    finally:
        await handle.shutdown()
    (said,) = actions(db, second)
    assert said["result"] == f"skipped: run {first.result()} is working on it"
    texts = [
        json.loads(p)["data"]["text"]
        for (p,) in rows(
            db, "select payload from frames where type = 'stream_compacted' order by id"
        )
    ]
    assert "".join(texts) == "".join(pieces)
