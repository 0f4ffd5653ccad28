"""The writer's child processes: classifier, database, and a short-lived migration.

They stand in a line, service -> classifier -> database, and answers come back
the same way, so order is kept and the database process is the only writer.
Classification (JSON parsing, id extraction, index deltas) and SQLite's work are
each about half of the writer's CPU per frame; in one process the GIL let only
one of them run at a time, whatever the threads (measured: a database thread
beside a classifying one gained nothing). Two processes use two cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
from typing import TYPE_CHECKING, Literal

import structlog

from recorder.pipeline.channel import (
    Failed,
    Ready,
    Settings,
    one_line,
    receive,
    run_child,
    send,
    spawn,
)
from recorder.pipeline.classifier import Classifier
from recorder.pipeline.faults import short_error
from recorder.pipeline.ops import Operation, Ping, WriteRows, write_together

if TYPE_CHECKING:
    from recorder.alerts.rules import Rules
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store

log = structlog.get_logger("recorder.pipeline")

# At most this many queued batches in one transaction: what a busy database gains by
# writing them together (one COPY, one commit), without one transaction holding
# everything in flight (writer.IN_FLIGHT).
WRITE_TOGETHER = 4


def classifier_entry() -> None:
    """The classifier process, the service's child."""
    run_child(_classifier)


def database_entry() -> None:
    """The database process, the classifier's child."""
    run_child(_database)


def migration_entry() -> None:
    """A short-lived process that migrates the database, the database process's child."""
    run_child(_migration)


def _settle_gc() -> None:
    # Everything allocated so far lives for the whole run: keep the collector off
    # it, and let the young generation grow, since each batch makes thousands of
    # short-lived objects.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def _classifier(
    parent_in: asyncio.StreamReader, parent_out: asyncio.StreamWriter, settings: Settings
) -> None:
    """Prepare operations on their way to the database process; relay the answers back."""
    process, db_in, db_out = await spawn("database_entry")
    await send(db_out, settings)
    classifier = Classifier(_rules(settings))
    _settle_gc()

    async def upward() -> None:
        # Answers, and the database's hello, go back to the parent as they are.
        while (answer := await receive(db_in)) is not None:
            await send(parent_out, answer)
        parent_out.close()

    answers = asyncio.create_task(upward())
    try:
        while (message := await receive(parent_in)) is not None:
            rid, operation = message
            await send(db_out, (rid, operation.prepared(classifier)))
    except ConnectionError:
        pass  # the database process is gone; upward() tells the parent
    finally:
        db_out.close()
        await answers
        await process.wait()


def _rules(settings: Settings) -> Rules | None:
    """The frame rules of the configuration, or None when it has none (nothing is
    evaluated per frame then)."""
    alerts = settings.alerts
    if alerts is None or not any(not rule.condition for rule in alerts.rules):
        return None
    from recorder.alerts.rules import Rules

    return Rules.from_config(alerts)


async def _migration(
    reader: asyncio.StreamReader, stream: asyncio.StreamWriter, settings: Settings
) -> None:
    # Alembic and its templates are about 10 MB that the database process, which
    # runs for months, would otherwise keep for a few milliseconds of use.
    from recorder.db.backend import backend
    from recorder.db.integrity import (
        NotADatabase,
        broken,
        check_replaceable,
        quick_check,
        set_aside,
    )
    from recorder.db.migrations import NewerSchema, upgrade_sync

    database = backend(settings.url)

    async def migrate() -> Ready:
        database.prepare()
        db = await database.open_writer()
        try:
            return Ready(*await db.run(upgrade_sync))
        finally:
            await db.shutdown()

    hello: Ready | Failed
    # A file can be checked, and set aside when it is broken; a server cannot.
    path = database.path
    try:
        if path is not None and settings.unclean:
            problem = quick_check(path)
            if problem is not None:
                set_aside(path, problem)
        try:
            hello = await migrate()
        except Exception as exc:
            if path is None or not broken(exc):
                raise
            check_replaceable(path, settings.used_before)
            set_aside(path, str(exc))
            hello = await migrate()
    except (NotADatabase, NewerSchema) as exc:
        hello = Failed(str(exc), config_error=True)
    except Exception as exc:
        hello = Failed(one_line(exc))
    await send(stream, hello)
    stream.close()


