"""Cleanup policies: matching, stop_session over the link, purge, compact, the schedule."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cleanup.actions import decide
from recorder.cli import cli
from recorder.config import Config, ConfigError, load_config
from recorder.db.migrations import upgrade_sync
from recorder.db.sqlite import SqliteWriterDatabase
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN, OUT
from recorder.protocol.policy import (
    Conditions,
    MatchState,
    Policy,
    SessionFacts,
    parse_duration,
    parse_size,
)
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running
from tests.helpers import query, recorder_process, wait_until

NOW = 1_795_700_000_000_000
MIN = 60_000_000


def facts(
    sid: str, status: str | None, *, started: int, ended: int | None = None, frames: int = 10
) -> SessionFacts:
    finished = ended if status in TERMINAL_STATUSES else None
    return SessionFacts(
        sid, status, "vp_1", "claude-code", started, ended or started, finished, frames
    )


# --- pure ---------------------------------------------------------------------------


def test_durations_and_sizes() -> None:
    assert parse_duration("90s") == 90 and parse_duration("7d") == 7 * 86400
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("500MB") == 500 * 10**6
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_conditions_keep_last_pins_active_and_grace() -> None:
    sessions = [
        facts("a", "completed", started=NOW - 90 * MIN, ended=NOW - 80 * MIN),
        facts("b", "completed", started=NOW - 70 * MIN, ended=NOW - 60 * MIN),
        facts("c", "completed", started=NOW - 50 * MIN, ended=NOW - 40 * MIN),
        facts("d", "failed", started=NOW - 30 * MIN, ended=NOW - 20 * MIN, frames=2),
        facts("e", "running", started=NOW - 10 * MIN),
    ]
    policy = Policy("p", "every 1h", "purge", Conditions(ended_before=30 * 60), keep_last=1)
    got = {d.session_id: d.verdict for d in decide(policy, sessions, NOW, pinned=frozenset({"a"}))}
    # c is the newest match and kept; a is pinned; d and e never matched (too recent).
    assert got == {"c": "kept", "b": "act", "a": "pinned"}
    both = Policy(
        "q", "every 1h", "purge", Conditions(status=("completed", "failed"), max_frames=5)
    )
    assert [d.session_id for d in decide(both, sessions, NOW)] == ["d"]
    running_too = Policy("r", "every 1h", "compact", Conditions(started_before=5 * 60))
    assert {d.session_id: d.verdict for d in decide(running_too, sessions, NOW)}["e"] == "active"
    # The grace window: a destructive action waits until the match is old enough.
    first = {"b": MatchState(NOW - 5 * MIN), "c": MatchState(NOW - 50 * MIN)}
    plain = Policy("s", "every 1h", "purge", Conditions(status=("completed",)))
    graced = decide(plain, sessions, NOW, matched=first, grace=10 * 60)
    assert {d.session_id: d.verdict for d in graced} == {"c": "act", "b": "grace", "a": "grace"}
    stop = Policy("t", "every 1h", "stop_session", Conditions(status=("completed",)))
    assert all(d.verdict == "act" for d in decide(stop, sessions, NOW, grace=10 * 60))


POLICY = """
[[cleanup.policies]]
name = "{name}"
schedule = "{schedule}"
action = "{action}"
when = {{ {when} }}
"""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"action": "nuke"},
            "cleanup.policies[p].action: expected one of stop_session, purge, compact",
        ),
        ({"schedule": "every soon"}, "cleanup.policies[p].schedule: expected a duration"),
        ({"schedule": "1 2 3"}, "cleanup.policies[p].schedule: expected five cron fields"),
        ({"when": 'colour = "red"'}, "cleanup.policies[p].when: unknown condition 'colour'"),
        (
            {"when": 'idle_for = "a while"'},
            "cleanup.policies[p].when.idle_for: expected a duration",
        ),
    ],
)
def test_a_bad_policy_names_itself_and_the_key(
    tmp_path: Path, fields: dict[str, str], message: str
) -> None:
    values = {
        "name": "p",
        "schedule": "every 5m",
        "action": "purge",
        "when": 'status = ["completed"]',
    }
    path = tmp_path / "c.toml"
    path.write_text(POLICY.format(**(values | fields)))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}: {message}")
    # `recorder run` stops on it before anything starts, exit 2.
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    "command",
    [["run"], ["cleanup", "policies"], ["cleanup", "run", "--dry-run"], ["cleanup", "run"]],
)
def test_a_cron_that_apscheduler_rejects_stops_recorder_run(
    tmp_path: Path, command: list[str]
) -> None:
    """`cleanup run` used to purge under a configuration the service refuses."""
    path = tmp_path / "c.toml"
    path.write_text(
        POLICY.format(name="p", schedule="61 * * * *", action="purge", when="")
        + f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\n'
    )
    result = CliRunner().invoke(cli, [*command, "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {path}: cleanup.policies[p].schedule: ")


def test_the_example_policies_load(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    head, _, policies = text.partition("[cleanup]")
    example = re.compile(r"^# (\[\[|\w+ = )")
    uncommented = "\n".join(
        line[2:] if example.match(line) else line for line in policies.splitlines()
    )
    uncommented = head + "[cleanup]" + uncommented
    path = tmp_path / "c.toml"
    path.write_text(uncommented)
    config = load_config(path, env={})
    assert [p.name for p in config.cleanup.policies] == [
        "stop-completed",
        "compact-old",
        "retention",
    ]
    result = CliRunner().invoke(cli, ["cleanup", "policies", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert all(p["next_run"] for p in json.loads(result.stdout))


# --- a database with known sessions ---------------------------------------------------

T0 = 1_795_692_537_000_000


def chunk(sid: str, text: str) -> bytes:
    return json.dumps({"type": "stream_chunk", "data": {"sessionId": sid, "chunk": text}}).encode()


def status(sid: str, state: str) -> bytes:
    return json.dumps(
        {"type": "session_status_update", "session": {"id": sid, "status": state}}
    ).encode()


# Per session: its final status, and how many chunks it streamed.
SESSIONS = {"s_failed": ("failed", 30), "s_done": ("completed", 20), "s_live": ("running", 10)}


def build(path: Path) -> None:
    """Three sessions on one UI conversation, written by the writer's own code."""

    async def fill() -> None:
        db = SqliteWriterDatabase(f"sqlite+aiosqlite:///{path}")
        await db.connect()
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(
            store.open_connection, "proxy", "ws://127.0.0.1:8787/", T0, "127.0.0.1:5000"
        )
        frames: list[tuple[int, int, str, int, int, bool, bytes]] = []

        def add(direction: str, data: bytes) -> None:
            n = len(frames) + 1
            frames.append((cid, n, direction, T0 + n * 1000, n * 1_000_000, True, data))

        add(IN, b'{"type":"health_check_response","healthy":true}')
        for sid, (final, chunks) in SESSIONS.items():
            add(IN, status(sid, "running"))
            add(OUT, json.dumps({"type": "session_status", "payload": {"sessionId": sid}}).encode())
            for i in range(chunks):
                add(IN, chunk(sid, f"{sid}:{i} " + "x" * 2000))
            add(IN, status(sid, final))
        rows, index = Classifier().rows_and_index(frames)
        await db.run(store.write_batch, rows, index)
        await db.shutdown()

    asyncio.run(fill())


