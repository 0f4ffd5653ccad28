"""``replay --against`` reproduces the conversation the web UI had, not a guess of it;
``replay --serve --wait-for-client`` takes a UI's own task texts.

The recording (tests/two_tabs.py): tab A spawns a session, learns its id from
``list_sessions`` while the spawn still runs (``session_spawned`` comes only after the
first run) and sends a follow-up task with it. Replayed with the real CLI against a
fresh simulated daemon (its own sessions, so new ids): the replay must learn the new
id the way tab A did, and send the follow-up while the first run is still going,
else the daemon answers "not running" and the replay blames it for its own order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from recorder.simulator import Simulator, SimulatorOptions
from tests.postmortem_recording import spawn_request
from tests.published_tab import published, record_published
from tests.two_tabs import FOLLOW_UP, SPAWN_TASK, TwoTabs, daemon, record

TIMEOUT = 60


@pytest.fixture(scope="module")
def tabs(tmp_path_factory: pytest.TempPathFactory) -> TwoTabs:
    tmp = tmp_path_factory.mktemp("two-tabs-live")
    return asyncio.run(record(tmp / "recorder.db", tmp))


async def replay_against(rec: TwoTabs, opts: SimulatorOptions) -> tuple[int, dict[str, Any]]:
    """The CLI's exit code and JSON report, at the recorded pace (no --instant)."""
    async with Simulator(opts) as sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "replay", "--database", str(rec.path),
            rec.session, "--against", sim.url, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate()
    assert proc.returncode is not None and out, err.decode()
    return proc.returncode, json.loads(out)


def sent_and_received(path: Path, connection: int) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "select direction, type from frames where connection_id = ? order by seq",
            (connection,),
        )
        return [(str(d), str(t)) for d, t in rows]


async def test_the_same_daemon_answers_as_recorded(tabs: TwoTabs) -> None:
    code, report = await replay_against(tabs, daemon())
    assert code == 0 and report["same"] is True, report
    assert report["summary"].startswith("same: the daemon answered as recorded")
    assert report["findings"] == [] and report["hitches"] == []
    new = report["session"]["replayed"]
    assert new and new != tabs.session and report["substituted"][tabs.session] == new
    frames = sent_and_received(tabs.path, report["connection_id"])
    # The follow-up went out before the daemon said session_spawned, as tab A's did.
    assert frames.index(("out", "execute_task")) < frames.index(("in", "session_spawned"))
    assert tabs.outcomes == {FOLLOW_UP: "task_completed"}


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> TwoTabs:
    tmp = tmp_path_factory.mktemp("published-live")
    return asyncio.run(record_published(tmp / "recorder.db", tmp))


async def test_an_id_only_sessions_list_names_is_learned_from_it(learned: TwoTabs) -> None:
    code, report = await replay_against(learned, published())
    assert code == 0 and report["same"] is True, report
    assert report["session"]["replayed"] not in (None, learned.session)
    frames = sent_and_received(learned.path, report["connection_id"])
    # Asked as the UI asked, and the follow-up sent in the running session: its
    # outcome is the recorded one, not "not running (status: completed)".
    execute = frames.index(("out", "execute_task"))
    assert ("out", "list_sessions") in frames[:execute]
    assert ("in", "sessions_list") in frames[:execute]
    assert execute < frames.index(("in", "session_spawned"))
    assert "task_completed" in {t for d, t in frames[execute:] if d == "in"}


async def test_a_daemon_that_fails_the_task_is_reported_changed(tabs: TwoTabs) -> None:
    code, report = await replay_against(tabs, daemon(fail_tasks=(FOLLOW_UP,)))
    assert code == 1 and report["same"] is False and report["daemon_differed"] is True
    assert report["hitches"] == []  # the replay kept the recorded order
    changed = [f for f in report["findings"] if f["kind"] == "changed"]
    assert [(f["type"], f["by"]) for f in changed] == [("task_completed", "daemon")]
    assert changed[0]["replayed"]["error"] == "LLM request failed: 500 Internal Server Error"
    assert report["summary"].startswith("different: ")


async def test_a_served_replay_takes_a_uis_own_task_texts(tabs: TwoTabs) -> None:
    """``--serve --wait-for-client``: a UI sends its own texts; the type and the ids it
    names (the recorded ones, read from the replay) release the recorded replies."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", "replay", "--database", str(tabs.path), tabs.session,
        "--serve", "127.0.0.1:0", "--wait-for-client", "--instant",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    stderr = proc.stderr
    said: list[str] = []

    async def logged() -> str:
        """The next line on stderr (kept)."""
        said.append((await stderr.readline()).decode().rstrip("\n"))
        return said[-1]

    try:
        async with asyncio.timeout(TIMEOUT):
            address = (await logged()).rpartition(" on ")[2]
            assert address.startswith("ws://127.0.0.1:"), said
            async with connect(address) as ws:
                await ws.recv()  # the hello
                # Held, and it says for what, before the client asks anything.
                assert await logged() == (
                    "waiting for the client's spawn_session orchestratorId=vp_tabs "
                    "(recorded request 1)"
                )
                await ws.send(json.dumps(spawn_request("vp_tabs", "My own words")))
                assert await logged() == (
                    f"waiting for the client's execute_task sessionId={tabs.session} "
                    "(recorded request 2)"
                )
                task = {"sessionId": tabs.session, "task": "Mine, not the recorded one"}
                await ws.send(json.dumps({"type": "execute_task", "payload": task}))
                while (reply := json.loads(await ws.recv()))["type"] != "task_completed":
                    pass
                assert reply["taskId"] == FOLLOW_UP  # what the recording says happened
                # Then tab A's reconnect, played on in this one connection: held too.
                assert await logged() == (
                    f"waiting for the client's session_status sessionId={tabs.session} "
                    "(recorded request 3)"
                )
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT):
            _, err = await proc.communicate()
    # Once each, by type and ids: no more lines about either, and no task's text (the
    # recorded ones or the client's).
    # (The replay goes on to the next gate, the recorded session_status, and says so.)
    again = ("waiting for the client's spawn_session", "waiting for the client's execute_task")
    assert not [line for line in err.decode().splitlines() if line.startswith(again)]
    for text in (SPAWN_TASK, FOLLOW_UP, "My own words", "Mine, not"):
        assert text not in err.decode() + "\n".join(said)
