"""Replaying a recorded conversation against a live daemon, and comparing the answers.

A real conversation is recorded first (the service, its proxy, a seeded simulated
daemon, a UI that spawns a session and runs a second task), then its requests are
played against fresh simulators: one that behaves the same, one whose tasks fail.
tests/test_replay_compare.py holds the plan and the comparison, pure.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect

from recorder.cli import cli
from recorder.config import Config
from recorder.db.recordings import Recordings
from recorder.replay import source
from recorder.replay.live import LiveReplayError, plan, replay_live
from recorder.replay.source import Conversation
from recorder.replay.timing import Pace
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import proxy_recording_config, running

TIMEOUT = 60
SEED = 5


def options(fail_rate: float) -> SimulatorOptions:
    return SimulatorOptions(port=0, chunk_delay=0.005, seed=SEED, fail_rate=fail_rate)


class Recorded:
    def __init__(self, path: Path, config: Config) -> None:
        self.path = path
        self.config = config
        self.session = ""


async def ui(url: str, rec: Recorded) -> None:
    """Spawn a session, wait for it to be spawned, then ask for a second task."""
    async with connect(url) as ws:
        await ws.recv()  # the daemon's hello
        spawn = {
            "type": "spawn_session",
            "payload": {
                "orchestratorId": "vp_9",
                "task": {"type": "code", "description": "Implement feature X", "priority": "high"},
                "sessionType": "claude-code",
                "memoryProfile": "default",
            },
        }
        await ws.send(json.dumps(spawn))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "session_spawned":
                rec.session = message["session"]["id"]
                break
        task = {"type": "execute_task", "payload": {"sessionId": rec.session, "task": "Fix it"}}
        await ws.send(json.dumps(task))
        while json.loads(await ws.recv())["type"] not in ("task_completed", "task_failed"):
            pass


async def record(tmp: Path) -> Recorded:
    path = tmp / "recorder.db"
    async with Simulator(options(0.0)) as sim:
        config = proxy_recording_config(tmp, sim.url, path)
        rec = Recorded(path, config)
        async with running(config) as svc:
            assert svc.proxy is not None
            async with asyncio.timeout(TIMEOUT):
                await ui(f"ws://127.0.0.1:{svc.proxy.port}", rec)
    return rec


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    return asyncio.run(record(tmp_path_factory.mktemp("live")))


def conversation_of(rec: Recorded) -> Conversation:
    reader = Recordings.open(f"sqlite:///{rec.path}")
    try:
        return source.conversation(reader, source.open_session(reader, rec.session))
    finally:
        reader.close()


def rows(path: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql, params))


async def test_a_replay_against_the_same_daemon_reproduces_the_conversation(
    recorded: Recorded,
) -> None:
    conv = conversation_of(recorded)
    assert [f.type for f in conv.requests] == ["spawn_session", "execute_task"]
    # A recorder sharing its database with others: the replay's rows are its own.
    config = replace(recorded.config, storage=replace(recorded.config.storage, instance="lab-2"))
    async with Simulator(options(0.0)) as sim:
        async with asyncio.timeout(TIMEOUT):
            result = await replay_live(config, sim.url, conv, pace=Pace(instant=True))
    report = result.to_json()
    assert result.same, result.lines()
    assert result.lines()[-1].startswith("same:")
    assert report["ended"] == "as recorded" and report["requests"]["sent"] == 2
    new_session = report["session"]["replayed"]
    assert new_session and new_session != recorded.session
    assert report["substituted"][recorded.session] == new_session
    # The conversation is in the database, as role "replay", both ways.
    cid = report["connection_id"]
    (conn,) = rows(recorded.path, "select * from connections where id = ?", cid)
    assert conn["role"] == "replay" and conn["close_code"] == 1000
    assert conn["instance"] == "lab-2"
    sent = rows(
        recorded.path,
        "select type, payload, session_id from frames where connection_id = ? "
        "and direction = 'out' order by seq",
        cid,
    )
    # The sessions the daemon has are asked first: none of them is the one it makes.
    assert [r["type"] for r in sent] == ["list_sessions", "spawn_session", "execute_task"]
    sent = sent[1:]
    execute = json.loads(sent[1]["payload"])
    assert execute["payload"] == {"sessionId": new_session, "task": "Fix it"}
    assert sent[1]["session_id"] == new_session
    # Only the id changed: the bytes are otherwise the ones the UI sent.
    original = conv.requests[1].data
    assert sent[1]["payload"].encode() == original.replace(
        recorded.session.encode(), new_session.encode()
    )
    got = rows(
        recorded.path,
        "select type from frames where connection_id = ? and direction = 'in' and session_id = ?",
        cid,
        new_session,
    )
    assert {"session_spawned", "task_failed", "stream_chunk"} <= {r["type"] for r in got}
    assert len(got) == report["replayed_replies"]


async def test_a_daemon_that_now_fails_the_task_shows_where(recorded: Recorded) -> None:
    conv = conversation_of(recorded)
    async with Simulator(options(1.0)) as sim:
        async with asyncio.timeout(TIMEOUT):
            result = await replay_live(recorded.config, sim.url, conv, pace=Pace(instant=True))
    assert not result.same
    changed = [f for f in result.findings if f.kind == "changed"]
    statuses = {
        (f.type, f.recorded.status, f.replayed.status) for f in changed if f.recorded and f.replayed
    }
    assert ("session_spawned", "completed", "failed") in statuses
    assert ("session_status_update", "completed", "failed") in statuses
    texts = "\n".join(result.lines())
    assert "(status: completed)" in texts and "(status: failed)" in texts
    assert result.lines()[-1].startswith("different:")


async def test_the_cli_replays_and_exits_1_on_a_difference(recorded: Recorded) -> None:
    async def cli(sim: Simulator) -> tuple[int, dict[str, Any], str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "recorder",
            "replay",
            "--database",
            str(recorded.path),
            recorded.session,
            "--against",
            sim.url,
            "--json",
            "--instant",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, json.loads(out), err.decode()

    async with Simulator(options(0.0)) as same, Simulator(options(1.0)) as failing:
        code, report, err = await cli(same)
        assert code == 0 and report["same"] is True, err
        code, report, err = await cli(failing)
        assert code == 1 and report["same"] is False, err
    kinds = {f["kind"] for f in report["findings"]}
    assert "changed" in kinds
    (conn,) = rows(recorded.path, "select * from connections where id = ?", report["connection_id"])
    assert conn["role"] == "replay"
    assert rows(
        recorded.path, "select id from sessions where id = ?", report["session"]["replayed"]
    )


async def test_an_unreachable_daemon_is_one_error(recorded: Recorded) -> None:
    async with Simulator(options(0.0)) as sim:
        url = sim.url
    # The simulator is gone: nothing listens there any more.
    with pytest.raises(LiveReplayError, match=f"cannot replay to {url}"):
        await replay_live(recorded.config, url, conversation_of(recorded))
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        [
            "replay",
            "--database",
            str(recorded.path),
            recorded.session,
            "--against",
            url,
            "--instant",
        ],
    )
    assert result.exit_code == 1 and result.stdout == ""
    assert (
        result.stderr.startswith(f"Error: cannot replay to {url}")
        and result.stderr.count("\n") == 1
    )


async def test_a_bad_url_is_refused_before_the_writer_starts(
    recorded: Recorded, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh.db"
    storage = replace(recorded.config.storage, url=f"sqlite:///{fresh}")
    config = replace(recorded.config, storage=storage)
    for url, reason in [
        ("ws://127.0.0.1:99999", "Port out of range"),
        ("wss://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:1", "isn't a valid URI"),
    ]:
        with pytest.raises(LiveReplayError, match=reason):
            await replay_live(config, url, conversation_of(recorded))
    assert not fresh.exists()  # no writer: nothing created, nothing migrated


def test_the_plan_waits_for_the_spawned_session(recorded: Recorded) -> None:
    p = plan(conversation_of(recorded))
    assert recorded.session in p.assigned and "Fix it" not in p.assigned
    first, second = p.steps
    assert first.awaited is None
    # The second task was sent after the session was spawned, not before.
    assert second.awaited == ("session_spawned", 1)
    assert p.last == ("task outcome", 1) and p.spawn == ("vp_9", "Implement feature X")
