"""``recorder show`` and the tables stay bounded whatever a daemon sent: a session of
any length is told in the memory of a short one, and a value of any size is shown in
what a terminal can use (issue 17)."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.recordings import Recordings
from recorder.protocol import story
from recorder.protocol.frames import IN, OUT
from recorder.protocol.story import OTHER_TYPES, StoryFrame, tell
from recorder.protocol.tame import one_line
from recorder.protocol.timeline import LISTED, listed
from tests.reading_session import fill

SID = "session_1795692537464_shown"
MB10 = 10 * 1024 * 1024


def frame(i: int, kind: str, obj: dict[str, Any] | None, connection: int = 1) -> StoryFrame:
    return StoryFrame(i, connection, i, IN, i * 1000, i * 1_000_000, kind, None, 100, obj)


def tool(i: int, kind: str, name: str, **data: Any) -> StoryFrame:
    return frame(i, kind, {"type": kind, "data": {"sessionId": SID, "toolName": name, **data}})


SESSION = {
    "id": SID,
    "first_seen_us": 0,
    "started_at_us": None,
    "ended_at_us": None,
    "last_seen_us": 10**9,
    "status": "completed",
}


def test_a_long_session_is_told_in_the_first_and_last_of_each_list() -> None:
    """Today's main kept every status change, tool call and error of a session (and
    every frame, read into one list first)."""
    frames: list[StoryFrame] = []
    for i in range(1, 301):  # status flapping
        state = "running" if i % 2 else "waiting"
        frames.append(
            frame(len(frames) + 1, "session_status_update", {"session": {"status": state}})
        )
    for i in range(500):  # calls, each answered after the next one started
        frames.append(tool(len(frames) + 1, "tool_call_start", "read", toolInput={"n": i}))
        if i:
            result = {"error": "no"} if i % 10 == 0 else {}
            status = "failed" if i % 10 == 0 else "completed"
            frames.append(
                tool(len(frames) + 1, "tool_call_result", "read", status=status, result=result)
            )
    frames.append(tool(len(frames) + 1, "tool_call_result", "write", status="completed"))
    for i in range(200):
        frames.append(frame(len(frames) + 1, "error", {"type": "error", "error": f"e{i}"}))
    told = tell(SESSION, iter(frames), [], 10**9, keep=5)

    assert [c.status for c in told.timeline] == ["running", "waiting"] * 2 + ["running"] + [
        "waiting",
        "running",
    ] * 2 + ["waiting"]
    # 49 failed results said why, and 200 errors: 249.
    assert told.left_out == {
        "timeline": 290,
        "rejected": 0,
        "tools": 491,
        "errors": 239,
        "connections": 0,
        "gaps": 0,
    }
    assert told.tool_calls == 501 and told.tools_failed == 49
    first, last = told.tools[:5], told.tools[5:]
    assert [t.input for t in first] == [{"n": i} for i in range(5)]
    # Each result pairs with the oldest call waiting: call k with the result that
    # followed call k + 1's start.
    assert [(t.status, t.duration_s) for t in first] == [("completed", 0.002)] + [
        ("completed", 0.003)
    ] * 4
    assert [t.input for t in last[:4]] == [{"n": i} for i in range(496, 500)]
    assert last[3].status is None  # the last call never got its result
    assert last[4].name == "write" and last[4].input is None  # a result with no start
    assert [(e.source, e.text) for e in told.errors] == [("tool_call_result", "no")] * 5 + [
        ("error", f"e{i}") for i in range(195, 200)
    ]
    assert told.by_type == {
        "tool_call_start": 500,
        "tool_call_result": 500,
        "session_status_update": 300,
        "error": 200,
    }


def test_made_up_types_and_unanswered_calls_do_not_grow_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(story, "MAX_WAITING", 10)
    frames = [frame(i, f"type_{i}", None) for i in range(1, 1001)]
    frames += [tool(1000 + i, "tool_call_start", f"t{i % 3}") for i in range(1, 101)]
    frames.append(tool(2000, "tool_call_result", "t1", status="completed"))
    teller = story.Teller(SESSION, keep=3)
    for f in frames:
        teller.add(f)
    told = teller.told([], 10**9)
    # The first 100 types one by one; the other 900, and the tool calls' after them.
    assert len(told.by_type) == story.MAX_TYPES + 1 and told.by_type[OTHER_TYPES] == 900 + 101
    # Past 10 calls waiting, the oldest were given up on: the result went to the
    # oldest t1 call of the last 10 (the 91st, number 90), not to the first.
    assert told.tool_calls == 100 and len(teller._waiting) == 9
    assert 90 not in teller._waiting and 99 in teller._waiting


def test_values_are_cut_for_a_screen_and_whole_for_json() -> None:
    huge = "é\x1b[2J" * (MB10 // 5)
    frames = [
        frame(1, "error", {"type": "error", "error": huge}),
        tool(2, "tool_call_start", "x" * 5000, toolInput={"text": huge}),
    ]
    whole = tell(SESSION, frames, [], 10**9)
    assert whole.errors[0].text == huge and whole.tools[0].input == {"text": huge}
    cut = tell(SESSION, frames, [], 10**9, longest=80)
    assert len(cut.errors[0].text) <= 80 and cut.errors[0].text.endswith(f"({len(huge):,} chars)")
    assert "\x1b" not in cut.errors[0].text and "\\x1b[2J" in cut.errors[0].text
    assert len(cut.tools[0].name) <= 80 and len(cut.tools[0].input) <= 80


def test_one_line_keeps_short_text_and_cuts_long_text_within_its_limit() -> None:
    assert one_line("plain", 10) == "plain"
    assert one_line("a\nb", 10) == "a\\nb"
    assert one_line("x" * 100, 30) == "x" * 17 + "… (100 chars)"
    assert one_line("\x1b" * 100, 30) == "\\x1b" * 4 + "… (100 chars)"
    assert one_line("x" * 100, 30, say_length=False) == "x" * 29 + "…"
    assert all(len(one_line(t, 40)) <= 40 for t in ("\u202e" * 50, "ab" * 50, "\x00" * 39))


def session_frames(count: int, input_bytes: int) -> list[tuple[str, bytes]]:
    running = {"type": "session_status_update", "session": {"id": SID, "status": "running"}}
    frames = [(IN, json.dumps(running).encode())]
    for i in range(count):
        start = {
            "type": "tool_call_start",
            "data": {
                "sessionId": SID,
                "toolName": "read",
                "toolInput": {"i": i, "pad": "x" * input_bytes},
            },
        }
        frames.append((IN, json.dumps(start).encode()))
    return frames


def test_show_reads_a_long_session_in_bounded_memory(tmp_path: Path) -> None:
    """20 000 tool calls of 1 kB: today's main held every frame, parsed (about 60 MB)."""
    path = tmp_path / "long.db"
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", session_frames(20_000, 1000)))
    reader = Recordings.open(f"sqlite:///{path}")
    try:
        row = reader.session(SID)
        tracemalloc.start()
        try:
            told = reader.story(row)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        reader.close()
    assert told.tool_calls == 20_000 and len(told.tools) == 2 * story.KEEP
    assert told.tools[-1].input["i"] == 19_999
    assert peak < 12 * 1024 * 1024, peak


