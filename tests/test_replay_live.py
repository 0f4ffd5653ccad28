"""Replaying a recorded conversation against a live daemon, and comparing the answers.

A real conversation is recorded first (the service, its proxy, a seeded simulated
daemon, a UI that spawns a session and runs a second task), then its requests are
played against fresh simulators: one that behaves the same, one whose tasks fail.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect

from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.db.recordings import Recordings
from recorder.protocol.frames import IN, OUT
from recorder.replay import source
from recorder.replay.compare import compare, normalise_error, summarise
from recorder.replay.live import LiveReplayError, _pause, plan, replay_live, substitute
from recorder.replay.plan import ReplayFrame
from recorder.replay.source import Conversation
from recorder.replay.timing import Pace
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config

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
        config = load_config(
            write_config(
                tmp / "config.toml",
                {
                    "daemon": {"url": sim.url},
                    "storage": {"url": f"sqlite:///{path}", "commit_interval": 0.05},
                    "proxy": {"listen": "127.0.0.1:0"},
                    "log": {"format": "json"},
                },
            ),
            env={},
        )
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
    assert [r["type"] for r in sent] == ["spawn_session", "execute_task"]
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


# --- pure: the plan, substitution and comparison ------------------------------------

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
