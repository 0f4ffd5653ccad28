"""A replay tells one conversation, as a real UI had it (tests/two_tabs.py): tab A's,
followed across its reconnect, never the copies of a second tab that only watched."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.recordings import FrameFilter, Recordings
from recorder.db.rows import Frame
from recorder.protocol.frames import IN, OUT
from recorder.replay.took_part import TookPart
from tests.two_tabs import FOLLOW_UP, SPAWN_TASK, TwoTabs, record


@dataclass
class Tabs:
    """The recording, and its connections as the read side has them."""

    rec: TwoTabs
    link: int
    # Tab A's first connection (it spawned the session), and its reconnect.
    tab_a: tuple[int, int]
    tab_b: int
    # Every frame of tab B's connection, as rows.
    tab_b_rows: list[Frame]


@pytest.fixture(scope="module")
def tabs(tmp_path_factory: pytest.TempPathFactory) -> Tabs:
    tmp = tmp_path_factory.mktemp("two_tabs")
    rec = asyncio.run(record(tmp / "recorder.db", tmp))
    with Recordings.open(f"sqlite:///{rec.path}") as reader:
        (link,) = [c.id for c in reader.connections(role="link")]
        proxies = sorted(reader.connections(role="proxy"), key=lambda c: c.opened_at_us)
        rows = {c.id: list(reader.frames(FrameFilter(connection_id=c.id))) for c in proxies}
    # B is the tab that sent nothing; A's connections are the others, in order.
    (tab_b,) = [cid for cid, frames in rows.items() if all(f.direction == IN for f in frames)]
    first, again = [c.id for c in proxies if c.id != tab_b]
    assert len(rows[tab_b]) == len(rec.tab_b)  # what B received, all recorded
    return Tabs(rec, link, (first, again), tab_b, rows[tab_b])


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def replayed(tabs: Tabs, *args: str) -> list[dict[str, Any]]:
    out = invoke("replay", "--database", str(tabs.rec.path), tabs.rec.session, "--instant", *args)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_the_replay_plays_no_frame_of_the_tab_that_only_watched(tabs: Tabs) -> None:
    played = replayed(tabs, "--format", "jsonl")
    assert tabs.tab_b_rows and not {f["id"] for f in played} & {f.id for f in tabs.tab_b_rows}
    # Tab A's conversation, its reconnect included (it stopped the session).
    assert {f["connection_id"] for f in played} <= {tabs.link, *tabs.tab_a}
    again = [json.loads(f["payload"]) for f in played if f["connection_id"] == tabs.tab_a[1]]
    assert any(m.get("session", {}).get("status") == "stopped" for m in again)
    # Each status once: B's copies of the broadcasts are not among them.
    statuses = [
        json.loads(f["payload"])["session"]["status"]
        for f in played
        if f["type"] == "session_status_update"
    ]
    assert statuses.count("stopped") == 1


def test_the_replay_tells_what_tab_a_asked(tabs: Tabs) -> None:
    out = invoke("replay", "--database", str(tabs.rec.path), tabs.rec.session, "--instant")
    asked = [line for line in out.stdout.splitlines() if line.startswith("[asked] ")]
    assert asked == [
        f'[asked] spawn_session: "{SPAWN_TASK}"',
        f'[asked] execute_task: "{FOLLOW_UP}"',
        "[asked] session_status",  # after the reconnect
        "[asked] stop_session",
    ]
    assert out.stdout.splitlines()[0] == asked[0]


def test_jsonl_plays_both_directions_and_says_so(tabs: Tabs) -> None:
    played = replayed(tabs, "--format", "jsonl")
    sent = [f for f in played if f["direction"] == OUT]
    assert [f["type"] for f in sent] == [
        "spawn_session",
        "execute_task",
        "session_status",
        "stop_session",
    ]
    assert {f["connection_id"] for f in sent} == set(tabs.tab_a)
    # What the daemon sent tab A's first connection, as tab A received it there.
    received = [
        json.loads(f["payload"])
        for f in played
        if f["connection_id"] == tabs.tab_a[0] and f["direction"] == IN
    ]
    assert received and [m for m in received if m not in tabs.rec.tab_a] == []
    assert [f["id"] for f in played] == sorted(f["id"] for f in played)
    help_text = invoke("replay", "--help").stdout
    assert "both directions" in " ".join(help_text.split())


def test_an_export_marks_what_was_asked(tabs: Tabs, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    db = str(tabs.rec.path)
    invoke("export", "--database", db, tabs.rec.session, "--output", str(cast))
    _, *events = [json.loads(line) for line in cast.read_text().splitlines()]
    markers = [e[2] for e in events if e[1] == "m" and e[2].startswith("asked: ")]
    assert markers[:2] == [
        f'asked: spawn_session: "{SPAWN_TASK}"',
        f'asked: execute_task: "{FOLLOW_UP}"',
    ]
    lines = invoke("export", "--database", db, tabs.rec.session, "--format", "jsonl").stdout
    assert {json.loads(line)["direction"] for line in lines.splitlines()} == {IN, OUT}


def test_which_connections_took_part(tabs: Tabs) -> None:
    """The lookup choose() makes, on the real recording: tab A's connections took
    part in the conversation, tab B (status broadcasts only) did not."""
    with Recordings.open(f"sqlite:///{tabs.rec.path}") as reader:
        recordings = reader.recordings_of([tabs.link, *tabs.tab_a, tabs.tab_b])
        took_part = TookPart(reader, tabs.rec.session, recordings)
        assert [cid in took_part for cid in (*tabs.tab_a, tabs.tab_b)] == [True, True, False]


UNATTRIBUTED = "session_1795692537464_unattributed"


def test_a_conversation_whose_spawn_was_not_attributed_is_still_the_one_played(
    tmp_path: Path,
) -> None:
    """The spawn's text did not match the session the daemon made (so no connection
    is its creator, and the UI named the session in no request), but only that UI was
    sent its stream: it is the conversation, and the tab beside it, which got the
    status broadcasts, is not."""
    path = tmp_path / "recorder.db"

    def status(state: str) -> dict[str, Any]:
        return {"type": "session_status_update", "session": {"id": UNATTRIBUTED, "status": state}}

    chunk = {"type": "stream_chunk", "data": {"sessionId": UNATTRIBUTED, "chunk": "only to A\n"}}
    spawn = {"type": "spawn_session", "payload": {"orchestratorId": "o", "task": "other"}}
    asyncio.run(
        write(
            path,
            [
                ("link", None, [(IN, 3, status("running")), (IN, 6, status("completed"))]),
                (
                    "proxy",
                    "10.0.0.1:1",
                    [(OUT, 2, spawn), (IN, 3, status("running")), (IN, 4, chunk)],
                ),
                ("proxy", "10.0.0.1:2", [(IN, 3, status("running")), (IN, 6, status("completed"))]),
            ],
        )
    )
    out = invoke("replay", "--database", str(path), UNATTRIBUTED, "--instant")
    # A's status and stream, then the end as the link saw it (A had closed): once each.
    assert out.stdout.splitlines() == ["[status] running", "only to A", "[status] completed"]


async def write(
    path: Path, connections: list[tuple[str, str | None, list[tuple[str, int, dict[str, Any]]]]]
) -> None:
    """Each connection (role, client address, frames at seconds from T0), by the writer's
    own code; a UI's connection closes a second after its last frame."""
    from functools import partial

    from recorder.db.migrations import upgrade_sync
    from recorder.db.sqlite import SqliteWriterDatabase
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier

    t0 = 1_795_692_537_000_000
    db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
    await db.connect()
    await db.run(upgrade_sync)
    store = Store(db.dialect)
    rows: list[tuple[Any, ...]] = []
    closes = []
    for role, client, frames in connections:
        cid = await db.run(store.open_connection, role, "ws://127.0.0.1:8787", t0, client)
        for seq, (way, at, obj) in enumerate(frames, 1):
            rows.append(
                (cid, seq, way, t0 + at * 1_000_000, at * 10**9, True, json.dumps(obj).encode())
            )
        if role == "proxy":
            closes.append((cid, t0 + (frames[-1][1] + 1) * 1_000_000))
    rows.sort(key=lambda row: row[3])
    await db.run(store.write_batch, *Classifier().rows_and_index(rows))
    close = partial(store.close_connection, code=1000, reason="", closed_by="client", error=None)
    for cid, at in closes:
        await db.run(close, cid, at)
    await db.shutdown()
