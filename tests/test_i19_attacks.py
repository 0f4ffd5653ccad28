"""Attacks on what issue 19 built, each found by trying it as an outsider would:
hostile recordings written by the writer's own code, a hostile daemon or client on
loopback. Each test failed before its fix. `replay --against`'s are in
tests/test_i19_against_attacks.py."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect as connect_sync

from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from tests.attacked_session import SID, T0_US, invoke, recorded, session_frame
from tests.conftest import TIMEOUT
from tests.helpers import writer_database
from tests.serve_client import served

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
    tmp_path: Path, listings: list[tuple[str, bytes]], parse: bytes, rounds: int = 4
) -> tuple[dict[str, float], dict[str, Any]]:
    """How long `show` takes for a session never listed (the baseline: the command
    itself), for ours, whose span holds ``listings``, and how long orjson takes to parse
    each of them (``parse``, once a listing); and ours's story. Each is the least of
    ``rounds`` taken in turn: other work on the machine only ever adds time."""
    unlisted = {"id": f"{SID}_unlisted", "status": "completed"}
    frames = [
        (IN, json.dumps({"type": "session_status_update", "session": unlisted}).encode()),
        (IN, session_frame("session_spawned", "running")),
        *listings,
    ]
    db = tmp_path / "r.db"
    asyncio.run(recorded(db, frames))
    took: dict[str, float] = {}
    story: dict[str, Any] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        took[name] = min(took.get(name, float("inf")), time.perf_counter() - started)
        return result

    for _ in range(rounds):
        timed("baseline", lambda: invoke("show", "--database", str(db), unlisted["id"]))
        shown = timed("listed", lambda: invoke("show", "--database", str(db), SID, "--json"))
        story = json.loads(shown)
        timed("parse", lambda: [orjson.loads(parse) for _ in listings])
    return took, story


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
    took, story = show_times(tmp_path, frames, listing)
    assert story["connections"][0]["listed"] == listings
    assert [c["status"] for c in story["timeline"]] == ["running", "completed"]
    # Taming every string of each reply took 4.5 times the parse.
    assert took["listed"] - took["baseline"] < 2.5 * took["parse"], took


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
    took, story = show_times(tmp_path, frames, listing)
    assert [c["status"] for c in story["timeline"]] == ["running", "completed"]
    assert story["connections"][0]["listed"] == 0  # every one came after its end
    assert took["listed"] - took["baseline"] < took["parse"] / 4, took


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
