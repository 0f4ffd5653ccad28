"""Compaction: a finished session's stream chunks folded into frames of their text.

In bounded steps, like a purge: each call of :func:`compact_some` is one short
transaction over at most ``limit`` chunks and :data:`STEP_BYTES` of their payloads,
so batches of new frames are written in between and the database process never
holds a session's text whole (1 000 000 chunks at once had ingest wait 13.5 s
and the process grow to 1 GB). Chunks of one connection, task and direction become
one ``stream_compacted`` frame where the first of them was; later steps append to it
until it holds :data:`FRAME_BYTES` (a step's text may take it past that), then the
next one starts.

Only what can be folded without losing anything is: a chunk whose text is a string
at ``data.chunk`` (the daemon's shape), and no larger than a compacted frame. Any
other chunk (text elsewhere, not a string, a 60 MB one) stays byte-exact where it
is, and the text on either side of it goes to different frames, so the order holds.
Every frame that is not a chunk stays byte-exact too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from recorder.db.cleanup import CHUNK_COLUMNS, Work, hold, progress, release, uncount
from recorder.db.retired import retire
from recorder.db.schema import cleanup_runs, connections, frame_days, frames, sessions, tasks
from recorder.protocol.index import DAY_US
from recorder.times import format_us

COMPACTED = "stream_compacted"
COMPACTING = "compacting"
# A compacted frame takes another step's text while it is smaller than this.
FRAME_BYTES = 1 << 20
# The chunks' payloads one step reads at most (chunks larger than a frame are not read).
STEP_BYTES = 8 << 20

# What chunks are grouped by: connection, task, direction.
Group = tuple[int, str | None, str]


@dataclass(frozen=True, slots=True)
class CompactStep:
    """What one step did, and where the next starts."""

    after_id: int
    replaced: int = 0
    written: int = 0
    done: bool = False
    # Per group, the compacted frame this run is filling: only frames this run wrote
    # are appended to (a daemon may send a frame typed stream_compacted too).
    open_frames: Mapping[Group, int] = field(default_factory=dict)


def compact_some(
    conn: Connection,
    work: Work,
    after_id: int,
    limit: int,
    open_frames: Mapping[Group, int],
    now_us: int,
) -> CompactStep:
    """Fold the session's next chunks (after frame ``after_id``, recorded before the run
    began) into its compacted frames; ``done`` once none is left."""
    with conn.begin():
        hold(conn, work, COMPACTING)
        sized = conn.execute(
            select(*CHUNK_COLUMNS)
            .where(
                frames.c.session_id == work.session_id,
                frames.c.type == "stream_chunk",
                frames.c.id > after_id,
                frames.c.id <= work.through_id,
            )
            .order_by(frames.c.id)
            .limit(limit)
        ).all()
        if not sized:
            release(conn, work, COMPACTING)
            _acted(conn, work.run_id)
            return CompactStep(after_id, done=True, open_frames=open_frames)
        step = _within_step(sized)
        texts = _texts(conn, step)
        opened = dict(open_frames)
        replaced = written = 0
        for group, run, closed in _runs(step, texts):
            into = opened.get(group)
            if not run:
                pass
            elif into is not None and _append(conn, work.session_id, into, run, texts):
                replaced += len(run)
            elif len(run) >= 2 or into is not None:
                opened[group] = _start(conn, work.session_id, run, texts)
                replaced += len(run)
                written += 1
            # A lone chunk with nothing to join stays as it is.
            if closed:
                opened.pop(group, None)
        progress(conn, work.run_id, replaced, now_us)
        return CompactStep(step[-1].id, replaced, written, open_frames=opened)


def _within_step(sized: Sequence[Any]) -> list[Any]:
    """The chunks one step takes: as many as fit in its bytes (at least one)."""
    taken: list[Any] = []
    total = 0
    for row in sized:
        folded = row.size <= FRAME_BYTES
        if taken and folded and total + row.size > STEP_BYTES:
            break
        taken.append(row)
        total += row.size if folded else 0
    return taken


def _texts(conn: Connection, step: Sequence[Any]) -> dict[int, str]:
    """The text of each chunk that can be folded, by frame id (the others: absent)."""
    ids = [row.id for row in step if row.size <= FRAME_BYTES]
    texts: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for frame_id, payload in conn.execute(
            select(frames.c.id, frames.c.payload).where(frames.c.id.in_(chunk))
        ):
            text = _chunk_text(payload)
            if text is not None:
                texts[frame_id] = text
    return texts


def _runs(step: Sequence[Any], texts: Mapping[int, str]) -> list[tuple[Group, list[Any], bool]]:
    """The step's chunks in runs per group, in order: (group, chunks, closed). A chunk
    that cannot be folded closes its group's run and the frame it was filling, so the
    text after it goes to a new frame after it, never over it."""
    current: dict[Group, list[Any]] = {}
    runs: list[tuple[Group, list[Any], bool]] = []
    for row in step:
        group = (row.connection_id, row.task_id, row.direction)
        if row.id in texts:
            current.setdefault(group, []).append(row)
        else:
            runs.append((group, current.pop(group, []), True))
    runs += [(group, run, False) for group, run in current.items()]
    return runs


def _start(conn: Connection, session_id: str, run: Sequence[Any], texts: Mapping[int, str]) -> int:
    """The run's first chunk becomes a compacted frame of the run's text."""
    first, last = run[0], run[-1]
    data = {
        "sessionId": session_id,
        "text": "".join(texts[c.id] for c in run),
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
    uncount(conn, run, session_id)
    _count(conn, session_id, first, 1, size)
    return int(first.id)


def _append(
    conn: Connection, session_id: str, frame_id: int, run: Sequence[Any], texts: Mapping[int, str]
) -> bool:
    """The run's text appended to a compacted frame this run wrote; False when that
    frame is full (or gone), and a new one should start."""
    found = conn.execute(
        select(*CHUNK_COLUMNS, frames.c.payload).where(
            frames.c.id == frame_id, frames.c.type == COMPACTED
        )
    ).first()
    if found is None or found.size >= FRAME_BYTES:
        return False
    data = json.loads(found.payload)["data"]
    data["text"] += "".join(texts[c.id] for c in run)
    data["chunks"] += len(run)
    data["lastReceivedAt"] = format_us(run[-1].received_at_us)
    data["seqs"][1] = run[-1].seq
    payload = _dump(data)
    size = len(payload.encode())
    conn.execute(update(frames).where(frames.c.id == frame_id).values(payload=payload, size=size))
    _delete(conn, session_id, run)
    uncount(conn, run, session_id)
    _count(conn, session_id, found, 0, size - found.size)
    return True


def _dump(data: dict[str, Any]) -> str:
    frame = {"type": COMPACTED, "data": data, "recorder": "compacted"}
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode()
    except UnicodeEncodeError:
        # A lone surrogate in a chunk (JSON allows "\ud800"): escaped, as it came.
        text = json.dumps(frame, separators=(",", ":"))
    return text


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


def _chunk_text(payload: str | None) -> str | None:
    """The chunk's text where the daemon puts it; None when it is not there as a string."""
    try:
        obj = json.loads(payload or "")
    except (ValueError, RecursionError):  # the classifier's parser takes 1 024 levels
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    chunk = data.get("chunk") if isinstance(data, dict) else None
    return chunk if isinstance(chunk, str) else None


def _acted(conn: Connection, run_id: int | None) -> None:
    if run_id is not None:
        conn.execute(
            update(cleanup_runs)
            .where(cleanup_runs.c.id == run_id)
            .values(acted=cleanup_runs.c.acted + 1)
        )


def _count(conn: Connection, session_id: str, at: Any, frames_: int, size: int) -> None:
    """The compacted frame in the rollups, where it stands (its connection, task, day
    and direction): ``frames_`` more frames and ``size`` more bytes."""
    if frames_:
        conn.execute(
            update(connections)
            .where(connections.c.id == at.connection_id)
            .values(frame_count=connections.c.frame_count + frames_)
        )
        if at.task_id is not None:
            conn.execute(
                update(tasks)
                .where(tasks.c.session_id == session_id, tasks.c.task_id == at.task_id)
                .values(frame_count=tasks.c.frame_count + frames_)
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
