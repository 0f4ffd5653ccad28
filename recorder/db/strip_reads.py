"""What the read library reads for a session's timeline strip: how many frames of each
type fell in each time bucket of the session's span. Part of
:class:`recorder.db.recordings.Recordings`."""

from __future__ import annotations

from dataclasses import dataclass

from recorder.db.readonly import Reader


@dataclass(frozen=True)
class StripCount:
    """Frames of one type (None: not a JSON object with a type) in one time bucket."""

    type: str | None
    bucket: int
    frames: int
    bytes: int


class StripReads:
    reader: Reader

    def frame_strip(
        self, session_id: str, start_us: int, end_us: int, buckets: int
    ) -> list[StripCount]:
        """A session's frames counted per (type, bucket): [start, end) cut into
        ``buckets`` equal spans, a frame outside it counted in the nearest edge's.

        One statement through the session's index, grouped in the database: no
        payload is read, and its cost follows the session's frames, not the database.
        """
        n = max(1, int(buckets))
        start = int(start_us)
        width = max(1, int(end_us) - start)
        # Numbers written in, not bound: asyncpg types a bare parameter in a CASE
        # branch as text, and these are our own integers.
        bucket = (
            f"CASE WHEN received_at_us < {start} THEN 0 "
            f"WHEN received_at_us >= {start + width} THEN {n - 1} "
            f"ELSE (received_at_us - {start}) * {n} / {width} END"
        )
        sql = (
            f"SELECT type, {bucket} AS bucket, count(*) AS frames, "
            "coalesce(sum(size), 0) AS bytes FROM frames WHERE session_id = :sid "
            f"GROUP BY type, {bucket}"
        )
        return [
            StripCount(r["type"], int(r["bucket"]), int(r["frames"]), int(r["bytes"]))
            for r in self.reader.rows(sql, {"sid": session_id})
        ]
