"""Frames read in keyset pages: every long read of the read side, and every follower.

A page is one statement, ``... AND id > :after AND id <= :upto ORDER BY id LIMIT n``,
fetched whole (:meth:`~recorder.db.readonly.Reader.page`: at most ``PAGE_ROWS`` rows
and about ``PAGE_BYTES`` of frames) and ended before its rows are handed out. So a
reader holds no snapshot while its caller prints or waits: a SQLite writer's WAL can
start over behind it (a ``recorder tail`` that held one statement open through what
it printed let the WAL grow by 47 MB/s under a firehose), and PostgreSQL's vacuum is
not held back by a transaction left open. A statement covers at most ``ID_WINDOW``
ids, so that a filter no index serves (``--grep``, ``--direction``) scans a bounded
stretch of the table each time, however rarely it matches.

Ids follow recording order (one writer commits batches in order): the next page
starts after the last id read, and a moment (``--since``) is found by a binary search
over ids, in point reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from recorder.db.readonly import Reader, Row, first_row

FRAME_COLUMNS = (
    "id, connection_id, seq, direction, received_at_us, monotonic_ns, opcode, size, type, "
    "session_id, task_id, parse_error, payload, payload_bytes"
)
PAGE_ROWS = 1000
# Frames up to 64 MiB are recorded: a page stops once it holds this much (and at
# least one frame), by the frames' sizes.
PAGE_BYTES = 4 * 1024 * 1024
ID_WINDOW = 20_000
# How much later than its receipt a frame may reach the writer, and so take its id,
# for --since and --until to find it: the producers hand a frame over as they stamp
# it, and wait only while the writer's queue is full.
HANDOVER_SLACK_US = 30_000_000


@dataclass(frozen=True)
class FrameFilter:
    session_id: str | None = None
    # A task id, or the description a person remembers.
    task: str | None = None
    type: str | None = None
    direction: str | None = None
    connection_id: int | None = None
    since_us: int | None = None
    until_us: int | None = None
    # Frames whose payload contains this text: a scan, bounded by the other filters.
    grep: str | None = None
    # Only frames after this id, and up to that one (`recorder tail`).
    after_id: int | None = None
    through_id: int | None = None
    limit: int = 0
    # The newest N, still printed oldest first.
    last: int = 0
    # Only the frames of these types, and every frame the client sent (the frames a
    # session's story reads one by one).
    read_types: tuple[str, ...] | None = None


def _conditions(reader: Reader, f: FrameFilter) -> tuple[list[str], dict[str, Any]]:
    conds: list[str] = []
    params: dict[str, Any] = {}
    if f.session_id is not None:
        conds.append("session_id = :session_id")
        params["session_id"] = f.session_id
    if f.task is not None:
        conds.append(
            "task_id IN (SELECT :task UNION SELECT task_id FROM tasks WHERE description = :task)"
        )
        params["task"] = f.task
    if f.type is not None:
        conds.append("type = :type")
        params["type"] = f.type
    if f.direction is not None:
        conds.append("direction = :direction")
        params["direction"] = f.direction
    if f.connection_id is not None:
        conds.append("connection_id = :connection_id")
        params["connection_id"] = f.connection_id
    if f.since_us is not None:
        conds.append("received_at_us >= :since_us")
        params["since_us"] = f.since_us
    if f.until_us is not None:
        conds.append("received_at_us < :until_us")
        params["until_us"] = f.until_us
    if f.grep is not None:
        conds.append(reader.backend.contains("payload", "grep"))
        params["grep"] = f.grep
    if f.read_types is not None:
        names = [f"read_type_{i}" for i in range(len(f.read_types))]
        params |= dict(zip(names, f.read_types, strict=True))
        listed = ", ".join(f":{name}" for name in names) or "NULL"
        conds.append(f"(direction = 'out' OR type IN ({listed}))")
    return conds, params


def _where(conds: list[str], lower: str = ":after", upper: str = ":upto") -> str:
    return " WHERE " + " AND ".join([*conds, f"id > {lower}", f"id <= {upper}"])


def frame_pages(
    reader: Reader, f: FrameFilter, columns: str = FRAME_COLUMNS
) -> Iterator[list[Row]]:
    """Frames in recording order, a page at a time (``columns`` must include ``id``
    and ``size``). Memory stays at a page whatever the number of rows, and no
    statement is open while the caller holds a page."""
    conds, params = _conditions(reader, f)
    after, upto = _span(reader, f)
    if f.last:
        after = _before_newest(reader, conds, params, f.last, after, upto)
    left = f.limit or None
    while after < upto:
        window = min(after + ID_WINDOW, upto)
        wanted = PAGE_ROWS if left is None else min(PAGE_ROWS, left)
        sql = reader.backend.page_sql(columns, _where(conds), wanted)
        rows = reader.page(sql, {**params, "after": after, "upto": window}, PAGE_BYTES)
        if rows:
            yield rows
            if left is not None:
                left -= len(rows)
                if left <= 0:
                    return
        cut = len(rows) == wanted or sum(r["size"] for r in rows) >= PAGE_BYTES
        after = rows[-1]["id"] if cut else window


def frames(reader: Reader, f: FrameFilter, columns: str = FRAME_COLUMNS) -> Iterator[Row]:
    """Frames in recording order, read in pages (see :func:`frame_pages`)."""
    for rows in frame_pages(reader, f, columns):
        yield from rows


def newest_frame_id(reader: Reader) -> int:
    row = first_row(reader, "SELECT max(id) AS id FROM frames")
    return int(row["id"]) if row is not None and row["id"] is not None else 0


def _span(reader: Reader, f: FrameFilter) -> tuple[int, int]:
    """Ids (after, upto] that can hold the filter's frames: a session's own first
    and last frame through its index, and the moments by binary search."""
    if f.session_id is not None:
        row = first_row(
            reader,
            "SELECT (SELECT min(id) FROM frames WHERE session_id = :s) AS lo, "
            "(SELECT max(id) FROM frames WHERE session_id = :s) AS hi",
            {"s": f.session_id},
        )
        if row is None or row["lo"] is None:
            return 0, 0
        after, upto = int(row["lo"]) - 1, int(row["hi"])
    else:
        after, upto = 0, newest_frame_id(reader)
    if f.after_id is not None:
        after = max(after, f.after_id)
    if f.through_id is not None:
        upto = min(upto, f.through_id)
    if f.since_us is not None and after < upto:
        since = f.since_us - HANDOVER_SLACK_US
        after = max(after, first_id_at(reader, since, after, upto) - 1)
    if f.until_us is not None and after < upto:
        until = f.until_us + HANDOVER_SLACK_US
        upto = min(upto, first_id_at(reader, until, after, upto) - 1)
    return after, upto


def first_id_at(reader: Reader, at_us: int, after: int, upto: int) -> int:
    """An id in (after, upto + 1] such that the frames before it there were received
    before ``at_us``, and the first frame from it on (if any) at ``at_us`` or later.

    Receive times follow ids, so a binary search finds it in about 25 point reads
    (SQLite has no index on receive times, and a scan holds its snapshot for long).
    They follow them up to HANDOVER_SLACK_US: a frame gets its id when it reaches the
    writer, which can be later than its receipt (another's ahead in the queue)."""
    lo, hi = after + 1, upto + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = first_row(
            reader,
            "SELECT id, received_at_us FROM frames WHERE id >= :mid AND id < :hi "
            "ORDER BY id LIMIT 1",
            {"mid": mid, "hi": hi},
        )
        if row is None:
            hi = mid  # no frame in [mid, hi)
        elif row["received_at_us"] >= at_us:
            hi = int(row["id"])
        else:
            lo = int(row["id"]) + 1
    return lo


def _before_newest(
    reader: Reader, conds: list[str], params: dict[str, Any], count: int, after: int, upto: int
) -> int:
    """The id just before the first of the newest ``count`` matching frames in
    (after, upto], counted back a window of ids at a time."""
    while upto > after:
        lower = max(after, upto - ID_WINDOW)
        found = reader.rows(
            f"SELECT id FROM frames{_where(conds, ':lower', ':upper')} "
            f"ORDER BY id DESC LIMIT {int(count)}",
            {**params, "lower": lower, "upper": upto},
        )
        if len(found) >= count:
            return int(found[count - 1]["id"]) - 1
        count -= len(found)
        upto = lower
    return after