def hostile(path: Path) -> None:
    """A session whose daemon sent 3 error replies, and a task failure, of 10 MB each."""
    text = "the daemon says: " + "\x1b[31m" * 10 + "y" * MB10
    frames = [
        (
            IN,
            json.dumps(
                {
                    "type": "session_status_update",
                    "session": {
                        "id": SID,
                        "status": "running",
                        "task": {"id": "t1", "description": "d" * MB10},
                    },
                }
            ).encode(),
        ),
        *[
            (
                IN,
                json.dumps(
                    {"type": "task_failed", "sessionId": SID, "taskId": "t1", "error": text}
                ).encode(),
            )
            for _ in range(3)
        ],
    ]
    asyncio.run(fill(f"sqlite+aiosqlite:///{path}", frames))


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output[-2000:]
    return result


def test_hostile_sizes_are_cut_on_screen_and_kept_whole_in_json(tmp_path: Path) -> None:
    """Today's main printed every value whole, and padded every row of a table to
    the widest: 27 error replies of 10 MB made `show` print 100 MB."""
    path = tmp_path / "hostile.db"
    hostile(path)
    db = str(path)
    for command in (
        ["show", SID],
        ["sessions"],
        ["tasks", "--session", SID],
        ["frames", "--limit", "0"],
        ["connections"],
        ["stats"],
    ):
        out = invoke(command[0], "--database", db, *command[1:]).stdout
        assert len(out) < 20_000, (command, len(out))
        assert "\x1b" not in out
    shown = invoke("show", "--database", db, SID).stdout
    assert f"… ({MB10 + 17 + 50:,} chars)" in shown
    assert "(10,485,760 chars)" in invoke("sessions", "--database", db).stdout
    story_json = json.loads(invoke("show", "--database", db, SID, "--format", "json").stdout)
    assert [len(e["text"]) for e in story_json["errors"]] == [MB10 + 17 + 50] * 3
    assert len(story_json["tasks"][0]["description"]) == MB10
    tasks = json.loads(invoke("tasks", "--database", db, "--session", SID, "--json").stdout)
    assert len(tasks[0]["error"]) == MB10 + 17 + 50


# --- the course of a session (issue 19) ------------------------------------------------


def told_at(i: int, kind: str, obj: dict[str, Any] | None, connection: int = 1) -> StoryFrame:
    """Frame ``i``, received at i ms; a request (direction out) when ``kind`` is one."""
    direction = OUT if kind == "execute_task" else IN
    task = (obj or {}).get("taskId") or ((obj or {}).get("payload") or {}).get("task")
    return StoryFrame(i, connection, i, direction, i * 1000, i * 10**6, kind, task, 100, obj)


def session_object(state: str, **more: Any) -> dict[str, Any]:
    return {"session": {"id": SID, "status": state, "task": {"id": "t1"}, **more}}


