"""Compaction: a finished session's stream chunks folded into frames of their text.

In bounded steps, like a purge: each call of :func:`compact_some` is one short
transaction over at most ``limit`` chunks and :data:`STEP_BYTES` of their payloads,
so batches of new frames are written in between and the database process never
holds a session's text whole (1 000 000 chunks at once had ingest wait 13.5 s
and the process grow to 1 GB). Per connection, the chunks become one
``stream_compacted`` frame where the first of them was; later steps append to it
until it holds :data:`FRAME_BYTES` (a step's text may take it past that), then the
next one starts. Every other
frame stays byte-exact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.cleanup import CHUNK_COLUMNS, progress, require_finished, uncount
from recorder.db.retired import retire
from recorder.db.schema import cleanup_runs, connections, frame_days, frames, sessions
from recorder.protocol.index import DAY_US
from recorder.times import format_us

COMPACTED = "stream_compacted"
COMPACTING = "compacting"
# A compacted frame takes another step's text while it is smaller than this.
FRAME_BYTES = 1 << 20
# The chunks' payloads one step reads at most (a larger chunk is read alone).
STEP_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class CompactStep:
    """What one step did, and where the next starts."""

    after_id: int
    replaced: int = 0
    written: int = 0
    done: bool = False
    # Per connection, the compacted frame this run is filling: only frames this run
    # wrote are appended to (a daemon may send a frame typed stream_compacted too).
    open_frames: Mapping[int, int] = field(default_factory=dict)


def compact_some(
    conn: Connection,
    session_id: str,
    after_id: int,
    limit: int,
    open_frames: Mapping[int, int],
    run_id: int | None,
    now_us: int,
) -> CompactStep:
    """Fold the session's next chunks (after frame ``after_id``) into its compacted
    frames; ``done`` once none is left, and the session's mark is taken off."""
    with conn.begin():
        require_finished(conn, session_id)
        chunks = _next_chunks(conn, session_id, after_id, limit)
        if not chunks:
            conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.cleanup_state == COMPACTING)
                .values(cleanup_state=None)
            )
            if run_id is not None:
                conn.execute(
                    update(cleanup_runs)
                    .where(cleanup_runs.c.id == run_id)
                    .values(acted=cleanup_runs.c.acted + 1)
                )
            return CompactStep(after_id, done=True, open_frames=open_frames)
        conn.execute(
            update(sessions)
            .where(sessions.c.id == session_id, sessions.c.cleanup_state.is_(None))
            .values(cleanup_state=COMPACTING)
        )
        by_connection: dict[int, list[Any]] = {}
        for chunk in chunks:
            by_connection.setdefault(chunk.connection_id, []).append(chunk)
        opened = dict(open_frames)
        replaced = written = 0
        for cid, run in by_connection.items():
            into = opened.get(cid)
            if into is not None and _append(conn, session_id, into, run):
                replaced += len(run)
            elif len(run) >= 2 or into is not None:
                opened[cid] = _start(conn, session_id, run)
                replaced += len(run)
                written += 1
            # A lone chunk with nothing to join stays as it is.
        progress(conn, run_id, replaced, now_us)
        return CompactStep(chunks[-1].id, replaced, written, open_frames=opened)


def _next_chunks(conn: Connection, session_id: str, after_id: int, limit: int) -> list[Any]:
    """The next chunks in id order, as many as fit in one step's bytes (at least one)."""
    sized = conn.execute(
        select(frames.c.id, frames.c.size)
        .where(
            frames.c.session_id == session_id,
            frames.c.type == "stream_chunk",
            frames.c.id > after_id,
        )
        .order_by(frames.c.id)
        .limit(limit)
    ).all()
    ids: list[int] = []
    total = 0
    for row in sized:
        if ids and total + row.size > STEP_BYTES:
            break
        ids.append(row.id)
        total += row.size
    if not ids:
        return []
    return list(
        conn.execute(
            select(*CHUNK_COLUMNS, frames.c.seq, frames.c.payload)
            .where(frames.c.id.in_(ids))
            .order_by(frames.c.id)
        ).all()
    )


