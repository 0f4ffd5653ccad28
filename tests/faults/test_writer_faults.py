"""The writer under faults in what it writes: a failing disk, a refused value, a batch
that cannot be classified, a commit whose answer was lost; frame data kept out of the
log. Its processes under faults are tests/faults/test_writer_processes.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from sqlalchemy.exc import OperationalError

from recorder.pipeline import faults, ops
from recorder.pipeline.classifier import Classifier
from recorder.pipeline.ops import WriteFrames
from recorder.pipeline.writer import Writer, WriterError
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.faults.refused_values import check_refused_values_leave_the_index_out
from tests.helpers import (
    frames_for,
    refuse_connections,
    selected,
    writer_database,
)

TIMEOUT = 30


class FailingDatabase:
    """A database whose first ``failures`` writes fail the way SQLAlchemy reports them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    async def run(self, fn: Any, *args: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError(
                "INSERT INTO frames VALUES (?)",
                [("SECRET-FRAME-PAYLOAD" * 200,)],
                Exception("disk I/O error"),
            )

    async def reopen(self) -> None:
        pass

    def wrote(self, rows: Any) -> None:
        pass


async def test_a_failing_disk_is_retried_within_seconds_and_logged_short() -> None:
    frame = (1, 1, IN, 1, 1, True, b'{"type":"x","secret":"SECRET-FRAME-PAYLOAD"}')
    rows, index = Classifier().rows_and_index([frame])
    assert faults.RETRY_CAP <= 2.0
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        # What FailingDatabase.run is handed.
        store = SimpleNamespace(write_batches=None, holds=None)
        await ops.WriteRows(rows, index).run(FailingDatabase(3), store)  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.5 + 1 + 2 + 1  # 0.5, 1, 2 s waits
    events = [e["event"] for e in logs]
    assert events == ["database write failed; retrying", "database writes resumed"]
    assert "SECRET" not in json.dumps(logs) and all(len(json.dumps(e)) < 600 for e in logs)


async def test_a_failed_operation_is_logged_in_one_line_without_its_data(
    db_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The database process logs a failed operation as one short line: no traceback,
    no SQLAlchemy [SQL] or [parameters] lines (they carry frame data)."""
    writer = Writer(f"sqlite+aiosqlite:///{db_path}", log_format="json")
    await writer.start()
    try:
        lift = refuse_connections(db_path, "proxy")
        with pytest.raises(WriterError, match="refused by the test"):
            await writer.open_connection("proxy", "ws://daemon/?note=SECRET-PARAMETER")
        lift()
        assert await writer.open_connection("proxy", "ws://daemon") > 0
    finally:
        await writer.close()
    captured = capfd.readouterr()
    output = captured.out + captured.err
    (line,) = [line for line in output.splitlines() if "writer operation failed" in line]
    event = json.loads(line)
    assert event["operation"] == "OpenConnection" and "refused by the test" in event["error"]
    assert "SECRET" not in output and "Traceback" not in output and "[SQL" not in output


async def test_a_closed_connection_leaves_no_role_behind(db_path: Path) -> None:
    """/metrics needs a connection's role until its frames are counted, not after:
    a proxy that serves UIs for months must not keep one entry per conversation."""
    writer = Writer(f"sqlite+aiosqlite:///{db_path}", commit_interval=0.05)
    await writer.start()
    shipping = asyncio.create_task(writer.run())
    try:
        for _ in range(3):
            cid = await writer.open_connection("proxy", "ws://daemon", "127.0.0.1:1")
            for frame in frames_for(cid, 2):
                await writer.put(frame)
            await writer.close_connection(cid, code=1000, closed_by="client")
        assert writer.metrics.roles == {}
        assert writer.metrics.frames == {(IN, "proxy"): [6, 6 * len(b'{"type":"x"}')]}
    finally:
        writer.stop()
        await shipping
        await writer.close()


async def test_a_frame_whose_ids_no_column_can_hold_does_not_stop_the_recording(
    db_path: Path,
) -> None:
    """JSON can spell strings a text column cannot hold: a lone surrogate (no driver
    encodes one) or NUL (PostgreSQL's text has none). As a type, an id or an error
    they failed their batch on every retry, and the recording stopped behind it.
    They are left out of the index; the frames are kept byte-exact."""
    hostile = [
        b'{"type":"\\ud800","sessionId":"s1"}',
        b'{"type":"stream_chunk","data":{"sessionId":"\\udc00","chunk":"x"}}',
        b'{"type":"x\\u0000","sessionId":"a\\u0000b"}',
        b'{"type":"error","sessionId":"s1","error":"\\ud800"}',
        b'{"type":"stream_chunk","data":{"sessionId":"s1","chunk":"fine"}}',
    ]
    writer = Writer(f"sqlite+aiosqlite:///{db_path}", commit_interval=0.05)
    await writer.start()
    shipping = asyncio.create_task(writer.run())
    try:
        cid = await writer.open_connection("link", "ws://daemon")
        for seq, data in enumerate(hostile, 1):
            await writer.put((cid, seq, IN, now_us(), time.monotonic_ns(), True, data))
    finally:
        writer.stop()
        await asyncio.wait_for(shipping, TIMEOUT)
        await asyncio.wait_for(writer.close(), TIMEOUT)
    assert writer.metrics.frames == {(IN, "link"): [5, sum(map(len, hostile))]}
    with closing(sqlite3.connect(db_path)) as db:
        stored = db.execute("SELECT payload, type, session_id FROM frames ORDER BY seq").fetchall()
        session = db.execute("SELECT id, frame_count FROM sessions").fetchall()
    assert [row[0].encode() for row in stored] == hostile
    assert [row[1:] for row in stored] == [
        (None, "s1"),
        ("stream_chunk", None),
        (None, None),
        ("error", "s1"),
        ("stream_chunk", "s1"),
    ]
    assert session == [("s1", 3)]


async def test_a_value_the_database_refuses_costs_the_index_not_the_frames(
    db_path: Path,
) -> None:
    """Defence behind recorder.protocol.classify.storable: should a value the database
    refuses get through, retrying could never succeed, and the recording would stall
    behind the batch. The batch is written once more without what was read from its
    frames (type, session, task); the frames and their counts are kept. A batch written
    together with it keeps its index."""
    stored, refusal = await check_refused_values_leave_the_index_out(
        f"sqlite+aiosqlite:///{db_path}", "\ud800"
    )
    assert refusal == "UnicodeEncodeError"
    assert stored == [
        (1, None, None, '{"type":"stream_chunk","data":{"sessionId":"s1","chunk":"x"}}', 2),
        (2, "x", "s2", '{"type":"x","sessionId":"s2"}', 2),  # written together, kept whole
    ]


class FailingClassifier(Classifier):
    """Stands in for input that classification cannot take: it is meant never to
    raise, and this is the defence should some input still make it."""

    def rows_and_index(self, batch: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded in comparison")


async def test_a_batch_that_cannot_be_classified_is_recorded_unclassified(
    db_path: Path,
) -> None:
    """Before, the classifier process died with the batch (a RecursionError from
    values nested 1 000 deep) and the recording stopped. The frames are recorded
    byte-exact with parse_error "unclassified", counted, and one line is logged."""
    sent = [(b'{"type":"x","sessionId":"s1"}', True), (b"\xff\x00", True), (b"\x01", False)]
    db, store, cid = await writer_database(f"sqlite+aiosqlite:///{db_path}")
    try:
        batch = WriteFrames(
            [(cid, seq, IN, now_us(), seq, t, data) for seq, (data, t) in enumerate(sent, 1)]
        )
        with structlog.testing.capture_logs() as logs:
            rows = batch.prepared(FailingClassifier())
        await ops.write_together(db, store, [rows])
        stored = await selected(
            db,
            "SELECT coalesce(CAST(payload AS BLOB), payload_bytes), opcode, type,"
            " session_id, parse_error, (SELECT frame_count FROM connections)"
            " FROM frames ORDER BY seq",
        )
    finally:
        await db.shutdown()
    assert stored == [(data, 1 if t else 2, None, None, "unclassified", 3) for data, t in sent]
    (event,) = logs
    assert event["event"] == "cannot classify a batch; recording its frames unclassified"
    assert event["frames"] == 3
    assert event["error"].startswith("RecursionError at test_writer_faults.py:")


class AnswerLost:
    """A real database whose first commit of frames goes through and whose answer is
    lost on the way back, as when the server's connection drops during a commit."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.lost = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        result = await self.db.run(fn, *args)
        if getattr(fn, "__name__", "") == "write_batches" and not self.lost:
            self.lost += 1
            raise OperationalError("COMMIT", None, Exception("connection was closed"))
        return result

    async def reopen(self) -> None:
        await self.db.reopen()

    def wrote(self, rows: Any) -> None:
        self.db.wrote(rows)


async def test_a_commit_whose_answer_was_lost_is_not_written_twice(db_path: Path) -> None:
    """After a failed write the batch is retried; if the commit had gone through and
    only its answer was lost, writing it again would store every frame twice. The
    retry first looks for the batch's first frame."""
    db, store, cid = await writer_database(f"sqlite+aiosqlite:///{db_path}")
    try:
        batch = ops.WriteRows(*Classifier().rows_and_index(frames_for(cid, 3)))
        flaky = AnswerLost(db)
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(ops.write_together(flaky, store, [batch]), TIMEOUT)  # type: ignore[arg-type]
        stored = await selected(
            db, "SELECT seq, (SELECT frame_count FROM connections) FROM frames ORDER BY id"
        )
    finally:
        await db.shutdown()
    assert flaky.lost == 1
    assert [e["event"] for e in logs] == [
        "database write failed; retrying",
        "database writes resumed",
    ]
    assert stored == [(1, 3), (2, 3), (3, 3)]