def test_the_course_is_told_whichever_frame_carried_it() -> None:
    refused = f"Session {SID} is not running (status: completed)"
    frames = [
        told_at(1, LISTED, session_object("running")),
        told_at(2, "execute_task", {"payload": {"sessionId": SID, "task": "A"}}, 2),
        told_at(3, "session_status_update", session_object("completed")),
        told_at(4, "task_completed", {"sessionId": SID, "taskId": "A"}, 2),
        told_at(5, "execute_task", {"payload": {"sessionId": SID, "task": "B"}}, 2),
        told_at(6, "task_failed", {"sessionId": SID, "taskId": "B", "error": refused}, 2),
        told_at(7, "session_status_update", session_object("stopped"), 3),
        told_at(8, "session_status_update", session_object("stopped"), 1),
    ]
    row = {**SESSION, "first_seen_us": 1000, "status": "stopped", "finished_us": 3000}
    told = tell(row, frames, [], 10**9)
    assert [(c.status, c.source, c.connection_id) for c in told.timeline] == [
        ("running", LISTED, 1),
        ("completed", "session_status_update", 1),
        ("stopped", "session_status_update", 3),
    ]
    outcomes = {k: (o.status, o.at_us, o.from_status) for k, o in told.outcomes.items()}
    # The first task ended when the session first did: the stop came later.
    assert outcomes == {
        "t1": ("completed", 3000, True),
        "A": ("completed", 4000, False),
        "B": ("rejected", 6000, False),
    }
    assert [(r.task_id, r.error) for r in told.rejected] == [("B", refused)]
    assert told.errors == [] and told.own_error is None and told.last_error_rejected
    # From its first recorded frame to the first that showed it stopped.
    assert (told.start_us, told.end_us) == (1000, 7000)
    assert LISTED not in told.by_type and sum(told.by_type.values()) == 7
    conduct = {c: (d.frames, d.listed, d.asked) for c, d in conduct_of(row, frames).items()}
    assert conduct == {1: (2, 1, {}), 2: (4, 0, {"execute_task": 2}), 3: (1, 0, {})}


def conduct_of(row: dict[str, Any], frames: list[StoryFrame]) -> dict[int, Any]:
    teller = story.Teller(row)
    for f in frames:
        teller.add(f)
    return dict(teller.course.conduct)


def test_a_task_that_failed_while_the_session_ran_is_its_error() -> None:
    """Asked while the session ran, a failure is the task's own and the session's
    error, whatever its words; a reply outweighs the session's status."""
    said = "Session x is not running (status: stopped)"
    frames = [
        told_at(1, "session_status_update", session_object("running")),
        told_at(2, "execute_task", {"payload": {"sessionId": SID, "task": "t1"}}),
        told_at(3, "task_failed", {"sessionId": SID, "taskId": "t1", "error": said}),
        told_at(4, "session_status_update", session_object("stopped")),
    ]
    told = tell({**SESSION, "status": "stopped"}, frames, [], 10**9, tasks=["t1"])
    assert {k: o.status for k, o in told.outcomes.items()} == {"t1": "failed"}
    assert told.rejected == [] and told.own_error == said and not told.last_error_rejected
    assert [(e.source, e.text) for e in told.errors] == [("task_failed", said)]
    # Outcomes of tasks not asked for are not kept.
    assert tell({**SESSION}, frames, [], 10**9, tasks=["other"]).outcomes == {}


def test_a_listing_names_its_entry_only() -> None:
    obj = {"sessions": [{"id": "a"}, "junk", {"id": SID, "status": "running"}]}
    assert listed(obj, SID) == {"id": SID, "status": "running"}
    assert listed(obj, "b") is None and listed({"sessions": "x"}, SID) is None


def test_the_span_is_the_recordings_evidence_not_the_daemons_clock() -> None:
    year = 365 * 86_400 * 10**6
    row = {
        **SESSION,
        "first_seen_us": 10 * year,
        "started_at_us": 9 * year,  # the daemon's startedAt, a year before
        "ended_at_us": 110 * year,  # its endedAt, a century after
        "last_seen_us": 10 * year + 500,
        "finished_us": 10 * year + 300,
    }
    assert story.span(row) == (10 * year, 10 * year + 300)
    assert story.span({**row, "status": "running", "finished_us": None}) == (10 * year, None)
    assert story.span({**row, "finished_us": None}) == (10 * year, 10 * year + 500)
    up = [
        story.Recording(1, "link", "u", None, 9 * year, 10 * year + 100, 1006, None, None),
        story.Recording(2, "link", "u", None, 10 * year + 200, None, None, None, None),
    ]
    chunk = StoryFrame(1, 1, 1, IN, 10 * year + 50, 1, "stream_chunk", None, 100, None)
    told = tell(row, [chunk], up, 11 * year)
    # Only the outage between its frames: none before the recorder saw it (the year
    # the daemon says), none after it ended (to 2126).
    assert [(g.start_us, g.end_us) for g in told.gaps] == [(10 * year + 100, 10 * year + 200)]
