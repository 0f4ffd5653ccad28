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
from recorder.protocol.frames import IN
from recorder.protocol.story import OTHER_TYPES, StoryFrame, tell
from recorder.protocol.tame import one_line
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
