"""The session index's rules, from real frames: pure functions, no sockets. What a
frame tells of its session and task, how a stored row takes a later batch's news,
which session an answer belongs to, and what counts as the session at work."""

from __future__ import annotations

import json

import pytest

from recorder.protocol.classify import classify
from recorder.protocol.deltas import SessionDelta, TaskDelta, merged
from recorder.protocol.frames import IN, OUT, Frame
from recorder.protocol.index import IndexBatch
from tests.helpers import frame

REAL_STATUS = (
    '{"type":"session_status_update","session":{"id":"session_1795692537464_eeayv91i6",'
    '"orchestratorId":"vp_123","task":{"id":"task_1795692537464","description":"Implement feature X",'
    '"type":"code","priority":"high","status":"pending","createdAt":"2026-11-26T11:28:57.464Z",'
    '"updatedAt":"2026-11-26T11:28:57.464Z"},"type":"claude-code","status":"failed",'
    '"startedAt":"2026-11-26T11:28:57.464Z","metrics":{"tokensUsed":0},"endedAt":"2026-11-26T11:28:57.467Z"}}'
)


def add(batch: IndexBatch, f: Frame) -> None:
    """Fold a frame in the way the classifier does, its own session id and size."""
    info = classify(f.data, f.is_text)
    batch.add(f, info, info.session_id, len(f.data))


def test_real_session_status_update_fills_session_and_task() -> None:
    batch = IndexBatch()
    add(batch, frame(REAL_STATUS, at=5_000))
    s = batch.sessions["session_1795692537464_eeayv91i6"]
    assert (s.status, s.orchestrator_id, s.session_type) == ("failed", "vp_123", "claude-code")
    assert s.task_description == "Implement feature X"
    assert s.started_at_us == 1795692537464000 and s.ended_at_us == 1795692537467000
    assert s.frame_count == 1
    t = batch.tasks[("session_1795692537464_eeayv91i6", "task_1795692537464")]
    # The daemon leaves task.status "pending"; the session's final status is the task's.
    assert t.status == "failed" and t.description == "Implement feature X"
    assert batch.connection_frames == {1: 1}


def test_task_lifecycle_from_real_frames() -> None:
    batch = IndexBatch()
    sid = "session_1795692537464_eeayv91i6"
    request = json.dumps(
        {"type": "execute_task", "payload": {"sessionId": sid, "task": "Second task"}}
    )
    executing = json.dumps({"type": "task_executing", "sessionId": sid, "taskId": "Second task"})
    failed = json.dumps(
        {
            "type": "task_failed",
            "sessionId": sid,
            "taskId": "Second task",
            "error": "Session is not running",
        }
    )
    for i, (text, direction) in enumerate([(request, OUT), (executing, IN), (failed, IN)]):
        add(batch, frame(text, direction, at=100 + i))
    t = batch.tasks[(sid, "Second task")]
    assert (t.status, t.description, t.started_at_us, t.ended_at_us) == (
        "failed",
        "Second task",
        101,
        102,
    )
    assert t.error == "Session is not running" and t.frame_count == 3
    assert batch.sessions[sid].last_error == "Session is not running"
    assert (batch.sessions[sid].first_seen_us, batch.sessions[sid].last_seen_us) == (100, 102)


def test_sessions_list_is_recorded_as_a_listing() -> None:
    batch = IndexBatch()
    text = json.dumps(
        {"type": "sessions_list", "sessions": [{"id": "a", "status": "running"}, {"id": "b"}, 7]}
    )
    add(batch, frame(text, at=9))
    assert batch.listings == [(1, 9, frozenset({"a", "b"}))]
    assert batch.sessions["a"].status == "running"
    # A listing names sessions but is not one of their frames.
    assert batch.sessions["a"].frame_count == 0
    # Our own request is not a listing.
    out = IndexBatch()
    add(out, frame(text, OUT))
    assert out.listings == []


def test_garbage_counts_for_its_connection_only() -> None:
    batch = IndexBatch()
    add(batch, frame(b"\xff", is_text=False))
    assert batch.connection_frames == {1: 1} and not batch.sessions and not batch.tasks


