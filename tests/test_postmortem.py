"""Postmortem queries on a real recording: show, replay, attribution, stats, and
read-only copies of it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.recordings import Recordings
from tests.postmortem_recording import Recording, record


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    tmp = tmp_path_factory.mktemp("recording")
    return asyncio.run(record(tmp / "recorder.db", tmp))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def show_json(db: Path, session: str) -> dict[str, Any]:
    result = invoke("show", "--database", str(db), session, "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_show_pairs_tool_calls_and_counts_what_the_ui_saw(recording: Recording) -> None:
    story = show_json(recording.path, recording.ui_session[:22])  # a unique prefix
    assert story["session"]["id"] == recording.ui_session
    assert recording.tool_calls_sent > 0
    tools = story["tools"]
    assert len(tools) == recording.tool_calls_sent
    assert all(t["status"] in ("completed", "failed") and t["duration_s"] >= 0 for t in tools)
    assert story["by_type"]["stream_chunk"] == sum(
        1 for m in recording.ui_frames if m["type"] == "stream_chunk"
    )
    roles = {c["role"] for c in story["connections"]}
    # Every connection that saw it: that carried its frames, or listed it (issue 19).
    assert "proxy" in roles and all(c["frames"] or c["listed"] for c in story["connections"])
    assert [c["status"] for c in story["timeline"]][-1] == "completed"
    assert story["metrics"]["tasksCompleted"] >= 1
    text = invoke("show", "--database", str(recording.path), recording.ui_session).stdout
    assert "Tool calls:" in text and "UI 127.0.0.1:" in text


def test_show_reports_the_gap_of_a_forced_disconnect(recording: Recording) -> None:
    story = show_json(recording.path, recording.gap_session)
    assert story["session"]["status"] == "completed"
    gaps = story["gaps"]
    assert len(gaps) == 1 and gaps[0]["seconds"] > 0
    links = [c for c in story["connections"] if c["role"] == "link"]
    assert len(links) == 2  # before and after the disconnect
    assert gaps[0]["start_us"] == links[0]["closed_us"]
    assert gaps[0]["end_us"] == links[1]["opened_us"]
    assert (
        "Gaps: no connection was recording"
        in invoke("show", "--database", str(recording.path), recording.gap_session).stdout
    )


def test_replay_marks_the_gap_and_plays_the_ui_stream(recording: Recording) -> None:
    db = str(recording.path)
    gap = invoke("replay", "--database", db, recording.gap_session, "--instant")
    assert gap.exit_code == 0, gap.output
    lines = gap.stdout.splitlines()
    assert lines[0] == "[status] running" and lines[-1] == "[status] completed"
    assert len([line for line in lines if line.startswith("[gap] ")]) == 1
    ui = invoke("replay", "--database", db, recording.ui_session, "--instant").stdout
    chunks = "".join(m["data"]["chunk"] for m in recording.ui_frames if m["type"] == "stream_chunk")
    assert chunks.strip() and chunks.splitlines()[0] in ui
    assert ui.count("[tool] ") == 2 * recording.tool_calls_sent


def test_show_lists_a_rejected_follow_up_as_that(recording: Recording) -> None:
    """ "Fix it" was asked after the session completed, and the daemon turned it down:
    today's main showed that answer as the session's error, in the header (issue 19)."""
    story = show_json(recording.path, recording.ui_session)
    tasks = {t["task_id"]: t for t in story["tasks"]}
    assert tasks["Fix it"]["status"] == "rejected"
    assert "is not running (status: completed)" in tasks["Fix it"]["error"]
    assert [r["task_id"] for r in story["rejected"]] == ["Fix it"]
    first = [t for t in tasks.values() if t["task_id"] != "Fix it"]
    assert [t["status"] for t in first] == ["completed"]
    assert all(e["source"] != "task_failed" for e in story["errors"])
    text = invoke("show", "--database", str(recording.path), recording.ui_session).stdout
    assert not [line for line in text.splitlines() if line.startswith("error ")]
    assert "Requests turned down" in text


def jsonl(*args: str) -> list[dict[str, Any]]:
    result = invoke("frames", "--format", "jsonl", "--limit", "0", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_spawn_requests_and_errors_belong_to_their_sessions(recording: Recording) -> None:
    frames = jsonl("--database", str(recording.path), "--session", recording.ui_session)
    types = [f["type"] for f in frames]
    assert types[0] == "spawn_session" and "session_spawned" in types
    nope = jsonl("--database", str(recording.path), "--session", "session_nope")
    assert [(f["type"], f["direction"]) for f in nope] == [
        ("session_status", "out"),
        ("error", "in"),
    ]
    assert "Session not found" in nope[1]["payload"]
    # The stored bytes are what crossed the wire: the error frame names no session.
    assert "session_nope" not in json.loads(nope[1]["payload"]).get("sessionId", "")


def test_asking_about_a_missing_session_creates_no_session(recording: Recording) -> None:
    result = invoke("sessions", "--database", str(recording.path), "--json", "--limit", "0")
    ids = {json.loads(line)["id"] for line in result.stdout.splitlines()}
    assert "session_nope" not in ids and recording.ui_session in ids
    assert invoke("show", "--database", str(recording.path), "session_nope").exit_code == 1


def test_a_second_task_keeps_each_description(recording: Recording) -> None:
    result = invoke(
        "tasks", "--database", str(recording.path), "--session", recording.ui_session, "--json"
    )
    tasks = {t["task_id"]: t for t in json.loads(result.stdout)}
    assert tasks["Fix it"]["description"] == "Fix it"
    first = [t for t in tasks.values() if t["task_id"] != "Fix it"]
    assert [t["description"] for t in first] == ["Implement feature X"]
    session = json.loads(
        invoke("sessions", "--database", str(recording.path), "--format", "json").stdout
    )
    ours = next(s for s in session if s["id"] == recording.ui_session)
    assert ours["task_description"] == "Implement feature X"
    by_text = jsonl("--database", str(recording.path), "--task", "Implement feature X")
    assert by_text and all(f["session_id"] == recording.ui_session for f in by_text)


def test_query_options_that_cannot_match(recording: Recording) -> None:
    db = str(recording.path)
    bad = invoke("frames", "--database", db, "--since", "1h", "--until", "2h")
    assert bad.exit_code == 2 and "--since is later than --until" in bad.output
    empty = invoke("frames", "--database", db, "--type", "no_such_type")
    assert empty.exit_code == 0 and empty.stdout == "" and "no frames match" in empty.stderr
    last = jsonl("--database", db, "--last", "3")
    everything = jsonl("--database", db)
    assert [f["id"] for f in last] == [f["id"] for f in everything[-3:]]
    grep = jsonl("--database", db, "--grep", "Session not found")
    assert [f["type"] for f in grep] == ["error"]


def test_stats_connections_and_status(recording: Recording) -> None:
    db = str(recording.path)
    stats = json.loads(invoke("stats", "--database", db, "--json").stdout)
    everything = jsonl("--database", db)
    assert sum(stats["frames_by_type"].values()) == len(everything)
    assert stats["frames_by_type"]["stream_chunk"] == sum(
        1 for f in everything if f["type"] == "stream_chunk"
    )
    conns = json.loads(invoke("connections", "--database", db, "--json").stdout)
    assert sum(c["frame_count"] for c in conns) == len(everything)
    assert {c["role"] for c in conns} == {"link", "proxy"}
    status = json.loads(invoke("status", "--database", db, "--json").stdout)
    assert status["frames"] == len(everything) and status["database"] == db


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def read_as_nobody(path: Path) -> list[str]:
    """Session ids read by a process that cannot write the directory (root can)."""
    reader_end, writer_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, read, report, leave
        code = 1
        try:
            os.close(reader_end)
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            reader = Recordings.open(f"sqlite:///{path}")
            ids = [row.id for row in reader.sessions(limit=0)]
            reader.close()
            os.write(writer_end, json.dumps(ids).encode())
            code = 0
        except BaseException as exc:
            os.write(writer_end, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(writer_end)
    with os.fdopen(reader_end, "rb") as pipe:
        answer = json.loads(pipe.read() or b"null")
    os.waitpid(pid, 0)
    assert isinstance(answer, list), answer
    return [str(x) for x in answer]


@pytest.mark.parametrize("with_wal", [True, False])
def test_a_read_only_copy_is_read_and_left_alone(recording: Recording, with_wal: bool) -> None:
    # Somewhere the unprivileged reader can reach (pytest's own directories are 0700).
    copy = Path(tempfile.mkdtemp(prefix="recorder-copy-"))
    copy.chmod(0o755)
    # A copy of a live database: its latest commit still only in the -wal file.
    live = copy / "live"
    live.mkdir()
    shutil.copyfile(recording.path, live / "recorder.db")
    writer = sqlite3.connect(live / "recorder.db")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    with writer:
        writer.execute(
            "INSERT INTO sessions (id, first_seen_us, last_seen_us, frame_count) "
            "VALUES ('session_only_in_the_wal', 1, 1, 0)"
        )
    shutil.copyfile(live / "recorder.db", copy / "recorder.db")
    if with_wal:
        shutil.copyfile(live / "recorder.db-wal", copy / "recorder.db-wal")
    writer.close()
    shutil.rmtree(live)
    for p in copy.iterdir():
        p.chmod(0o444)
    copy.chmod(0o555)
    before = digest(copy)
    try:
        ids = read_as_nobody(copy / "recorder.db")
    finally:
        after = digest(copy)
        copy.chmod(0o755)
        shutil.rmtree(copy)
    assert recording.ui_session in ids
    assert ("session_only_in_the_wal" in ids) is with_wal
    assert after == before  # no byte changed, no file added


def test_db_current_leaves_a_copied_database_alone(recording: Recording, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copyfile(recording.path, live / "recorder.db")
    writer = sqlite3.connect(live / "recorder.db")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    with writer:
        writer.execute(
            "INSERT INTO sessions (id, first_seen_us, last_seen_us, frame_count) "
            "VALUES ('session_only_in_the_wal', 1, 1, 0)"
        )
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(live / "recorder.db", copy / "copy.db")
    shutil.copyfile(live / "recorder.db-wal", copy / "copy.db-wal")
    writer.close()
    before = digest(copy)
    result = invoke("db", "current", "--database", str(copy / "copy.db"))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("up to date)\n")
    after = digest(copy)
    after.pop("copy.db-shm", None)  # what SQLite needs to read a -wal, as every query does
    assert after == before  # not checkpointed, nothing deleted, no lock file
