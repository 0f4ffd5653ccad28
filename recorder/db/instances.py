"""Each recorder's row in ``instances`` (storage.instance): its heartbeat and state,
which `recorder status` reads. Whether it runs comes from its lock
(:mod:`recorder.db.locks`)."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from recorder.db.backend import backend_of
from recorder.db.schema import instances


def heartbeat(
    conn: Connection, name: str, pid: int, host: str, started_us: int, at_us: int, state: str
) -> None:
    row = {
        "name": name,
        "pid": pid,
        "host": host,
        "started_us": started_us,
        "heartbeat_us": at_us,
        "state": state,
    }
    insert = backend_of(conn).insert(instances)
    with conn.begin():
        conn.execute(
            insert.values(**row).on_conflict_do_update(
                index_elements=["name"], set_={k: v for k, v in row.items() if k != "name"}
            )
        )