def test_a_stored_row_keeps_its_first_task_and_start() -> None:
    """Merging a later delta: times widen, counts add, news replace, kept fields stay."""
    stored = {
        "first_seen_us": 10,
        "last_seen_us": 20,
        "frame_count": 3,
        "orchestrator_id": "vp",
        "session_type": None,
        "status": "running",
        "task_id": "first",
        "task_description": "first task",
        "started_at_us": 10,
        "ended_at_us": None,
        "last_error": None,
    }
    later = SessionDelta(5, 30, frame_count=2, status="completed", task_id="second")
    later.task_description = "second task"
    row = merged(stored, later)
    assert (row["first_seen_us"], row["last_seen_us"], row["frame_count"]) == (5, 30, 5)
    assert row["status"] == "completed" and row["orchestrator_id"] == "vp"
    assert (row["task_id"], row["task_description"]) == ("first", "first task")

    task = {"first_seen_us": 10, "last_seen_us": 10, "frame_count": 1, "description": "a"}
    task |= {"status": "running", "started_at_us": 10, "ended_at_us": None, "error": None}
    again = TaskDelta(40, 40, frame_count=1, description="b", status="running", started_at_us=40)
    row = merged(task, again)
    assert (row["description"], row["started_at_us"], row["status"]) == ("a", 10, "running")
    assert merged(None, again)["started_at_us"] == 40


@pytest.mark.parametrize("field", ["orchestratorId", "description"])
def test_a_spawn_answered_with_values_nested_a_thousand_deep_is_still_attributed(
    field: str,
) -> None:
    """Attribution matches a spawn_session to its session_spawned by orchestrator and
    task description. Comparing two JSON values nested 1 000 deep overflowed the
    stack, killed the classifier process and stopped the recording (found by
    fuzzing). Only strings are compared now."""
    from recorder.pipeline.classifier import Classifier

    deep = "[" * 1000 + "]" * 1000
    if field == "orchestratorId":
        request = f'{{"type":"spawn_session","payload":{{"orchestratorId":{deep}}}}}'
        reply = f'{{"type":"session_spawned","session":{{"id":"s9","orchestratorId":{deep},"task":{{}}}}}}'
    else:
        request = f'{{"type":"spawn_session","payload":{{"task":{{"description":{deep}}}}}}}'
        reply = (
            f'{{"type":"session_spawned","session":{{"id":"s9","task":{{"description":{deep}}}}}}}'
        )
    batch = [
        (1, 1, OUT, 1_000, 1, True, request.encode()),
        (1, 2, IN, 2_000, 2, True, reply.encode()),
    ]
    rows, index = Classifier().rows_and_index(batch)
    assert [row[7] for row in rows] == ["spawn_session", "session_spawned"]
    assert index.attributions == [(1, 1, "s9")]


def classified(*frames: tuple[str, str | bytes]) -> tuple[list[str | None], IndexBatch]:
    """Frames on one connection through the classifier: each row's session, the index."""
    from recorder.pipeline.classifier import Classifier

    batch = [
        (
            1,
            seq,
            direction,
            1_000 + seq,
            seq,
            True,
            text.encode() if isinstance(text, str) else text,
        )
        for seq, (direction, text) in enumerate(frames, 1)
    ]
    rows, index = Classifier().rows_and_index(batch)
    return [row[8] for row in rows], index


def test_an_error_that_names_its_session_is_that_sessions() -> None:
    """The daemon answers in order: "Session not found: A" answers the question about
    A, though B's task was asked later. It went to B (the latest request), which
    became "unknown" (finished: purgeable while it ran)."""
    owners, index = classified(
        (OUT, '{"type":"session_status","payload":{"sessionId":"A"}}'),
        (OUT, '{"type":"execute_task","payload":{"sessionId":"B","task":"more"}}'),
        (IN, '{"type":"error","error":"Session not found: A"}'),
        (IN, '{"type":"task_executing","sessionId":"B","taskId":"more"}'),
        (OUT, '{"type":"stop_session","payload":{"sessionId":"C"}}'),
        (IN, '{"type":"error","error":"Invalid message format"}'),
        # Not asked on this connection, and still the session it names.
        (IN, '{"type":"error","error":"Session not found: D"}'),
    )
    assert owners == ["A", "B", "A", "B", "C", "C", "D"]
    assert index.sessions["A"].status == "unknown"
    assert index.sessions["B"].status is None and index.sessions["B"].last_error is None
    # An error that names no session is its request's, and ends nothing.
    assert index.sessions["C"].status is None
    assert index.sessions["C"].last_error == "Invalid message format"


