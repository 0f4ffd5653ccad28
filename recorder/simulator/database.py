"""Recorded databases made without sockets: millions of frames in a minute or two, for
the benchmarks (``bench/``) and the tests that need a large recording.

:func:`build` writes the recording :mod:`recorder.simulator.recording` lays out (the
simulator's frames and a UI's, in time order) along the recorder's own write path,
split as the recorder splits it: the database is created and migrated as its
migration process does it; a child process, as the classifier process does, turns
the frames into operations (:mod:`recorder.pipeline.ops`: connections opened and
closed, ``WriteFrames`` prepared by the :class:`~recorder.pipeline.classifier.Classifier`);
this process, as the database process does, runs them with the writer's
:class:`~recorder.db.write.Store` on the backend's writer connection, each batch
classified while the one before it is written. So the rows, the indexes, the rollups
(``sessions``, ``tasks``, ``connections.frame_count``, ``frame_days``) and the file's
settings are the recorder's own, on SQLite or PostgreSQL; only the sockets and the
clock are not (every frame's time is laid out by its plan).

    from recorder.simulator.database import build, spread
    build("/tmp/big.db", spread(frames=1_000_000, sessions=2_000, days=6))
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.db.urls import database_url, url_of_argument
from recorder.pipeline.ops import CloseConnection, OpenConnection, Operation, WriteFrames
from recorder.protocol.frames import FrameTuple
from recorder.simulator.recording import (
    DAEMON_URL,
    EPOCH_US,
    MONO0_NS,
    SessionPlan,
    events,
    firehose,
    spread,
)

if TYPE_CHECKING:
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store

__all__ = ["EPOCH_US", "Built", "SessionPlan", "build", "firehose", "spread"]

# Frames per batch: what the writer's batching sends under a firehose.
BATCH_FRAMES = 2000
# Speed, measured on 2 shared cores: conversations at 23 000-36 000 frames/s (the
# classifier, with the frames' making, and the writer's Store each take about 20 us a
# frame, in the two processes), the firehose at 80 000-125 000. Copying rows with SQL,
# as bench/query.py did, ran at about 110 000 frames/s, but wrote the rows and rollups
# its own way, which is what this module replaces; its largest use, 5 000 000 frames
# for bench/query.py, takes 2.5-4 minutes once (the benchmark keeps what it builds
# until the writer's code changes). So there is no faster path beside this one.

# What travels from the classifying child: operations to run in order, each with the
# connection id an OpenConnection must get (None for the others).
Ops = list[tuple[Operation[Any], int | None]]


@dataclass(frozen=True, slots=True)
class Built:
    """What :func:`build` wrote: the frames, the sessions' ids (in the plans' order),
    the seconds it took and where they went (``migrate``, ``frames``)."""

    frames: int
    sessions: tuple[str, ...]
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)


def build(target: str | Path, plans: Sequence[SessionPlan], *, seed: int = 1) -> Built:
    """Record ``plans`` into ``target`` (a SQLite file's path, or a database URL): a new
    database, or a migrated one with no connection yet. The same ``seed``, the same
    sessions and frames. With no plans, the database is only created and migrated."""
    url = database_url(url_of_argument(str(target)), Path.cwd())
    began = time.monotonic()
    asyncio.run(_migrate(url))
    migrated = time.monotonic()
    frames = 0
    ids: list[str] = []
    if plans:
        # Forked, not spawned: a spawned child imports the caller's main module again
        # (a benchmark script, or stdin). Nothing runs here yet to be copied: the
        # migration's connection and threads have ended.
        context = multiprocessing.get_context("fork")
        inbox, outbox = context.Pipe(duplex=False)
        child = context.Process(target=_classify, args=(list(plans), seed, outbox), daemon=True)
        child.start()
        outbox.close()
        try:
            frames, ids = asyncio.run(_write(url, inbox))
        finally:
            inbox.close()
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    done = time.monotonic()
    steps = {"migrate": round(migrated - began, 1), "frames": round(done - migrated, 1)}
    return Built(frames, tuple(ids), round(done - began, 1), steps)


async def _migrate(url: str) -> None:
    """As the recorder's migration process does it (recorder/pipeline/processes.py)."""
    from recorder.db.backend import backend
    from recorder.db.migrations import upgrade_sync

    database = backend(url)
    database.prepare()
    db = await database.open_writer()
    try:
        await db.run(upgrade_sync)
    finally:
        await db.shutdown()


# --- the child: from frames to operations, as the classifier process ---------------------


def _classify(plans: list[SessionPlan], seed: int, outbox: Connection) -> None:
    """The child's whole life: every message is ("ids", session ids), then ("ops",
    :data:`Ops`)..., then ("done", frames); or ("error", a traceback)."""
    try:
        ids, recording = events(plans, seed)
        outbox.send(("ids", ids))
        batcher = _Batcher(outbox)
        for at, _, _, action in recording:
            batcher.handle(at, action)
        batcher.flush()
        outbox.send(("done", batcher.frames))
    except BaseException:
        outbox.send(("error", traceback.format_exc()))
    finally:
        outbox.close()


class _Batcher:
    """Frames into batches of :data:`BATCH_FRAMES`, each sent classified between the
    connections opened before it and those closed after it (the classifier forgets a
    connection as it closes). Connection ids are given in the order the connections
    open, as the database gives them on a database with none yet."""

    def __init__(self, outbox: Connection) -> None:
        from recorder.pipeline.classifier import Classifier

        self.outbox, self.classifier = outbox, Classifier()
        self.connections: dict[int, int] = {}  # a session's index (-1: the link) -> id
        self.seqs: dict[int, int] = {}
        self.batch: list[FrameTuple] = []
        self.opened: Ops = []
        self.closing: list[CloseConnection] = []
        self.frames = 0

    def handle(self, at: int, action: tuple[Any, ...]) -> None:
        if action[0] == "frame":
            _, key, direction, text = action
            cid = self.connections[key]
            seq = self.seqs[cid] = self.seqs[cid] + 1
            mono = MONO0_NS + (at - EPOCH_US) * 1000
            self.batch.append((cid, seq, direction, at, mono, True, text.encode()))
            if len(self.batch) >= BATCH_FRAMES:
                self.flush()
        elif action[0] == "open":
            _, role, key = action
            cid = self.connections[key] = len(self.seqs) + 1
            self.seqs[cid] = 0
            addr = None if role == "link" else f"127.0.0.1:{32768 + (key * 7919) % 28000}"
            url = DAEMON_URL if role == "link" else f"{DAEMON_URL}/"
            self.opened.append((OpenConnection(role, url, at, addr), cid))
        else:
            key = action[1]
            code, by = (1001, "local") if key == -1 else (1000, "client")
            cid = self.connections.pop(key)
            self.closing.append(CloseConnection(cid, at, code, None, by, None))

    def flush(self) -> None:
        ops = self.opened
        ops.append((WriteFrames(self.batch).prepared(self.classifier), None))
        ops += [(close.prepared(self.classifier), None) for close in self.closing]
        self.outbox.send(("ops", ops))
        self.frames += len(self.batch)
        self.batch, self.opened, self.closing = [], [], []


# --- this process: the operations run, as the database process ---------------------------


async def _write(url: str, inbox: Connection) -> tuple[int, list[str]]:
    """Run the child's operations in order; returns (frames, session ids)."""
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store

    loop = asyncio.get_running_loop()
    db = await WriterDatabase.open(url)
    writing: asyncio.Task[None] | None = None
    try:
        store = Store(db.dialect)
        ids: list[str] = []
        while True:
            # Received (and unpickled) while the batch before is being written.
            try:
                kind, body = await loop.run_in_executor(None, inbox.recv)
            except EOFError:
                raise RuntimeError("the child building the recording died") from None
            if kind == "error":
                raise RuntimeError(f"building the recording failed in its child:\n{body}")
            if writing is not None:
                await writing
                writing = None
            if kind == "ids":
                ids = body
            elif kind == "done":
                return int(body), ids
            else:
                writing = asyncio.ensure_future(_run(db, store, body))
    finally:
        if writing is not None:  # failed elsewhere: what it raised, if anything, is moot
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
        await db.shutdown()


async def _run(db: WriterDatabase, store: Store, ops: Ops) -> None:
    for op, expected in ops:
        got = await op.run(db, store)
        if expected is not None and got != expected:
            raise ValueError(f"connection {got}, not {expected}: the database held connections")
