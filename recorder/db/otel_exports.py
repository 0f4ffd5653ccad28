"""The live export's cursor, written by the database process
(:mod:`recorder.pipeline.export_ops`): the endpoints it sends to, and each session an
endpoint took. Read by :mod:`recorder.db.export_reads`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy.engine import Connection

from recorder.db.backend import backend_of
from recorder.db.schema import otel_endpoints, otel_exports


class Exported(NamedTuple):
    """A session an endpoint took: when it became due, its spans and its trace id
    (hex). Plain data: operations are pickled between processes."""

    session_id: str
    due_us: int
    spans: int
    trace_id: str


def start_endpoint(conn: Connection, endpoint_key: str, since_us: int) -> None:
    """The endpoint's row, exporting from ``since_us``; kept as it was if it has one
    (a restart resumes from the cursor)."""
    with conn.begin():
        conn.execute(
            backend_of(conn)
            .insert(otel_endpoints)
            .values(endpoint_key=endpoint_key, since_us=since_us)
            .on_conflict_do_nothing(index_elements=["endpoint_key"])
        )


def mark_exported(
    conn: Connection, endpoint_key: str, sessions: Sequence[Exported], exported_us: int
) -> None:
    """The sessions the endpoint took, in one transaction; a session marked before
    (sent again after a crash between the send and this) keeps its first row."""
    if not sessions:
        return
    rows = [
        {**s._asdict(), "endpoint_key": endpoint_key, "exported_us": exported_us} for s in sessions
    ]
    with conn.begin():
        conn.execute(
            backend_of(conn)
            .insert(otel_exports)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["endpoint_key", "session_id"])
        )