def test_a_session_that_runs_again_ends_when_it_ends_again() -> None:
    """Stored as completed long ago; one batch sees it run and complete again: it
    ended now. Kept the old end, retention purged what was just recorded."""
    stored = {"status": "completed", "finished_us": 10, "first_seen_us": 5, "last_seen_us": 10}
    stored |= dict.fromkeys(SessionDelta.NEWS) | {"status": "completed", "frame_count": 1}
    again = IndexBatch()
    add(
        again,
        frame('{"type":"session_status_update","session":{"id":"s","status":"running"}}', at=500),
    )
    add(
        again,
        frame('{"type":"session_status_update","session":{"id":"s","status":"completed"}}', at=600),
    )
    assert merged(stored, again.sessions["s"])["finished_us"] == 600
    # Told again that it ended (a stop after it completed): it keeps its end.
    told = IndexBatch()
    add(
        told,
        frame('{"type":"session_status_update","session":{"id":"s","status":"stopped"}}', at=700),
    )
    assert merged(stored, told.sessions["s"])["finished_us"] == 10


def test_work_is_what_the_daemon_does_not_what_the_recorder_asks() -> None:
    """idle_for measures from active_us: the recorder's status polls (after every
    reconnect), its stops and the replies repeating a known status kept idle sessions
    busy when every frame naming them counted."""
    stored = {"status": "running", "finished_us": None, "first_seen_us": 5, "last_seen_us": 10}
    stored |= dict.fromkeys(SessionDelta.NEWS) | {"status": "running", "active_us": 10}
    stored["frame_count"] = 1
    same = '{"type":"session_status_update","session":{"id":"s","status":"running"}}'
    _, polled = classified(
        (OUT, '{"type":"session_status","payload":{"sessionId":"s"}}'),
        (IN, same),
        (OUT, '{"type":"stop_session","payload":{"sessionId":"s"}}'),
        (OUT, '{"type":"ping"}'),
        (OUT, '{"type":"list_sessions"}'),
        (IN, '{"type":"sessions_list","sessions":[{"id":"s","status":"running"}]}'),
        (IN, '{"type":"error","error":"Session not found: s"}'),
    )
    row = merged(stored, polled.sessions["s"])
    assert (row["active_us"], row["last_seen_us"], row["status"]) == (10, 1_007, "unknown")
    for direction, text in [
        (IN, '{"type":"stream_chunk","data":{"sessionId":"s","chunk":"x"}}'),
        (IN, '{"type":"tool_call_start","data":{"sessionId":"s"}}'),
        (IN, '{"type":"task_completed","sessionId":"s","taskId":"t"}'),
        (OUT, '{"type":"execute_task","payload":{"sessionId":"s","task":"t"}}'),
        (IN, '{"type":"session_status_update","session":{"id":"s","status":"completed"}}'),
    ]:
        _, worked = classified((direction, text))
        assert merged(stored, worked.sessions["s"])["active_us"] == 1_001, text
    # A session first seen was at work then.
    assert merged(None, polled.sessions["s"])["active_us"] == 1_002


def test_another_recorders_news_does_not_change_my_row() -> None:
    """Recorders sharing a database: one row per id. Another recorder's frames of it
    count; what its daemon says of it does not change what the row says."""
    stored = {"status": "running", "finished_us": None, "first_seen_us": 5, "last_seen_us": 10}
    stored |= dict.fromkeys(SessionDelta.NEWS) | {"status": "running", "active_us": 7}
    stored["frame_count"] = 1
    theirs = IndexBatch()
    add(
        theirs,
        frame('{"type":"session_status_update","session":{"id":"s","status":"completed"}}', at=50),
    )
    add(theirs, frame('{"type":"stream_chunk","data":{"sessionId":"s","chunk":"x"}}', at=60))
    row = merged(stored, theirs.sessions["s"], own=False)
    assert (row["status"], row["finished_us"], row["active_us"]) == ("running", None, 7)
    assert (row["frame_count"], row["last_seen_us"]) == (3, 60)
    assert merged(stored, theirs.sessions["s"])["status"] == "completed"
