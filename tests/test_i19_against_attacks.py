"""Attacks on `replay --against` (issue 19), each found by trying it as an outsider
would: a daemon that floods, one that ran the same task before, a full disk. Each
test failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as connect_async
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from recorder.db.recordings import Recordings
from recorder.protocol.frames import IN, OUT
from recorder.replay import source
from recorder.replay.live import LiveReplayError, replay_live, substitute
from recorder.replay.timing import Pace
from recorder.simulator import Simulator
from tests import full_disk
from tests.attacked_session import SID, recorded, session_frame
from tests.conftest import TIMEOUT, proxy_recording_config
from tests.full_disk import fill
from tests.postmortem_recording import spawn_request
from tests.published_tab import published, record_published
from tests.two_tabs import SPAWN_TASK

# --- replay --against: the ids it puts in its requests -----------------------------------


def test_against_substitutes_each_recorded_id_once_where_new_ids_are_old_ones() -> None:
    """Wrong request sent. substitute() replaced one id after another in the same
    bytes, so where a new id is itself a recorded one (a daemon that numbers tasks
    across sessions: task_5 and task_6 recorded, task_6 and task_7 now), the request
    naming task_5 was rewritten to task_6 and then again to task_7: the replay asked
    about the wrong task, and blamed the daemon for the answer. Each recorded id is
    now replaced once, in one pass."""
    data = b'{"type":"cancel_task","payload":{"taskId":"task_5","otherId":"task_6"}}'
    ids = {"task_5": "task_6", "task_6": "task_7"}
    assert json.loads(substitute(data, ids)) == {
        "type": "cancel_task",
        "payload": {"taskId": "task_6", "otherId": "task_7"},
    }
    # An id that is part of another is not touched, and none is replaced twice.
    more = b'["s", "s_1", "\\"s\\"", "s"]'
    assert json.loads(substitute(more, {"s": "s_1", "s_1": "s"})) == ["s_1", "s", '"s"', "s_1"]


# --- replay --against: a daemon that will not stop talking ----------------------------


async def test_against_a_daemon_that_floods_ends_with_it_said_and_bounded_memory(
    tmp_path: Path,
) -> None:
    """Grows without bound. The live replay kept every reply about the session for the
    comparison, each error reply's text whole, for as long as it waited (a reply up to
    5 minutes, the end up to one): a daemon version that answered a spawn with error
    frames of 100 KB in a loop grew the replay to 3 GB in 10 s, and the report listed
    8 081 findings. It now stops reading past ten times the recorded replies and 1 000
    (stream chunks aside, which it keeps as one shared tuple each), says so as the
    daemon's finding, and keeps an error's text to its start and a digest of the rest."""
    spawn = json.dumps({"type": "spawn_session", "payload": {"orchestratorId": "o"}}).encode()
    hello = b'{"type":"health_check_response","healthy":true}'
    db = tmp_path / "r.db"
    frames = [(IN, hello), (OUT, spawn), (IN, session_frame("session_spawned", "completed"))]
    await recorded(db, frames, "proxy")
    big = json.dumps({"type": "error", "error": "x" * 20_000})
    small = json.dumps({"type": "error", "error": "y"})

    async def daemon(ws: Any) -> None:
        await ws.send(hello.decode())
        await ws.recv()
        with contextlib.suppress(ConnectionClosed):
            for sent in itertools.count():
                await ws.send(big if sent % 100 == 0 else small)

    config = proxy_recording_config(tmp_path, "ws://127.0.0.1:1", db)
    reader = Recordings.open(f"sqlite:///{db}")
    try:
        conversation = source.conversation(reader, source.open_session(reader, SID))
    finally:
        reader.close()
    started = time.monotonic()
    async with serve(daemon, "127.0.0.1", 0) as server, asyncio.timeout(TIMEOUT):
        address = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        result = await replay_live(config, address, conversation, pace=Pace(instant=True))
    assert time.monotonic() - started < 5  # not the 10 s the end is waited for
    report = result.to_json()
    assert report["daemon_differed"] is True
    (flooded,) = [f for f in report["findings"] if f["kind"] == "flood"]
    assert "more than 1010 replies" in flooded["cause"], flooded
    assert not [f for f in report["findings"] if f["kind"] == "closed"]  # it did not close
    assert report["replayed_replies"] == 1011
    kept = [f["replayed"]["error"] for f in report["findings"] if f["kind"] == "new"]
    assert max(len(error) for error in kept) < 1100
    assert kept[0] == "x" * 1000 + f"… (20,000 chars, digest {kept[0][-17:-1]})"


async def test_against_a_daemon_that_ran_the_same_task_before_learns_its_own_session(
    tmp_path: Path,
) -> None:
    """Wrong request sent, and the daemon blamed. Against a daemon that names a new
    session only in sessions_list while its first run goes on, the replay learned the
    new id from the first listed session with the spawn's orchestrator and task text
    that the daemon had not named to it before the spawn. Replayed a second time
    against the same daemon (to check a fix, say), the first replay's session was
    listed too, with the same orchestrator and text (here still running): the
    follow-up went there, and the daemon was reported different (exit 1, "2 missing,
    1 changed"). The replay now asks which sessions the daemon has just before its
    spawn."""
    rec = await record_published(tmp_path / "recorder.db", tmp_path)
    async with Simulator(published()) as sim:
        async with connect_async(sim.url) as ws, asyncio.timeout(TIMEOUT):
            await ws.recv()  # the hello
            await ws.send(json.dumps(spawn_request("vp_tabs", SPAWN_TASK)))
            listed: list[Any] = []
            while not listed:  # the daemon has it (running still, as ours will be)
                await ws.send(json.dumps({"type": "list_sessions"}))
                while (said := json.loads(await ws.recv()))["type"] != "sessions_list":
                    pass
                listed = said["sessions"]
            earlier = listed[0]["id"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "replay", "--database", str(rec.path),
            rec.session, "--against", sim.url, "--json", "--instant",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate()
    report = json.loads(out or b"null")
    assert report is not None, err.decode()
    assert report["session"]["replayed"] not in (None, earlier, rec.session), report
    assert proc.returncode == 0 and report["same"] is True, report["findings"]


# A tmpfs of 4 MiB (the test is skipped where none can be mounted).
tiny_disk = full_disk.small_disk


async def test_against_on_a_full_disk_ends_and_says_so(tiny_disk: Path) -> None:
    """Stall. The live replay records the new conversation through a writer of its
    own, which retries a write the disk has no room for, every half second, as the
    recorder does while it waits for room; and the replay's end waited for the writer
    to record the connection's close: on a full disk `replay --against` never ended,
    and said nothing. Its end now waits at most storage.shutdown_timeout, and then it
    stops with the reason."""
    db = tiny_disk / "r.db"
    spawn = json.dumps({"type": "spawn_session", "payload": {"orchestratorId": "o"}}).encode()
    hello = b'{"type":"health_check_response","healthy":true}'
    frames = [(IN, hello), (OUT, spawn), (IN, session_frame("session_spawned", "completed"))]
    await recorded(db, frames, "proxy")
    config = proxy_recording_config(
        tiny_disk.parent, "ws://127.0.0.1:1", db, storage={"shutdown_timeout": 1.0}
    )
    reader = Recordings.open(f"sqlite:///{db}")
    try:
        conversation = source.conversation(reader, source.open_session(reader, SID))
    finally:
        reader.close()
    chunk = json.dumps({"type": "stream_chunk", "data": {"sessionId": "s_2", "chunk": "x" * 9000}})

    async def daemon(ws: Any) -> None:
        await ws.send(hello.decode())
        async for message in ws:
            if "list_sessions" in str(message):
                await ws.send('{"type":"sessions_list","sessions":[]}')
            else:
                fill(tiny_disk)
                for _ in range(20):
                    await ws.send(chunk)
                spawned = {"id": "s_2", "status": "completed"}
                await ws.send(json.dumps({"type": "session_spawned", "session": spawned}))

    started = time.monotonic()
    async with serve(daemon, "127.0.0.1", 0) as server, asyncio.timeout(TIMEOUT):
        address = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(LiveReplayError, match="did not take"):
            await replay_live(config, address, conversation, pace=Pace(instant=True))
    assert time.monotonic() - started < 5
