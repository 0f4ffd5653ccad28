"""Replaying against a live daemon, pure: the plan (think times apart from the daemon's
time), pauses, the substitution of ids, and the comparison of the answers."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from recorder.protocol.frames import IN, OUT
from recorder.replay.compare import Hitch, compare, normalise_error, summarise
from recorder.replay.live import _pause, plan, substitute
from recorder.replay.plan import ReplayFrame
from recorder.replay.source import Conversation
from recorder.replay.timing import Pace

SID = "session_1795692537464_eeayv91i6"


def frame(n: int, direction: str, at: float, obj: dict[str, Any]) -> ReplayFrame:
    data = json.dumps(obj).encode()
    return ReplayFrame(n, 7, n, direction, int(at * 1e6), int(at * 1e9), obj["type"], True, data)


def test_the_plan_keeps_think_times_and_the_daemons_time_apart() -> None:
    session = {"id": SID, "orchestratorId": "vp_1", "task": {"id": "task_1", "description": "D"}}
    spawn = {
        "type": "spawn_session",
        "payload": {"orchestratorId": "vp_1", "task": {"description": "D"}},
    }
    requests = [
        frame(2, OUT, 1.0, spawn),
        frame(6, OUT, 9.5, {"type": "execute_task", "payload": {"sessionId": SID, "task": "T"}}),
        frame(7, OUT, 12.0, {"type": "session_status", "payload": {"sessionId": SID}}),
    ]
    replies = [
        frame(
            3,
            IN,
            1.1,
            {"type": "session_status_update", "session": session | {"status": "running"}},
        ),
        frame(4, IN, 2.0, {"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "x"}}),
        frame(
            5, IN, 9.0, {"type": "session_spawned", "session": session | {"status": "completed"}}
        ),
        frame(8, IN, 12.5, {"type": "task_failed", "sessionId": SID, "taskId": "T", "error": "no"}),
        frame(9, IN, 13.0, {"type": "stream_chunk", "data": {"sessionId": SID, "chunk": "y"}}),
    ]
    hello = frame(1, IN, 0.0, {"type": "health_check_response", "healthy": True})
    conv = Conversation(SimpleNamespace(id=SID), hello, replies, requests, None)  # type: ignore[arg-type]
    p = plan(conv)
    assert p.spawn == ("vp_1", "D") and p.session == SID
    assert [(s.awaited, round(s.daemon_time, 6), round(s.pause, 6)) for s in p.steps] == [
        (None, 0.0, 1.0),  # a second after the hello
        (("session_spawned", 1), 8.0, 0.5),  # 0.5 s after the session was spawned
        (None, 0.0, 2.5),  # no reply in between: 2.5 s after the previous request
    ]
    assert p.last == ("task outcome", 1) and p.tail == pytest.approx(1.0)
    # The session and the spawned task's id are the daemon's; "T" was the client's.
    assert p.assigned == {SID, "task_1"}
    assert p.slots[("task outcome", 1)] == (SID, "T")


def test_pauses_follow_the_pace() -> None:
    assert _pause(4.0, Pace()) == 4.0
    assert _pause(4.0, Pace(speed=2.0, max_idle=1.0)) == 0.5
    assert _pause(4.0, Pace(instant=True)) == 0.0


def test_substitute_changes_only_the_quoted_id() -> None:
    data = b'{"type":"execute_task",  "payload":{"sessionId":"s_1","task":"about s_1"}}'
    assert substitute(data, {"s_1": "s_22"}) == (
        b'{"type":"execute_task",  "payload":{"sessionId":"s_22","task":"about s_1"}}'
    )


def reply(type_: str, status: str | None = None, error: str | None = None) -> Any:
    return (type_, status, error)


BASE = [
    reply("session_status_update", "running"),
    reply("stream_start"),
    reply("stream_chunk"),
    reply("tool_call_start", "started"),
    reply("tool_call_result", "completed"),
    reply("stream_chunk"),
    reply("stream_end"),
    reply("session_status_update", "completed"),
    reply("session_spawned", "completed"),
    reply("task_executing"),
    reply("task_completed"),
]


def test_identical_conversations_are_the_same() -> None:
    result = compare(BASE, list(BASE))
    assert result.same and result.findings == ()
    assert result.lines() == [
        "same: the daemon answered as recorded (11 replies recorded, 11 replayed)"
    ]
    assert result.to_json()["same"] is True


def test_chunk_counts_duplicate_statuses_and_ids_are_not_differences() -> None:
    more_chunks = [*BASE[:3], reply("stream_chunk"), reply("stream_chunk"), *BASE[3:]]
    twice = [*more_chunks[:1], more_chunks[0], *more_chunks[1:]]
    assert compare(BASE, twice).same
    a = [
        reply(
            "error",
            None,
            "Session session_1795692537464_eeayv91i6 not found at 2026-11-26T11:28:57.464Z",
        )
    ]
    b = [
        reply(
            "error",
            None,
            "Session session_1800000000000_zzzzzzzzz not found at 2027-01-01T00:00:00.000Z",
        )
    ]
    assert compare(a, b).same
    assert normalise_error("task_123 failed") == "task_… failed"


def test_a_changed_outcome_is_one_change() -> None:
    now = [*BASE[:-1], reply("task_failed", None, "LLM request failed: 429 Too Many Requests")]
    result = compare(BASE, now)
    (finding,) = result.findings
    assert finding.kind == "changed" and finding.type == "task_completed"
    assert "task_completed -> task_failed" in finding.text()
    assert "error none -> 'LLM request failed: 429 Too Many Requests'" in finding.text()
    assert result.lines()[-1].startswith("different: 1 findings (1 changed)")


def test_status_and_error_changes_are_reported_with_positions() -> None:
    was = [
        reply("session_spawned", "completed"),
        reply("task_failed", None, "not running (status: completed)"),
    ]
    now = [
        reply("session_spawned", "failed"),
        reply("task_failed", None, "not running (status: failed)"),
    ]
    result = compare(was, now)
    texts = [f.text() for f in result.findings]
    assert texts[0] == "changed    reply 1 session_spawned: status completed -> failed"
    assert "error 'not running (status: completed)' -> 'not running (status: failed)'" in texts[1]
    report = result.to_json()
    assert report["counts"] == {"changed": 2}
    assert report["findings"][0]["recorded"] == {
        "position": 1,
        "status": "completed",
        "error": None,
    }


def test_missing_new_and_reordered_replies() -> None:
    was = [reply("a"), reply("b"), reply("c"), reply("d"), reply("e")]
    now = [reply("a"), reply("c"), reply("d"), reply("b"), reply("f")]
    result = compare(was, now)
    assert [(f.kind, f.type) for f in result.findings] == [
        ("reordered", "b"),
        ("missing", "e"),
        ("new", "f"),
    ]
    assert [f.text() for f in result.findings] == [
        "reordered  b: reply 2 recorded, reply 4 now",
        "missing    reply 5: e",
        "new        reply 5: f",
    ]
    assert not result.same and len(result.lines()) == 4


def test_summarise_reads_the_real_daemons_frames() -> None:
    failed = (
        b'{"type":"task_failed","sessionId":"session_1","taskId":"Second task",'
        b'"error":"Session session_1 is not running (status: failed)"}'
    )
    assert summarise(True, failed) == (
        "task_failed",
        None,
        "Session session_1 is not running (status: failed)",
    )
    status = b'{"type":"session_status_update","session":{"id":"session_1","status":"failed"}}'
    assert summarise(True, status) == ("session_status_update", "failed", None)
    tool = (
        b'{"type":"tool_call_result","data":{"sessionId":"s","toolName":"read_file",'
        b'"status":"failed","result":{"error":"ENOENT"}}}'
    )
    assert summarise(True, tool) == ("tool_call_result", "failed", "ENOENT")
    assert summarise(True, b'{"type":"health_check_response","healthy":true}') == (
        "health_check_response",
        "healthy",
        None,
    )
    daemon = b'{"type":"daemon_status_update","status":{"status":"running","uptime":1}}'
    assert summarise(True, daemon) == ("daemon_status_update", "running", None)
    assert summarise(True, b"[1,2]") == (None, None, None)
    assert summarise(False, b"\x00\x01") == (None, None, None)


def test_what_follows_a_hitch_is_the_replays_and_only_the_daemons_differences_count() -> None:
    """A follow-up sent late (its id was not learnable in time): the session had ended,
    so the daemon refused it. That is the replay's doing, not the daemon's."""
    late = [*BASE[:-1], reply("task_failed", None, "Session s is not running")]
    hitch = Hitch("request 2 (execute_task): names the session, whose new id ...", 9, 9)
    result = compare(BASE, late, hitches=[hitch])
    (finding,) = result.findings
    assert finding.by == "replay" and finding.text().endswith("[after the replay differed]")
    assert not result.same and not result.daemon_differed
    assert result.lines()[0] == f"replay     {hitch.text}"
    assert result.summary().startswith(
        "replay differed: the replay could not keep the recorded order (1 hitches; "
        "1 findings after it may be its own); the daemon answered as recorded before it"
    )
    report = result.to_json()
    assert report["daemon_differed"] is False and report["replay_differed"] is True
    assert report["hitches"][0]["recorded_replies_before"] == 9
    # A difference before the hitch stays the daemon's.
    early = [reply("session_status_update", "failed"), *late[1:]]
    mixed = compare(BASE, early, hitches=[hitch])
    assert [f.by for f in mixed.findings] == ["daemon", "replay"]
    assert mixed.daemon_differed and mixed.summary().startswith("different: 1 findings (1 changed)")


def test_a_timeout_is_a_finding_with_its_cause() -> None:
    cause = "the recorded last reply (task outcome #1, reply 11) did not come within 10 s"
    result = compare(BASE, BASE[:-1], events=[("timeout", cause)])
    assert [(f.kind, f.by) for f in result.findings] == [
        ("missing", "daemon"),
        ("timeout", "daemon"),
    ]
    assert result.lines()[1] == f"timeout    {cause}"
    assert result.to_json()["findings"][1]["cause"] == cause
    assert result.daemon_differed


def test_the_new_id_is_learned_from_a_list_never_from_an_older_session() -> None:
    from recorder.replay.live import _Live

    spawn = {
        "type": "spawn_session",
        "payload": {"orchestratorId": "vp_1", "task": {"description": "D"}},
    }
    execute = {"type": "execute_task", "payload": {"sessionId": SID, "task": "T"}}
    done = {"type": "task_completed", "sessionId": SID, "taskId": "T"}
    conv = Conversation(
        SimpleNamespace(id=SID),  # type: ignore[arg-type]
        None,
        [frame(3, IN, 2.0, done)],
        [frame(1, OUT, 0.0, spawn), frame(2, OUT, 1.0, execute)],
        None,
    )
    live = _Live(plan(conv), None, None, 0, Pace())  # type: ignore[arg-type]

    def listed(*ids: str) -> bytes:
        entry = {"orchestratorId": "vp_1", "task": {"description": "D"}, "status": "running"}
        return json.dumps(
            {"type": "sessions_list", "sessions": [entry | {"id": i} for i in ids]}
        ).encode()

    live.see(True, listed("session_old"))  # the same task, spawned before ours
    live.spawn_sent = True
    live.see(True, listed("session_old"))
    assert live.session is None and live.lists == 2
    live.see(True, listed("session_old", "session_new"))
    assert live.session == "session_new" and live.replies == []  # a list is not compared
