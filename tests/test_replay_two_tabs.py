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