def _start(conn: Connection, session_id: str, run: Sequence[Any]) -> int:
    """The run's first chunk becomes a compacted frame of the run's text."""
    first, last = run[0], run[-1]
    data = {
        "sessionId": session_id,
        "text": "".join(_chunk_text(c.payload) for c in run),
        "chunks": len(run),
        "firstReceivedAt": format_us(first.received_at_us),
        "lastReceivedAt": format_us(last.received_at_us),
        "seqs": [first.seq, last.seq],
    }
    payload = _dump(data)
    size = len(payload.encode())
    conn.execute(
        update(frames)
        .where(frames.c.id == first.id)
        .values(
            type=COMPACTED,
            payload=payload,
            payload_bytes=None,
            parse_error=None,
            opcode=1,
            size=size,
        )
    )
    _delete(conn, session_id, run[1:])
    uncount(conn, run)
    _count(conn, first, 1, size)
    return int(first.id)


def _append(conn: Connection, session_id: str, frame_id: int, run: Sequence[Any]) -> bool:
    """The run's text appended to a compacted frame this run wrote; False when that
    frame is full (or gone), and a new one should start."""
    found = conn.execute(
        select(frames.c.payload, frames.c.size, frames.c.received_at_us, frames.c.direction).where(
            frames.c.id == frame_id, frames.c.type == COMPACTED
        )
    ).first()
    if found is None or found.size >= FRAME_BYTES:
        return False
    data = json.loads(found.payload)["data"]
    data["text"] += "".join(_chunk_text(c.payload) for c in run)
    data["chunks"] += len(run)
    data["lastReceivedAt"] = format_us(run[-1].received_at_us)
    data["seqs"][1] = run[-1].seq
    payload = _dump(data)
    size = len(payload.encode())
    conn.execute(update(frames).where(frames.c.id == frame_id).values(payload=payload, size=size))
    _delete(conn, session_id, run)
    uncount(conn, run)
    _count(conn, found, 0, size - found.size, connection_id=run[0].connection_id)
    return True


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(
        {"type": COMPACTED, "data": data, "recorder": "compacted"},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _delete(conn: Connection, session_id: str, run: Sequence[Any]) -> None:
    if not run:
        return
    retire(conn, frames, [c.id for c in run])
    conn.execute(delete(frames).where(frames.c.id.in_([c.id for c in run])))
    conn.execute(
        update(sessions)
        .where(sessions.c.id == session_id)
        .values(frame_count=sessions.c.frame_count - len(run))
    )


def _chunk_text(payload: str | None) -> str:
    try:
        obj = json.loads(payload or "")
    except ValueError:
        return ""
    data = obj.get("data") if isinstance(obj, dict) else None
    chunk = data.get("chunk") if isinstance(data, dict) else None
    return chunk if isinstance(chunk, str) else ""


def _count(
    conn: Connection, at: Any, frames_: int, size: int, *, connection_id: int | None = None
) -> None:
    """The compacted frame in the rollups, where it stands (its day and direction):
    ``frames_`` more frames and ``size`` more bytes."""
    cid = at.connection_id if connection_id is None else connection_id
    if frames_:
        conn.execute(
            update(connections)
            .where(connections.c.id == cid)
            .values(frame_count=connections.c.frame_count + frames_)
        )
    key = {
        "day_us": at.received_at_us - at.received_at_us % DAY_US,
        "type": COMPACTED,
        "direction": at.direction,
    }
    found = conn.execute(
        update(frame_days)
        .where(*(frame_days.c[k] == v for k, v in key.items()))
        .values(frames=frame_days.c.frames + frames_, bytes=frame_days.c.bytes + size)
    )
    if not found.rowcount:
        conn.execute(insert(frame_days).values(**key, frames=frames_, bytes=size))