def table(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql, params))


def configured(tmp_path: Path, db: Path, *policies: dict[str, Any], extra: str = "") -> Path:
    text = f'[storage]\nurl = "sqlite:///{db}"\n[cleanup]\n{extra}\n'
    for p in policies:
        when = ", ".join(f"{k} = {json.dumps(v)}" for k, v in p.get("when", {}).items())
        text += (
            f'[[cleanup.policies]]\nname = "{p["name"]}"\nschedule = "{p.get("schedule", "every 1h")}"\n'
            f'action = "{p["action"]}"\nkeep_last = {p.get("keep_last", 0)}\n'
            f"dry_run = {str(p.get('dry_run', False)).lower()}\nwhen = {{ {when} }}\n"
        )
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def cleanup_run(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["cleanup", "run", "--config", str(config), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "recorder.db"
    build(path)
    return path


def test_purge_removes_exactly_the_matched_sessions(db: Path, tmp_path: Path) -> None:
    kept_before = table(
        db, "select id, payload from frames where session_id in ('s_done', 's_live') order by id"
    )
    config = configured(
        tmp_path, db, {"name": "bye", "action": "purge", "when": {"status": ["failed", "running"]}}
    )
    (run,) = cleanup_run(config)
    assert (run["trigger"], run["matched"], run["acted"]) == ("cli", 2, 1)
    assert {a["session"]: a["result"] for a in run["actions"]} == {
        "s_failed": "purged 33 frames",  # two status frames, a request, 30 chunks
        "s_live": "active",  # never a session that is still running
    }
    assert table(db, "select count(*) from frames where session_id = 's_failed'") == [(0,)]
    assert table(db, "select id from sessions order by id") == [("s_done",), ("s_live",)]
    assert table(db, "select count(*) from tasks where session_id = 's_failed'") == [(0,)]
    after = table(
        db, "select id, payload from frames where session_id in ('s_done', 's_live') order by id"
    )
    assert after == kept_before
    # The rollups still add up to what is stored.
    (count,) = table(db, "select count(*) from frames")[0]
    assert table(db, "select sum(frame_count) from connections") == [(count,)]
    assert table(db, "select sum(frames) from frame_days") == [(count,)]
    history = json.loads(
        CliRunner().invoke(cli, ["cleanup", "history", "--config", str(config), "--json"]).stdout
    )
    assert [h["id"] for h in history] == [run["id"]]


def test_compact_keeps_every_other_frame_and_the_text(db: Path, tmp_path: Path) -> None:
    others = table(db, "select id, payload from frames where type != 'stream_chunk' order by id")
    chunks = [
        json.loads(p)["data"]["chunk"]
        for (p,) in table(
            db,
            "select payload from frames where session_id = 's_done' and type = 'stream_chunk' order by id",
        )
    ]
    config = configured(
        tmp_path, db, {"name": "squash", "action": "compact", "when": {"status": ["completed"]}}
    )
    (run,) = cleanup_run(config)
    assert run["actions"] == [
        {"session": "s_done", "result": "compacted 20 chunks into 1 frames", "done": True}
    ]
    compacted = table(db, "select payload from frames where type = 'stream_compacted'")
    assert len(compacted) == 1
    data = json.loads(compacted[0][0])["data"]
    assert data["text"] == "".join(chunks) and data["chunks"] == 20
    assert table(
        db, "select count(*) from frames where session_id = 's_done' and type = 'stream_chunk'"
    ) == [(0,)]
    # Every other frame is byte-exact where it was; other sessions keep their chunks.
    assert (
        table(
            db,
            "select id, payload from frames where type not in ('stream_chunk', 'stream_compacted') order by id",
        )
        == others
    )
    assert table(
        db, "select count(*) from frames where session_id = 's_failed' and type = 'stream_chunk'"
    ) == [(30,)]
    (count,) = table(db, "select count(*) from frames")[0]
    assert table(db, "select sum(frame_count) from connections") == [(count,)]
    # Replay plays the compacted text in one piece.
    replay = CliRunner().invoke(cli, ["replay", "--database", str(db), "s_done", "--instant"])
    assert "".join(chunks) in replay.stdout


def test_pins_keep_last_and_a_dry_run_change_nothing(db: Path, tmp_path: Path) -> None:
    config = configured(
        tmp_path,
        db,
        {
            "name": "all",
            "action": "purge",
            "keep_last": 1,
            "when": {"status": ["failed", "completed"]},
        },
    )
    pinned = CliRunner().invoke(cli, ["pin", "--config", str(config), "s_fail"])  # a prefix
    assert pinned.exit_code == 0 and pinned.stdout.strip() == "s_failed pinned"
    before = {p.name: p.read_bytes() for p in sorted(db.parent.iterdir())}
    dry = CliRunner().invoke(
        cli, ["cleanup", "run", "--config", str(config), "--dry-run", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    assert {r["session"]: r["result"] for r in json.loads(dry.stdout)} == {
        "s_done": "kept",  # the newest match: keep_last = 1
        "s_failed": "pinned",
    }
    # Reading may leave SQLite's empty -wal and its -shm beside the file; nothing else.
    after = {p.name: p.read_bytes() for p in sorted(db.parent.iterdir())}
    assert {k: v for k, v in after.items() if k in before} == before
    assert after.get("recorder.db-wal", b"") == b""
    (run,) = cleanup_run(config)
    assert run["acted"] == 0
    assert table(db, "select id from sessions order by id") == [
        ("s_done",),
        ("s_failed",),
        ("s_live",),
    ]
    unpinned = CliRunner().invoke(cli, ["unpin", "--config", str(config), "s_failed"])
    assert unpinned.stdout.strip() == "s_failed unpinned"


def test_the_grace_window_holds_a_purge_back(db: Path, tmp_path: Path) -> None:
    config = configured(
        tmp_path,
        db,
        {"name": "later", "action": "purge", "when": {"status": ["failed"]}},
        extra='grace = "1h"',
    )
    (first,) = cleanup_run(config)
    assert first["actions"] == [{"session": "s_failed", "result": "grace"}]
    assert table(db, "select policy, session_id from cleanup_matches") == [("later", "s_failed")]
    # An hour later (the match's start moved back by hand), it goes.
    with sqlite3.connect(db) as conn:
        conn.execute("update cleanup_matches set first_matched_us = first_matched_us - 3600000001")
    (second,) = cleanup_run(config)
    assert second["actions"][0]["result"] == "purged 33 frames"


def test_a_purge_gives_the_space_back(db: Path, tmp_path: Path) -> None:
    assert table(db, "pragma auto_vacuum") == [(2,)]  # incremental, from creation
    size = db.stat().st_size
    config = configured(
        tmp_path,
        db,
        {"name": "bye", "action": "purge", "when": {"status": ["failed", "completed"]}},
    )
    cleanup_run(config)
    assert db.stat().st_size < size - 40 * 2000  # 50 chunks of 2 kB went


# --- inside the service ------------------------------------------------------------------


def service_config(
    make_config: Callable[..., Config], tmp_path: Path, url: str, policies: str
) -> Config:
    make_config(url)
    path = tmp_path / "config.toml"
    path.write_text(path.read_text() + policies)
    return load_config(path, env={})


async def test_stop_session_reaches_the_daemon_for_matching_sessions_only(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    opts = SimulatorOptions(
        port=0,
        sessions=3,
        session_interval=0,
        wait_for_client=True,
        chunk_delay=0.001,
        seed=3,
        fail_rate=0.0,
    )
    async with Simulator(opts) as sim:
        config = service_config(
            make_config,
            tmp_path,
            sim.url,
            """
[[cleanup.policies]]
name = "stop-completed"
schedule = "every 1h"
action = "stop_session"
when = { status = ["completed"], orchestrator_id = "keep-me-running" }
[[cleanup.policies]]
name = "stop-all-completed"
schedule = "every 1h"
action = "stop_session"
when = { status = ["completed"] }
""",
        )
        async with running(config) as svc:
            await sim.wait_sessions_done(timeout=30)

            async def recorded(expected: set[str]) -> bool:
                rows = await query(svc, "select status from sessions")
                return {r.status for r in rows} == expected and len(rows) == 3

            await wait_until(svc, lambda: recorded({"completed"}), timeout=30)
            assert svc.cleanup is not None
            policies = svc.cleanup.policies
            # No session has that orchestrator: nothing is sent.
            await svc.cleanup.run(policies["stop-completed"])
            await svc.cleanup.run(policies["stop-all-completed"])
            await wait_until(svc, lambda: recorded({"stopped"}), timeout=30)
            sent = [json.loads(e.data) for e in sim.journal if e.direction == "received"]
            stops = sorted(m["payload"]["sessionId"] for m in sent if m["type"] == "stop_session")
            assert stops == sorted(sim.sessions)
            replies = await query(
                svc,
                "select direction, type from frames where type in ('stop_session') or (type = 'session_status_update' and payload like '%stopped%') order by id",
            )
            assert [r.direction for r in replies].count("out") == 3 and [
                r.direction for r in replies
            ].count("in") >= 3
            runs = await query(svc, "select policy, matched, acted from cleanup_runs order by id")
            assert [(r.policy, r.matched, r.acted) for r in runs] == [
                ("stop-completed", 0, 0),
                ("stop-all-completed", 3, 3),
            ]


async def test_the_scheduler_runs_policies_and_answers_cleanup_run(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = service_config(
        make_config,
        tmp_path,
        "ws://127.0.0.1:9",
        """
[cleanup]
poll = "0.2s"
[[cleanup.policies]]
name = "often"
schedule = "every 0.3s"
action = "purge"
dry_run = true
""",
    )
    async with running(config) as svc:

        async def runs(n: int) -> bool:
            rows = await query(
                svc, "select trigger, dry_run from cleanup_runs where policy = 'often'"
            )
            return len([r for r in rows if r.trigger == "schedule" and r.dry_run == 1]) >= n

        await wait_until(svc, lambda: runs(2), timeout=20)
        # `recorder cleanup run` finds the service (its lock) and has the run done there.
        config_path = str(tmp_path / "config.toml")
        proc = await recorder_process("cleanup", "run", "--config", config_path, "--json")
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "asked the running recorder (PID " in err.decode()
        (run,) = json.loads(out)
        # A policy that says dry_run = true stays dry however it is run: `cleanup run`
        # used to run it for real.
        assert (run["policy"], run["trigger"], run["dry_run"]) == ("often", "request", True)


async def test_max_db_size_purges_the_oldest_finished_sessions(db: Path, tmp_path: Path) -> None:
    from recorder.cleanup.jobs import MAX_SIZE, Cleanup, Direct
    from recorder.db.connection import WriterDatabase

    config = load_config(configured(tmp_path, db, extra=""), env={})
    config = dataclasses.replace(
        config, storage=dataclasses.replace(config.storage, max_db_size="1KB")
    )
    handle = await WriterDatabase.open(f"sqlite+aiosqlite:///{db}")
    try:
        cleanup = Cleanup(config, Direct(handle, Store(handle.dialect)), None)
        await cleanup.keep_under_size()
    finally:
        await handle.shutdown()
    # Everything finished went, oldest first; the running session stays.
    assert table(db, "select id from sessions") == [("s_live",)]
    (run,) = table(db, "select policy, matched, acted, error from cleanup_runs")
    assert run[:3] == (MAX_SIZE, 2, 2)
    assert "nothing finished left to purge" in run[3]


def test_db_vacuum_switches_an_older_file_and_refuses_beside_a_running_recorder(
    db: Path,
) -> None:
    import asyncio

    from recorder.db.locks import FileLock

    with sqlite3.connect(db) as conn:  # an older database: made before incremental vacuum
        conn.execute("pragma auto_vacuum = none")
        conn.execute("vacuum")
    assert table(db, "pragma auto_vacuum") == [(0,)]
    lock = FileLock(db, str(db))
    asyncio.run(lock.acquire())
    try:
        refused = CliRunner().invoke(cli, ["db", "vacuum", "--database", str(db)])
    finally:
        asyncio.run(lock.release())
    assert refused.exit_code == 1 and "stop the recorder first" in refused.output
    assert table(db, "pragma auto_vacuum") == [(0,)]
    result = CliRunner().invoke(cli, ["db", "vacuum", "--database", str(db)])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"\d+\.\d MiB -> \d+\.\d MiB\n", result.output)
    assert table(db, "pragma auto_vacuum") == [(2,)]


def test_a_purge_on_an_older_file_ends(db: Path, tmp_path: Path) -> None:
    """A file made before incremental vacuum keeps its free pages: giving space back
    must stop rather than ask for them forever (`recorder db vacuum` frees them)."""
    with sqlite3.connect(db) as conn:
        conn.execute("pragma auto_vacuum = none")
        conn.execute("vacuum")
    config = configured(
        tmp_path, db, {"name": "bye", "action": "purge", "when": {"status": ["failed"]}}
    )
    result = subprocess.run(
        [sys.executable, "-m", "recorder", "cleanup", "run", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["acted"] == 1 and run["actions"][0]["result"].startswith("purged ")
    assert table(db, "pragma freelist_count")[0][0] > 0  # still there, for db vacuum
