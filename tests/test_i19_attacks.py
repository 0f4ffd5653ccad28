"""Attacks on what issue 19 built, each found by trying it as an outsider would:
hostile recordings written by the writer's own code, a hostile daemon or client on
loopback. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect as connect_async
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

from recorder.cli import cli
from recorder.db.recordings import Recordings
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.replay import source
from recorder.replay.live import LiveReplayError, replay_live, substitute
from recorder.replay.timing import Pace
from recorder.simulator import Simulator
from tests import full_disk
from tests.conftest import TIMEOUT, proxy_recording_config
from tests.full_disk import fill
from tests.helpers import writer_database
from tests.postmortem_recording import spawn_request
from tests.published_tab import published, record_published
from tests.serve_client import served
from tests.two_tabs import SPAWN_TASK

T0_US = 1_795_692_537_000_000
SID = "session_1795692537464_attacked"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


async def recorded(db: Path, frames: list[tuple[str, bytes]], role: str = "link") -> None:
    """``frames`` (direction, data), a millisecond apart on one connection (the link,
    or a UI's through the proxy), recorded by the writer's own code."""
    store_db, store, cid = await writer_database(f"sqlite:///{db}")
    if role != "link":
        address = "127.0.0.1:50000"
        cid = await store_db.run(store.open_connection, role, "ws://daemon", T0_US, address)
    rows = [
        (cid, i, d, T0_US + i * 1000, i * 1_000_000, True, data)
        for i, (d, data) in enumerate(frames, 1)
    ]
    classifier = Classifier()
    for start in range(0, len(rows), 500):
        batch, index = classifier.rows_and_index(rows[start : start + 500])
        await store_db.run(store.write_batch, batch, index)
    await store_db.shutdown()


def session_frame(kind: str, state: str) -> bytes:
    return json.dumps({"type": kind, "session": {"id": SID, "status": state}}).encode()


# --- show: the sessions_list replies that named the session ---------------------------


def listings_of(state: str, others: int = 3000) -> bytes:
    """A big daemon's sessions_list: ``others`` sessions, and ours in ``state``."""
    entries = [
        {"id": f"session_other_{k}", "status": "completed", "task": {"id": "t", "description": "x"}}
        for k in range(others)
    ]
    entries.append({"id": SID, "status": state})
    return json.dumps({"type": "sessions_list", "sessions": entries}).encode()


def show_times(
    tmp_path: Path, listings: list[tuple[str, bytes]]
) -> tuple[dict[str, float], dict[str, Any]]:
    """How long `show` takes for a session never listed (the baseline: the command
    itself), and for ours, whose span holds ``listings``; and ours's story."""
    unlisted = {"id": f"{SID}_unlisted", "status": "completed"}
    frames = [
        (IN, json.dumps({"type": "session_status_update", "session": unlisted}).encode()),
        (IN, session_frame("session_spawned", "running")),
        *listings,
    ]
    db = tmp_path / "r.db"
    asyncio.run(recorded(db, frames))
    took = {}
    for sid in (unlisted["id"], SID):
        started = time.perf_counter()
        story = json.loads(invoke("show", "--database", str(db), sid, "--json"))
        took[sid] = time.perf_counter() - started
    return {"baseline": took[unlisted["id"]], "listed": took[SID]}, story


def parse_time(data: bytes, times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        orjson.loads(data)
    return time.perf_counter() - started


def test_show_reads_a_big_daemons_listings_at_the_speed_of_parsing_them(
    tmp_path: Path,
) -> None:
    """Stall. `show` reads every sessions_list reply that named the session while it
    ran. Each reply was read with read_object, which tames the whole object (every
    string of every entry) once it holds more than 64 brackets: a daemon with 5 000
    sessions, polled 1 000 times, made `show` take 22 s for one entry a reply, 4.5
    times the parse. Only the session's own entry is kept, so only it is tamed now."""
    listing, listings = listings_of("running"), 100
    frames = [(IN, listing)] * listings
    frames.append((IN, session_frame("session_status_update", "completed")))
    took, story = show_times(tmp_path, frames)
    assert story["connections"][0]["listed"] == listings
    assert [c["status"] for c in story["timeline"]] == ["running", "completed"]
    parse = parse_time(listing, listings)
    assert took["listed"] - took["baseline"] < 2 * parse, (took, parse)


def test_show_of_an_ended_session_does_not_read_the_daemons_later_listings(
    tmp_path: Path,
) -> None:
    """Stall. The recorder sees a session for as long as the daemon lists it, which a
    daemon does with an ended session until it restarts: `show` of a session that
    ended a month ago read (and parsed) every sessions_list reply of that month, for
    statuses that could not change (minutes for 500 000 replies of 20 KB). Listings
    are read now up to the status the session ended in."""
    listing, listings = listings_of("completed"), 200
    frames = [(IN, session_frame("session_status_update", "completed"))]
    frames += [(IN, listing)] * listings
    took, story = show_times(tmp_path, frames)
    assert [c["status"] for c in story["timeline"]] == ["running", "completed"]
    assert story["connections"][0]["listed"] == 0  # every one came after its end
    parse = parse_time(listing, listings)
    assert took["listed"] - took["baseline"] < parse / 4, (took, parse)


# --- replay --serve --wait-for-client: what a request is matched by ----------------------


def test_wait_for_client_matches_a_request_whose_id_is_a_lone_surrogate(tmp_path: Path) -> None:
    """Crash. matching.request_key encoded the request's type and ids as UTF-8, and
    JSON may spell a lone surrogate (``"\\ud800"``), which UTF-8 cannot encode: a
    recording holding such a request made `replay --serve --wait-for-client` die with
    a traceback before it listened, and a client sending one ended its own connection
    with the server's traceback in the log. The key now keeps such an id as it is."""
    hostile = b'"\\ud800"'
    asked = (
        b'{"type":"execute_task","payload":{"sessionId":"' + SID.encode() + b'",'
        b'"parentId":' + hostile + b',"task":"t"}}'
    )
    db = tmp_path / "r.db"
    running = session_frame("session_status_update", "running")
    completed = session_frame("session_status_update", "completed")
    asyncio.run(recorded(db, [(IN, running), (OUT, asked), (IN, completed)], "proxy"))
    server, address = served(db, SID, "--wait-for-client")
    try:
        with connect_sync(address) as ws:
            ws.recv(timeout=TIMEOUT)  # the hello
            assert json.loads(ws.recv(timeout=TIMEOUT)) == json.loads(running)
            ws.send('{"type":"ping"}')
            assert ws.recv(timeout=TIMEOUT) == '{"type":"pong"}'  # and no reply before it
            ws.send(asked.decode())  # the client's request names the same ids
            assert json.loads(ws.recv(timeout=TIMEOUT)) == json.loads(completed)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=TIMEOUT)
    assert b"Traceback" not in err, err.decode()


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


# --- replay: one conversation, followed across a reconnect -------------------------------


async def lost_and_reconnected(db: Path) -> None:
    """A UI spawns a session on connection A, whose network goes (the proxy notices 40 s
    later: 1006); it reconnects meanwhile (B, same machine) and asks about the session.
    Until A is closed, the daemon's broadcasts are relayed on both."""
    store_db, store, link = await writer_database(f"sqlite:///{db}")
    second = 1_000_000

    def closing(cid: int, at: int, code: int) -> Any:
        return lambda c: store.close_connection(
            c, cid, at, code=code, reason="", closed_by="proxy", error=None
        )

    await store_db.run(closing(link, 2, 1000))
    opened = [
        await store_db.run(store.open_connection, "proxy", "ws://d", T0_US + at, address)
        for at, address in ((0, "127.0.0.1:50001"), (70 * second, "127.0.0.1:50002"))
    ]
    a, b = opened
    task = {"orchestratorId": "o", "task": {"description": "Do it"}}
    spawn = json.dumps({"type": "spawn_session", "payload": task}).encode()
    ask = json.dumps({"type": "session_status", "payload": {"sessionId": SID}}).encode()
    words = {"sessionId": SID, "chunk": "the last words\n"}
    chunk = json.dumps({"type": "stream_chunk", "data": words}).encode()
    sent = [
        (a, OUT, 1, spawn),
        (a, IN, 2, session_frame("session_status_update", "running")),
        (a, IN, 3, session_frame("session_spawned", "running")),
        (b, OUT, 71, ask),
        (b, IN, 72, session_frame("session_status_update", "running")),
        (a, IN, 75, chunk),  # only the requester's connection gets its stream
        (a, IN, 80, session_frame("session_status_update", "completed")),
        (b, IN, 80, session_frame("session_status_update", "completed")),
    ]
    frames = [
        (cid, seq, d, T0_US + at * second + seq, (at * second + seq) * 1000, True, data)
        for seq, (cid, d, at, data) in enumerate(sent, 1)
    ]
    rows, index = Classifier().rows_and_index(frames)
    await store_db.run(store.write_batch, rows, index)
    await store_db.run(closing(a, T0_US + 100 * second, 1006))
    await store_db.run(closing(b, T0_US + 200 * second, 1000))
    await store_db.shutdown()


def test_a_reconnect_before_the_loss_was_noticed_plays_each_broadcast_once(
    tmp_path: Path,
) -> None:
    """Wrong output: the replay added what never happened. A UI whose connection is lost
    (not closed) reconnects before the proxy notices; plan.choose rightly follows it to
    the new connection, but played both connections whole, so every broadcast of the
    overlap (here the session's completion) was played twice, once from the connection
    whose client was gone. A lost conversation's broadcasts are now played up to when
    its reconnect opened; what only it carried (its stream) still plays."""
    db = tmp_path / "r.db"
    asyncio.run(lost_and_reconnected(db))
    out = invoke("replay", "--database", str(db), SID, "--instant")
    assert out.splitlines() == [
        '[asked] spawn_session: "Do it"',
        "[status] running",
        "[status] running (spawned)",
        "[asked] session_status",
        "[status] running",
        "the last words",
        "[status] completed",
    ]
    jsonl = ("--format", "jsonl", "--instant")
    lines = invoke("replay", "--database", str(db), SID, *jsonl).splitlines()
    assert [json.loads(line)["connection_id"] for line in lines] == [2, 2, 2, 3, 3, 2, 3]


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


# --- tail --session: a session that is not there (yet) -----------------------------------


def test_tail_says_when_its_session_names_no_recorded_one(tmp_path: Path) -> None:
    """Silent. Every session option takes the start of an id, resolved once, when the
    command starts; `tail --session PREFIX` started before the session exists follows
    frames whose session is exactly PREFIX: it printed nothing, ever, and did not say
    why. It now says so when it starts."""
    db = tmp_path / "r.db"
    asyncio.run(recorded(db, [(IN, session_frame("session_status_update", "running"))]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    args = ["tail", "--database", str(db), "--session", "session_2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", *args], stderr=subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    try:
        # Said at once, if at all (the follower prints nothing until Ctrl-C).
        ready, _, _ = select.select([proc.stderr], [], [], 3)
        said = proc.stderr.readline().decode() if ready else ""
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    assert "no recorded session is 'session_2' or starts with it" in said, said
    # One that is there (here by its start) is followed without a word.
    args[-1] = SID[:12]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", *args, "--last", "1", "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        assert SID in proc.stdout.readline().decode()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert b"no recorded session" not in err
