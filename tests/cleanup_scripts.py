"""What the cleanup tests build on: recordings written from scripts of frames by the
writer's own code, cleanup configurations, and the real Cleanup run over them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from recorder.cleanup.jobs import Cleanup, Direct
from recorder.cli import cli
from recorder.config import Config, load_config
from recorder.db.connection import WriterDatabase
from recorder.db.migrations import upgrade_sync
from recorder.db.write import Store
from recorder.pipeline.classifier import Classifier

SECOND = 1_000_000
DAY = 86_400 * SECOND
# The most frames one batch of a script holds: the rest go in the next batch.
BATCH = 5000

# (received on the recorder's clock, direction, frame)
Script = Sequence[tuple[int, str, bytes]]


def status(sid: str, state: str, **times: str) -> bytes:
    session = {"id": sid, "status": state, **times}
    return json.dumps({"type": "session_status_update", "session": session}).encode()


def chunk(sid: str, text: str) -> bytes:
    return json.dumps({"type": "stream_chunk", "data": {"sessionId": sid, "chunk": text}}).encode()


def request(kind: str, sid: str, **payload: Any) -> bytes:
    return json.dumps({"type": kind, "payload": {"sessionId": sid, **payload}}).encode()


async def open_db(url: str, instance: str = "default") -> tuple[WriterDatabase, Store, int]:
    """A migrated database opened by the writer's own code, its Store for ``instance``,
    and the id of one link connection to record on. The caller shuts it down."""
    db = await WriterDatabase.open(url)
    await db.run(upgrade_sync)
    store = Store(db.dialect, instance)
    return db, store, await db.run(store.open_connection, "link", "ws://daemon", 1)


async def record(url: str, *scripts: Script, instance: str = "default") -> None:
    """Each script one batch of the writer's own code (or more, of BATCH frames at
    most), on one link connection, frames received at the given times. A frame that is
    not UTF-8 is recorded as a binary one."""
    db, store, cid = await open_db(url, instance)
    try:
        classifier = Classifier()
        seq = 0
        for script in scripts:
            frames = []
            for at, direction, data in script:
                seq += 1
                frames.append((cid, seq, direction, at, seq, _utf8(data), data))
            for start in range(0, len(frames), BATCH):
                rows, index = classifier.rows_and_index(frames[start : start + BATCH])
                await db.run(store.write_batch, rows, index)
    finally:
        await db.shutdown()


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def config_file(tmp_path: Path, db: Path, policies: str = "", storage: str = "") -> Path:
    """A configuration file for the SQLite file ``db``."""
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "sqlite:///{db}"\n{storage}\n{policies}')
    return path


def config_for(tmp_path: Path, url: str, policies: str = "", storage: str = "") -> Config:
    """The configuration for the database ``url``, loaded."""
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n{storage}\n{policies}')
    return load_config(path, env={})


def policy(name: str, action: str, when: str, **extra: Any) -> str:
    lines = [f'name = "{name}"', 'schedule = "every 1h"', f'action = "{action}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[[cleanup.policies]]\n" + "\n".join(lines) + f"\nwhen = {{ {when} }}\n"


def with_policies(config: Config, text: str) -> Config:
    """``config`` with policies added to its file, loaded again."""
    path = Path(config.source)
    path.write_text(path.read_text() + text)
    return load_config(path, env={})


async def run_policy(config: Config, name: str, link: Any = None) -> int:
    """Run one policy with the real Cleanup, operations run directly; its run's id."""
    db, store, _ = await open_db(config.storage.url, config.storage.instance)
    try:
        cleanup = Cleanup(config, Direct(db, store), link)
        return await cleanup.run(cleanup.policies[name])
    finally:
        await db.shutdown()


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def cli_json(*args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class Pausing(Direct):
    """Operations run directly; the chosen kind pauses after ``steps`` of it until
    :attr:`go` is set, as a run waits between two of its steps."""

    def __init__(self, db: Any, store: Any, kind: type[Any], steps: int) -> None:
        super().__init__(db, store)
        self.kind, self.left = kind, steps
        self.paused, self.go = asyncio.Event(), asyncio.Event()

    async def perform(self, operation: Any) -> Any:
        if isinstance(operation, self.kind):
            if self.left == 0:
                self.paused.set()
                await self.go.wait()
            self.left -= 1
        return await super().perform(operation)