async def _migrate(settings: Settings) -> Ready | Failed:
    """Run the migration process and return its answer."""
    process, reader, stream = await spawn("migration_entry")
    await send(stream, settings)
    answer = await receive(reader)
    stream.close()
    await process.wait()
    return answer if isinstance(answer, Ready | Failed) else Failed("the migration process exited")


async def _database(
    reader: asyncio.StreamReader, stream: asyncio.StreamWriter, settings: Settings
) -> None:
    """Run each operation in order, one transaction at a time, and answer it."""
    opened = await _open_database(stream, settings)
    if opened is None:
        return
    db, store = opened
    runner = _InOrder(db, store, stream)
    worker = asyncio.create_task(runner.run())
    try:
        while not worker.done() and (message := await receive(reader)) is not None:
            rid, operation = message
            if isinstance(operation, Ping):
                await send(stream, (rid, True, None))
                continue
            runner.todo.put_nowait((rid, operation))
            if operation.last:
                break
        runner.todo.put_nowait(None)
        await worker  # what was read is still run (and its error, if any, raised)
    finally:
        worker.cancel()
        await db.shutdown()
        stream.close()


async def _open_database(
    stream: asyncio.StreamWriter, settings: Settings
) -> tuple[WriterDatabase, Store] | None:
    """Migrate (in a process of its own) and open the database, and say hello up the
    line; None when that failed (the hello said why, and the stream is closed)."""
    # Here, not at the top: the classifier process imports this module too, and has
    # no use for the database's modules.
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store

    migrated = await _migrate(settings)
    if isinstance(migrated, Failed):
        await send(stream, migrated)
        stream.close()
        return None
    try:
        db = await WriterDatabase.open(settings.url)
        store = Store(db.dialect, settings.instance)
    except Exception as exc:
        await send(stream, Failed(one_line(exc)))
        stream.close()
        return None
    _settle_gc()
    await send(stream, dataclasses.replace(migrated, pid=os.getpid()))
    return db, store


class _InOrder:
    """The database process's operations, run one at a time, in order, and answered.

    The socket is read all the while (the next batch is unpickled while one is
    written) and operations wait in :attr:`todo`, so a Ping is answered as soon as it
    arrives, even behind a write that waits for a full disk or a locked database:
    this process is alive and reading, which is what the watchdog asks. The service
    bounds what is in flight (writer.IN_FLIGHT batches; every other operation is
    awaited by its caller), so the queue stays small.
    """

    def __init__(self, db: WriterDatabase, store: Store, stream: asyncio.StreamWriter) -> None:
        self.db = db
        self.store = store
        self.stream = stream
        # None: nothing more will come.
        self.todo: asyncio.Queue[tuple[int, Operation[object]] | None] = asyncio.Queue()

    async def run(self) -> None:
        """Until the None in :attr:`todo`."""
        held: tuple[int, Operation[object]] | Literal[False] | None = False
        while True:
            item = await self.todo.get() if held is False else held
            held = False
            if item is None:
                return
            rid, operation = item
            if not isinstance(operation, WriteRows):
                await self._answer(rid, operation)
                continue
            # Batches that queued up while the last one was written go in together.
            group = [(rid, operation)]
            while not self.todo.empty() and len(group) < WRITE_TOGETHER:
                following = self.todo.get_nowait()
                if following is None or not isinstance(following[1], WriteRows):
                    held = following  # in order: after this group
                    break
                group.append((following[0], following[1]))
            await self._answer_together(group)

    async def _answer(self, rid: int, operation: Operation[object]) -> None:
        try:
            result = await operation.run(self.db, self.store)
        except Exception as exc:
            # One short line: a traceback would carry SQLAlchemy's [SQL] and
            # [parameters] lines, which are frame data.
            log.error(
                "writer operation failed",
                operation=type(operation).__name__,
                error=short_error(exc),
            )
            await send(self.stream, (rid, False, one_line(exc)))
        else:
            await send(self.stream, (rid, True, result))

    async def _answer_together(self, group: list[tuple[int, WriteRows]]) -> None:
        try:
            results = await write_together(self.db, self.store, [op for _, op in group])
        except Exception as exc:
            log.error("writer operation failed", operation="WriteRows", error=short_error(exc))
            for rid, _ in group:
                await send(self.stream, (rid, False, one_line(exc)))
        else:
            for (rid, _), result in zip(group, results, strict=True):
                await send(self.stream, (rid, True, result))
