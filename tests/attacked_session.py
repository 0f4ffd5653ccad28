"""A session recorded by the writer's own code for the attacks on issue 19's replay
and show: its frames a millisecond apart on one connection, the link's or a UI's."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from recorder.cli import cli
from recorder.pipeline.classifier import Classifier
from tests.helpers import writer_database

T0_US = 1_795_692_537_000_000
SID = "session_1795692537464_attacked"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


async def recorded(db: Path, frames: list[tuple[str, bytes]], role: str = "link") -> None:
    """``frames`` (direction, data), a millisecond apart on one connection (the link,
    or a UI's through the proxy), recorded by the writer's own code."""
    store_db, store, cid = await writer_database(f"sqlite:///{db}")
    if role != "link":
        address = "127.0.0.1:50000"
        cid = await store_db.run(store.open_connection, role, "ws://daemon", T0_US, address)
    rows = [
        (cid, i, d, T0_US + i * 1000, i * 1_000_000, True, data)
        for i, (d, data) in enumerate(frames, 1)
    ]
    classifier = Classifier()
    for start in range(0, len(rows), 500):
        batch, index = classifier.rows_and_index(rows[start : start + 500])
        await store_db.run(store.write_batch, batch, index)
    await store_db.shutdown()


def session_frame(kind: str, state: str) -> bytes:
    return json.dumps({"type": kind, "session": {"id": SID, "status": state}}).encode()
