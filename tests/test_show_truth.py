"""`recorder show` tells a session as the recording saw it (issue 19): its statuses in
order whichever frame carried them, each task's own outcome, every connection that
saw it and what each did, its end when it reached its final status, and gaps only
where the recording's own evidence says the session was active."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.times import format_us, now_us
from tests.helpers import writer_database
from tests.two_tabs import FOLLOW_UP, SPAWN_TASK, STOPPED, TwoTabs, record

SECOND = 1_000_000
DAY = 86_400 * SECOND


@pytest.fixture(scope="module")
def tabs(tmp_path_factory: pytest.TempPathFactory) -> TwoTabs:
    tmp = tmp_path_factory.mktemp("two_tabs")
    return asyncio.run(record(tmp / "recorder.db", tmp))


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def show_json(db: Path, session: str) -> dict[str, Any]:
    return dict(json.loads(invoke("show", "--database", str(db), session, "--json")))


def frames_of(db: Path, session: str) -> list[dict[str, Any]]:
    out = invoke("frames", "--database", str(db), "--session", session, "--format", "jsonl")
    return [json.loads(line) for line in out.splitlines()]


def test_the_timeline_and_each_task_are_told_in_order(tabs: TwoTabs) -> None:
    """Today's main: the spawn's task was "stopped" (the session's last status), and
    the session ended at the daemon's endedAt (its completion), not at the stop."""
    story = show_json(tabs.path, tabs.session)
    assert [c["status"] for c in story["timeline"]] == ["running", "completed", STOPPED]
    times = [c["at_us"] for c in story["timeline"]]
    assert times == sorted(times)
    tasks = {t["description"]: t for t in story["tasks"]}
    assert tasks[SPAWN_TASK]["status"] == "completed"
    assert tasks[FOLLOW_UP]["status"] == tabs.outcomes[FOLLOW_UP].removeprefix("task_")
    # It ends when the recording first saw it stopped.
    stops = [
        f["received_at"]
        for f in frames_of(tabs.path, tabs.session)
        if f["type"] == "session_status_update"
        and json.loads(f["payload"])["session"]["status"] == STOPPED
    ]
    assert story["end_us"] == story["timeline"][-1]["at_us"]
    assert (
        invoke("show", "--database", str(tabs.path), tabs.session)
        .splitlines()[2]
        .endswith(f"-> {stops[0]} ({(story['end_us'] - story['start_us']) / 1e6:.1f} s)")
    )
    assert story["rejected"] == [] and story["gaps"] == []


def test_every_connection_that_saw_it_and_what_each_did(tabs: TwoTabs) -> None:
    story = show_json(tabs.path, tabs.session)
    uis = [c for c in story["connections"] if c["role"] == "proxy"]
    links = [c for c in story["connections"] if c["role"] == "link"]
    assert len(uis) == 3 and len(links) == 1
    first, watcher, again = sorted(uis, key=lambda c: c["opened_us"])
    assert list(first["asked"]) == ["spawn_session", "execute_task"]
    assert first["listed"] >= 1  # it learned the id from list_sessions
    assert watcher["asked"] == {} and watcher["frames"] > 0  # tab B
    assert list(again["asked"]) == ["session_status", "stop_session"]
    assert again["opened_us"] >= first["closed_us"]
    text = invoke("show", "--database", str(tabs.path), tabs.session).splitlines()
    rows = text[text.index("Recorded by") + 2 :]
    row_of = {int(line.split()[0]): line for line in rows[: rows.index("")]}
    assert row_of[watcher["id"]].endswith("watched only")
    assert "asked spawn_session, execute_task; saw it in" in row_of[first["id"]]
    assert row_of[again["id"]].endswith("asked session_status, stop_session")


def test_the_status_lines_say_which_frame_carried_each(tabs: TwoTabs) -> None:
    text = invoke("show", "--database", str(tabs.path), tabs.session).splitlines()
    status = text[text.index("Status") + 1 : text.index("Status") + 4]
    assert [line.split()[1] for line in status] == ["running", "completed", STOPPED]
    assert all(" on connection " in line for line in status)


# --- recordings written by the writer's own code ---------------------------------------


def status(sid: str, state: str, kind: str = "session_status_update", **times: Any) -> bytes:
    session = {"id": sid, "status": state, **times}
    return json.dumps({"type": kind, "session": session}).encode()


async def two_links(url: str, t0: int, frames: list[tuple[int, bytes]]) -> None:
    """A link up from t0 to t0 + 5 s, down, and up again from t0 + 60 s; ``frames``
    (offset from t0, data) recorded on the one up at the time, those with a payload
    (requests) as sent to the daemon."""
    db, store, first = await writer_database(url)
    try:
        await db.run(
            lambda c: store.close_connection(
                c, first, 2, code=1000, reason="", closed_by="recorder", error=None
            )
        )
        for opened, closed in ((t0, t0 + 5 * SECOND), (t0 + 60 * SECOND, None)):
            cid = await db.run(store.open_connection, "link", "ws://daemon", opened)
            mine = [
                (cid, i, OUT if b'"payload"' in data else IN, t0 + at, i, True, data)
                for i, (at, data) in enumerate(frames, 1)
                if opened <= t0 + at and (closed is None or t0 + at < closed)
            ]
            rows, index = Classifier().rows_and_index(mine)
            await db.run(store.write_batch, rows, index)
            if closed is not None:
                await db.run(
                    lambda c, cid=cid, closed=closed: store.close_connection(
                        c, cid, closed, code=1006, reason="", closed_by="daemon", error=None
                    )
                )
    finally:
        await db.shutdown()


def test_a_daemon_clock_makes_no_gap_and_is_flagged(tmp_path: Path) -> None:
    """Today's main counted from the daemon's startedAt a year back (a one-year gap
    before the recorder ran), and to an endedAt in 2126 (every later outage a gap)."""
    db = tmp_path / "clock.db"
    t0 = now_us() - 120 * SECOND
    year_ago = "2025-10-31T12:00:00.000Z"
    frames = [
        (1 * SECOND, status("old", "running", startedAt=year_ago)),
        (2 * SECOND, status("old", "completed", startedAt=year_ago)),
        (3 * SECOND, status("future", "running")),
        (4 * SECOND, status("future", "completed", endedAt="2126-01-01T00:00:00.000Z")),
        (4_500_000, status("across", "running")),
        (62 * SECOND, status("across", "completed")),
    ]
    asyncio.run(two_links(f"sqlite+aiosqlite:///{db}", t0, frames))
    old = show_json(db, "old")
    assert old["gaps"] == [] and old["start_us"] == t0 + SECOND
    assert old["end_us"] == t0 + 2 * SECOND
    assert old["clock_notes"][0].startswith("the daemon's startedAt is ")
    assert old["clock_notes"][0].endswith(" days before the recorder first saw it")
    text = invoke("show", "--database", str(db), "old")
    assert "Gaps: none" in text and "clock     the daemon's startedAt is " in text
    future = show_json(db, "future")
    assert future["gaps"] == [] and future["end_us"] == t0 + 4 * SECOND
    assert future["clock_notes"][0].startswith("the daemon's endedAt is ")
    assert "after the recorder saw it end" in future["clock_notes"][0]
    # The daemon's times are still shown as it said them.
    assert old["session"]["started_at"].startswith("2025-10-31")
    # What the recording's own evidence says was a gap still is one: the link was down
    # between two frames of a session it saw running, then completed.
    across = show_json(db, "across")
    assert [(g["start_us"], g["end_us"]) for g in across["gaps"]] == [
        (t0 + 5 * SECOND, t0 + 60 * SECOND)
    ]


def test_a_status_only_a_listing_showed_and_a_rejected_request(tmp_path: Path) -> None:
    """As the published daemon has it: the session is listed running while its spawn
    runs, session_spawned comes after the first run with its final status, a follow-up
    asked then is turned down, and a stop makes it "terminated". Today's main began
    the timeline at "completed", gave the first task "terminated", and put the
    rejection in the header as the session's error."""
    db = tmp_path / "daemon.db"
    t0 = now_us() - 120 * SECOND
    task = {"id": "task_1", "description": SPAWN_TASK}
    entries = [{"id": "other", "status": "running"}, {"id": "s", "status": "running", "task": task}]
    listing = {"type": "sessions_list", "sessions": entries}
    refused = "Session s is not running (status: completed)"
    asked = {"type": "execute_task", "payload": {"sessionId": "s", "task": FOLLOW_UP}}
    answer = {"type": "task_failed", "sessionId": "s", "taskId": FOLLOW_UP, "error": refused}
    frames = [
        (SECOND, json.dumps(listing).encode()),
        (2 * SECOND, status("s", "completed", "session_spawned", task=task)),
        (3 * SECOND, json.dumps(asked).encode()),
        (3 * SECOND + 1000, json.dumps(answer).encode()),
        (4 * SECOND, status("s", "terminated", task=task)),
    ]
    asyncio.run(two_links(f"sqlite+aiosqlite:///{db}", t0, frames))
    story = show_json(db, "s")
    assert [(c["status"], c["source"]) for c in story["timeline"]] == [
        ("running", "sessions_list"),
        ("completed", "session_spawned"),
        ("terminated", "session_status_update"),
    ]
    assert story["start_us"] == t0 + SECOND and story["end_us"] == t0 + 4 * SECOND
    tasks = {t["description"]: t for t in story["tasks"]}
    assert tasks[SPAWN_TASK]["status"] == "completed"
    assert tasks[SPAWN_TASK]["ended_at"] == format_us(t0 + 2 * SECOND)
    assert (tasks[FOLLOW_UP]["status"], tasks[FOLLOW_UP]["error"]) == ("rejected", refused)
    assert [r["task_id"] for r in story["rejected"]] == [FOLLOW_UP]
    assert story["errors"] == [] and story["session"]["last_error"] == refused
    text = invoke("show", "--database", str(db), "s")
    assert "error     " not in text and "Requests turned down" in text
    assert "rejected" in text.split("\nTasks\n")[1].split("\n\n")[0]
    # The listing is no frame of the session: not counted among them.
    assert "sessions_list" not in story["by_type"] and sum(story["by_type"].values()) == 4
