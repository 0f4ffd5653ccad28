"""Findings of an attack on the read side issue 17 bounded (pages, follow, show,
replay), one test each; each failed before its fix. Recordings are written by the
writer's own code; the CLI runs as a subprocess where its timing or its process is
the point. tests/test_serve_guards.py holds the served replay's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from recorder.cli import cli
from recorder.protocol.frames import IN, OUT
from recorder.times import format_us, now_us
from tests.cleanup_scripts import SECOND, chunk, status
from tests.conftest import TIMEOUT
from tests.helpers import writer_database
from tests.writer_batches import commit, write

# The first and last this many of each long list `show` keeps (story.KEEP).
KEEP = 10


def cli_lines(*args: str) -> list[str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


# --- frames --since: receive times do not follow ids ------------------------------------


def test_frames_since_and_until_find_frames_that_reached_the_writer_late(
    tmp_path: Path,
) -> None:
    """Wrong output. pages.first_id_at binary-searches ids for a moment, as receive
    times follow ids; they follow them only as far as frames reach the writer in the
    order they were received. A UI's frames handed over up to 5 s after the link's of
    the same seconds (a writer's queue that was full) made `frames --since` print the
    UI's frames and silently skip the link's. The search now allows
    pages.HANDOVER_SLACK_US; and the proxy and the link hand a frame over as they
    stamp it (tests/test_proxy.py, before: the proxy after relaying it, the link after
    its send)."""
    db_path = tmp_path / "r.db"
    t0 = 1_795_692_537_000_000
    late = 5

    async def batches(db: Any, store: Any, _: int) -> None:
        link = await db.run(store.open_connection, "link", "ws://daemon", t0)
        ui = await db.run(store.open_connection, "proxy", "ws://daemon", t0, "127.0.0.1:5555")
        for first in range(1, 101, late):
            for cid, sid in ((link, "session_link"), (ui, "session_ui")):
                frames = [
                    (cid, i, IN, t0 + i * SECOND, i * SECOND * 1000, True, chunk(sid, str(i)))
                    for i in range(first, first + late)
                ]
                await commit(db, store, frames)

    asyncio.run(write(f"sqlite+aiosqlite:///{db_path}", batches))
    for since in range(40, 50):
        until = since + 20
        lines = cli_lines(
            "frames",
            "--database",
            str(db_path),
            "--since",
            format_us(t0 + since * SECOND),
            "--until",
            format_us(t0 + until * SECOND),
            "--limit",
            "0",
            "--format",
            "jsonl",
        )
        got = sorted((json.loads(line)["session_id"], json.loads(line)["seq"]) for line in lines)
        sessions = ("session_link", "session_ui")
        assert got == sorted((sid, i) for sid in sessions for i in range(since, until)), since


# --- tail on a PostgreSQL shared by recorders ---------------------------------------------


def test_tail_on_a_shared_postgres_prints_a_batch_committed_after_a_later_one(
    pg_url: str,
) -> None:
    """Wrong output (frames never printed). Following read (seen, max(id)] and moved
    `seen` to max(id). On PostgreSQL ids come from a sequence when a batch is written,
    not when it commits: with two recorders on one database (storage.instance), A's
    batch takes ids 2.., B's takes 3.. and commits first; tail prints 3 and never 2.
    `replay --follow` followed by id the same way. Both now use db/follow.Follower."""
    import asyncpg

    url = pg_url.replace("postgresql://", "postgresql+asyncpg://")

    async def migrated() -> None:
        db, _, _ = await writer_database(url)
        await db.shutdown()

    asyncio.run(migrated())
    args = ["tail", "--database", pg_url, "--format", "jsonl", "--last", "1"]
    tail = subprocess.Popen(
        [sys.executable, "-m", "recorder", *args], stdout=subprocess.PIPE, text=True
    )
    assert tail.stdout is not None

    async def scenario(out: Any) -> list[str]:
        db, store, cid = await writer_database(url)
        printed: list[str] = []
        try:
            await commit(db, store, [(cid, 1, IN, now_us(), 1, True, chunk("s", "first"))])
            printed.append(await asyncio.to_thread(out.readline))
            # Recorder A's batch: its frame has taken id 2, its commit comes later.
            a = await asyncpg.connect(pg_url)
            txn = a.transaction()
            await txn.start()
            await a.execute(
                "INSERT INTO frames (connection_id, seq, direction, received_at_us, "
                "monotonic_ns, opcode, size, payload) VALUES ($1, 2, 'in', $2, 2, 1, 7, 'A-frame')",
                cid,
                now_us(),
            )
            # Recorder B's batch: id 3, committed first; tail prints it.
            await commit(db, store, [(cid, 3, IN, now_us(), 3, True, chunk("s", "B"))])
            printed.append(await asyncio.to_thread(out.readline))
            await txn.commit()
            await a.close()
            await commit(db, store, [(cid, 4, IN, now_us(), 4, True, chunk("s", "C"))])
            # Every frame before C is printed before C, or never.
            while printed[-1] and '"seq": 4' not in printed[-1]:
                printed.append(await asyncio.to_thread(out.readline))
        finally:
            await db.shutdown()
        return printed

    try:
        printed = asyncio.run(asyncio.wait_for(scenario(tail.stdout), TIMEOUT))
    finally:
        tail.terminate()
        tail.wait(TIMEOUT)
    assert sorted(json.loads(line)["seq"] for line in printed if line) == [1, 2, 3, 4]


# --- sessions across many connections ----------------------------------------------------


def test_show_keeps_the_first_and_last_connections_and_gaps(tmp_path: Path) -> None:
    """Unbounded output and memory. `show` keeps the first and last 10 of each list
    (issue 17), but not of "Recorded by" nor of "Gaps": a session through 60 reconnects
    printed 60 connection rows and 60 gap lines; a month's session on a link that
    drops every minute prints 43 000 of each. The story also loaded every connection
    up during the session, whatever the number, before it printed."""
    db_path = tmp_path / "r.db"
    sid = "session_flap"
    reconnects = 60

    async def batches(db: Any, store: Any, _: int) -> None:
        t0 = now_us() - (3 * reconnects + 10) * SECOND
        for i in range(reconnects):
            opened = t0 + i * 3 * SECOND
            cid = await db.run(store.open_connection, "link", "ws://daemon", opened)
            state = "running" if i < reconnects - 1 else "completed"
            await commit(
                db, store, [(cid, 1, IN, opened + SECOND // 2, 1, True, status(sid, state))]
            )
            await db.run(
                lambda c, cid=cid, opened=opened: store.close_connection(
                    c,
                    cid,
                    opened + 2 * SECOND,
                    code=1006,
                    reason="",
                    closed_by="daemon",
                    error=None,
                )
            )

    asyncio.run(write(f"sqlite+aiosqlite:///{db_path}", batches))
    lines = cli_lines("show", "--database", str(db_path), sid)
    recorded_by = lines[lines.index("Recorded by") + 2 :]
    recorded_by = recorded_by[: recorded_by.index("")]
    gaps = lines[lines.index("Gaps: no connection was recording") + 1 :]
    assert len(recorded_by) <= 2 * KEEP + 1, f"{len(recorded_by)} connection rows"
    assert len(gaps) <= 2 * KEEP + 1, f"{len(gaps)} gap lines"


# --- replay --follow: the end a link saw first ---------------------------------------------


FOLLOWED = "session_follow"


async def a_ui_up_to_its_first_chunk(db: Any, store: Any) -> int:
    """A UI's spawn, its answer and the session's first chunk, committed: the UI's
    connection."""
    spawn = {
        "type": "spawn_session",
        "payload": {"orchestratorId": "o", "task": {"description": "d"}},
    }
    spawned = {"type": "session_spawned", "session": {"id": FOLLOWED, "status": "running"}}
    t0 = now_us()
    ui: int = await db.run(store.open_connection, "proxy", "ws://daemon", t0, "127.0.0.1:4000")
    await commit(
        db,
        store,
        [
            (ui, 1, OUT, t0 + 1, 1, True, json.dumps(spawn).encode()),
            (ui, 2, IN, t0 + 2, 2, True, json.dumps(spawned).encode()),
            (ui, 3, IN, t0 + 3, 3, True, chunk(FOLLOWED, "one ")),
        ],
    )
    return ui


async def followed_past_the_links_end(db_path: Path) -> str:
    """What `replay --follow` printed of a session whose link saw it end before its UI's
    last chunk was recorded: the link's "completed" is committed, then (the follower
    having had a second to look) the UI's last chunk, then the conversation closes."""
    db, store, link = await writer_database(f"sqlite+aiosqlite:///{db_path}")
    ui = await a_ui_up_to_its_first_chunk(db, store)
    args = ["replay", "--database", str(db_path), FOLLOWED, "--follow", "--instant"]
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", *args, "--format", "jsonl",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert follower.stdout is not None
    try:
        for _ in range(2):  # the spawn's answer and the first chunk, played
            await asyncio.wait_for(follower.stdout.readline(), TIMEOUT)
        done = status(FOLLOWED, "completed")
        await commit(db, store, [(link, 1, IN, now_us(), 4, True, done)])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.wait(), 1.0)  # it may stop here
        await commit(db, store, [(ui, 4, IN, now_us(), 5, True, chunk(FOLLOWED, "last"))])
        await db.run(
            lambda c: store.close_connection(
                c, ui, now_us(), code=1000, reason="", closed_by="client", error=None
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.wait(), 3.0)
    finally:
        if follower.returncode is None:
            follower.kill()
        rest = (await follower.communicate())[0].decode()
        await db.shutdown()
    return rest


def test_follow_plays_the_conversation_s_last_frames_recorded_after_the_link_saw_the_end(
    tmp_path: Path,
) -> None:
    """Wrong output (a followed replay cut short). source.frames(follow=True) stops at
    the first poll with no new frame once the session's status is terminal. The link
    records the daemon's broadcast "completed" as it arrives; the UI's last chunks,
    relayed by the proxy, are recorded only once relayed (capture/proxy.py pump), so
    they can be committed after it, by a second with a slow UI. --follow then ends
    while the conversation it plays is still open, and never plays them."""
    rest = asyncio.run(followed_past_the_links_end(tmp_path / "r.db"))
    assert '\\"chunk\\": \\"last\\"' in rest, rest


# --- compaction: a chunk nested as deep as the classifier takes ----------------------------


def test_a_chunk_nested_1000_deep_does_not_stop_its_session_compacting(tmp_path: Path) -> None:
    """A stuck policy. The classifier (orjson, up to 1 024 levels) types a frame nested
    1 000 deep as stream_chunk; compaction's _chunk_text reads every chunk with
    json.loads, which recurses and raises RecursionError (it catches ValueError only):
    the session's compaction fails at every run ("every action failed (1); the first:
    RecursionError"), and none of its chunks is ever folded. Such a chunk should stay
    byte-exact where it is, as any chunk whose text is not a string does."""
    from tests.cleanup_scripts import config_file, policy, record

    db = tmp_path / "recorder.db"
    base = now_us() - 86_400 * SECOND
    plain = json.loads(chunk("deep", "b"))
    deep = json.dumps(plain)[:-1] + ', "pad": ' + "[" * 1000 + "]" * 1000 + "}"
    script = [(base, IN, status("deep", "running"))]
    script += [(base + i, IN, chunk("deep", text)) for i, text in enumerate("aa", 1)]
    script += [(base + 3, IN, deep.encode())]
    script += [(base + 3 + i, IN, chunk("deep", text)) for i, text in enumerate("cc", 1)]
    script += [(base + 6, IN, status("deep", "completed"))]
    asyncio.run(record(f"sqlite:///{db}", script))
    config = config_file(tmp_path, db, policy("fold", "compact", 'status = ["completed"]'))
    (run,) = json.loads("\n".join(cli_lines("cleanup", "run", "--config", str(config), "--json")))
    assert run["error"] is None, run["error"]
    assert run["acted"] == 1
