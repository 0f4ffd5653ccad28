"""What the read library reads for the OpenTelemetry export: a session's frames of
the types its trace reads, the chunks of each of its streams (counted by the
database), and the sessions a backfill exports. Part of
:class:`recorder.db.recordings.Recordings`.

Every read walks an index: the session's frames through the index by session, a
window of ids at a time; the sessions through last_seen_us. A stream of a million
chunks costs a count, two point reads, and (with content) the first pages of its text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from recorder.db import pages
from recorder.db.pages import FrameFilter
from recorder.db.readonly import Reader, first_row
from recorder.db.rows import Session
from recorder.otel.fold import TRACE_TYPES, Chunks, Moment, StreamRun, TraceFrame
from recorder.protocol.tame import read_object

_WANTED = ", ".join(f"'{t}'" for t in TRACE_TYPES)
TRACE_COLUMNS = (
    "id, connection_id, direction, received_at_us, monotonic_ns, type, task_id, size, "
    f"CASE WHEN type IN ({_WANTED}) THEN payload END AS payload"
)
# Sessions a backfill reads at a time (sessions_since): a shorter page is the last.
SESSIONS_PAGE = 500


class OtelReads:
    reader: Reader

    def trace_frames(self, session: Session) -> Iterator[TraceFrame]:
        """The session's frames of :data:`TRACE_TYPES` and what the client sent, in
        recording order, a page at a time."""
        f = FrameFilter(session_id=session.id, read_types=TRACE_TYPES)
        for r in pages.frames(self.reader, f, TRACE_COLUMNS):
            payload = r["payload"]
            yield TraceFrame(
                int(r["id"]),
                int(r["connection_id"]),
                r["direction"],
                int(r["received_at_us"]),
                int(r["monotonic_ns"]),
                r["type"],
                r["task_id"],
                (read_object(payload) or {}) if payload else {},
            )

    def chunks(self, session_id: str, run: StreamRun, text_bytes: int = 0) -> Chunks:
        """A stream's chunks: counted a window of ids at a time (no statement holds a
        snapshot for long), the first and last read by id; with ``text_bytes``, their
        text from the start up to about that many bytes."""
        hi = self._last_id(session_id) + 1 if run.before_id is None else run.before_id
        sql = (
            "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi FROM frames "
            "WHERE session_id = :s AND connection_id = :c AND type = 'stream_chunk' "
            "AND id > :a AND id < :b"
        )
        count, lo, last = 0, None, None
        params: dict[str, Any] = {"s": session_id, "c": run.connection_id}
        for start in range(run.after_id, hi, pages.ID_WINDOW):
            upper = min(start + pages.ID_WINDOW + 1, hi)
            row = first_row(self.reader, sql, params | {"a": start, "b": upper})
            if row is not None and row["n"]:
                count += int(row["n"])
                lo = lo if lo is not None else int(row["lo"])
                last = int(row["hi"])
        text = None
        if text_bytes and lo is not None and last is not None:
            text = self._chunk_text(session_id, run.connection_id, lo, last, text_bytes)
        return Chunks(count, self._moment(lo), self._moment(last), text)

    def _chunk_text(self, session_id: str, connection: int, lo: int, hi: int, most: int) -> str:
        f = FrameFilter(
            session_id=session_id,
            type="stream_chunk",
            connection_id=connection,
            after_id=lo - 1,
            through_id=hi,
        )
        parts: list[str] = []
        held = 0
        for r in pages.frames(self.reader, f, "id, size, payload"):
            data = (read_object(r["payload"] or "") or {}).get("data")
            piece = data.get("chunk") if isinstance(data, dict) else None
            if isinstance(piece, str):
                parts.append(piece)
                held += len(piece)
                if held > most:  # characters are at least a byte: enough to cut from
                    break
        return "".join(parts)

    def _moment(self, frame_id: int | None) -> Moment | None:
        if frame_id is None:
            return None
        sql = "SELECT connection_id, received_at_us, monotonic_ns FROM frames WHERE id = :id"
        row = first_row(self.reader, sql, {"id": frame_id})
        if row is None:
            return None
        return Moment(
            frame_id,
            int(row["connection_id"]),
            int(row["received_at_us"]),
            int(row["monotonic_ns"]),
        )

    def _last_id(self, session_id: str) -> int:
        row = first_row(
            self.reader, "SELECT max(id) AS id FROM frames WHERE session_id = :s", {"s": session_id}
        )
        return int(row["id"]) if row is not None and row["id"] is not None else 0

    def sessions_since(self, since_us: int | None, after: str | None = None) -> list[Session]:
        """Sessions seen from ``since_us`` on (all: None), oldest first, a page of
        :data:`SESSIONS_PAGE` after the session ``after`` (a key: the next page costs what the first did)."""
        conds: list[str] = []
        params: dict[str, Any] = {}
        if since_us is not None:
            conds.append("last_seen_us >= :since")
            params["since"] = since_us
        if after is not None:
            key = "(SELECT first_seen_us FROM sessions WHERE id = :after)"
            conds.append(f"(first_seen_us > {key} OR (first_seen_us = {key} AND id > :after))")
            params["after"] = after
        where = " WHERE " + " AND ".join(conds) if conds else ""
        sql = f"SELECT * FROM sessions{where} ORDER BY first_seen_us, id LIMIT {SESSIONS_PAGE}"
        return [Session.of(r) for r in self.reader.rows(sql, params)]
