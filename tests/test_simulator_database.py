"""A recording built without sockets (recorder/simulator/database.py, what the
benchmarks build their databases with) reads back through the read side as it was
asked for: the sessions, their frames, tasks and statuses, and the rollups the writer
keeps, as if the recorder had recorded them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recorder.db.recordings import FrameFilter, Recordings
from recorder.simulator import firehose_template
from recorder.simulator.database import build, firehose, spread


def test_conversations_read_back_with_the_frames_and_tasks_asked_for(tmp_path: Path) -> None:
    plans = spread(frames=3_000, sessions=5, days=1, minutes=30, tasks=4)
    built = build(tmp_path / "built.db", plans)
    assert built.frames == 3_000
    assert len(set(built.sessions)) == 5
    with Recordings.open(f"sqlite:///{tmp_path / 'built.db'}") as rec:
        sessions = {s.id: s for s in rec.sessions(limit=0)}
        assert set(sessions) == set(built.sessions)
        for sid, plan in zip(built.sessions, plans, strict=True):
            frames = list(rec.frames(FrameFilter(session_id=sid)))
            assert len(frames) == sessions[sid].frame_count == plan.frames
            assert [f.id for f in frames] == sorted(f.id for f in frames)
            assert sessions[sid].status in ("completed", "failed")
            # Its own first task and the four it was asked for.
            assert len(rec.tasks(sid)) == 5
            assert sum(f.type == "execute_task" for f in frames) == 4
        status = rec.status()
        assert (status.frame_count, status.session_count, status.active_sessions) == (3_000, 5, 0)
        stats = rec.stats()
        assert sum(t.frames for t in stats.by_type) == 3_000
        assert stats.daemon  # the link's daemon_status_update
        connections = rec.connections()
        assert sorted(c.role for c in connections) == ["link"] + ["proxy"] * 5
        assert all(c.closed_at_us is not None for c in connections)
        assert sum(c.frame_count for c in connections) == 3_000


def test_a_firehose_session_is_the_simulators_then_finished(tmp_path: Path) -> None:
    built = build(tmp_path / "firehose.db", [firehose(1_000)])
    (sid,) = built.sessions
    prefix, suffix = firehose_template(sid, 180, 1_000)
    with Recordings.open(f"sqlite:///{tmp_path / 'firehose.db'}") as rec:
        session = rec.session(sid)
        assert (session.status, session.frame_count) == ("completed", 1_002)
        frames = list(rec.frames(FrameFilter(session_id=sid)))
    chunks = [f for f in frames if f.type == "stream_chunk"]
    assert [f.payload for f in chunks] == [f"{prefix}{i}{suffix}" for i in range(1_000)]
    assert [f.type for f in frames[-2:]] == ["stream_end", "session_status_update"]
    assert json.loads(frames[-1].payload or "")["session"]["status"] == "completed"


def test_the_same_seed_builds_the_same_sessions(tmp_path: Path) -> None:
    plans = spread(frames=600, sessions=2, days=1)
    first = build(tmp_path / "a.db", plans, seed=7)
    again = build(tmp_path / "b.db", plans, seed=7)
    other = build(tmp_path / "c.db", plans, seed=8)
    assert first.sessions == again.sessions != other.sessions


def test_a_database_that_holds_a_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.db"
    build(path, [firehose(10)])
    # The connection ids it gives would not be the ones its frames were classified with.
    with pytest.raises(ValueError, match="the database held connections"):
        build(path, [firehose(10)])


def test_with_no_plans_the_database_is_only_migrated(tmp_path: Path) -> None:
    built = build(tmp_path / "empty.db", [])
    assert (built.frames, built.sessions) == (0, ())
    with Recordings.open(f"sqlite:///{tmp_path / 'empty.db'}") as rec:
        assert rec.schema_revision() is not None
        assert rec.status().frame_count == 0
