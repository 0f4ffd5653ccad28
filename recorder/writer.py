"""The writer: the one process that owns the database.

Producers (the daemon link, the proxy) put frames on a bounded queue and never
wait for the database unless the queue is full: then they wait, which stops them
reading their sockets and pushes back on the sender. A frame is never dropped.

The database work runs in two child processes, in a line: the classifier (JSON
parsing, ids, session index deltas) and, its child, the database process (SQLite
or PostgreSQL writes). Measured on a 2-core machine: on the event loop's thread
this work capped ingest near 40 k frames/s, because the GIL serialised it with
the sockets; in one child process, classification and SQLite still took turns on
the GIL. The service keeps the queue and the batching policy (a commit every
``commit_interval`` seconds or ``batch_size`` frames, whichever comes first) and
ships batches to the classifier over a socket pair; the answer for each batch
comes back the same way once it is committed. Every other database operation
(opening and closing connection rows, the active-session list) travels the same
line, in order, so the database process is the only writer, as in Home
Assistant's recorder thread.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import pickle
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from recorder.protocol import OPCODE_BINARY, OPCODE_TEXT, FrameTuple, IndexBatch, classify

if TYPE_CHECKING:
    from recorder.store import FrameRow, Store, WriterDatabase

log = structlog.get_logger("recorder.writer")

# Batches shipped before waiting for an answer: one being written, one being
# classified, one on the wire.
IN_FLIGHT = 3
_HEADER = struct.Struct("!Q")
# After a burst that filled whole batches, the rest is committed once no frame has
# arrived for this long, rather than up to commit_interval later: the burst is
# over, and the disk is already busy with it. Below batch_size frames per
# commit_interval this never applies, and commits stay one per interval.
BURST_END_QUIET = 0.01


class WriterError(Exception):
    """The writer process failed to start, or died."""


class FrameQueue:
    """A FIFO bounded both in frames and in bytes (frames of several MiB happen)."""

    def __init__(self, max_frames: int, max_bytes: int, batch_size: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self._items: deque[FrameTuple] = deque()
        self._bytes = 0
        self.enqueued = 0
        # When the oldest waiting frame arrived (loop time); the commit deadline runs from it.
        self.oldest_at = 0.0
        self.not_empty = asyncio.Event()
        self.batch_ready = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.waits = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def newest_at(self) -> float:
        """When the newest waiting frame arrived (loop time), or 0 when empty."""
        return self._items[-1][4] / 1e9 if self._items else 0.0  # monotonic_ns

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_frames or (
            self._bytes >= self.max_bytes and bool(self._items)
        )

    async def put(self, frame: FrameTuple) -> None:
        while self.full:
            self.waits += 1
            self._not_full.clear()
            await self._not_full.wait()
        self.put_nowait(frame)

    def put_nowait(self, frame: FrameTuple) -> None:
        """Append without checking the bound: for callers that checked :attr:`full`."""
        if not self._items:
            self.oldest_at = asyncio.get_running_loop().time()
            self.not_empty.set()
        self._items.append(frame)
        self._bytes += len(frame[6])  # data
        self.enqueued += 1
        if len(self._items) >= self.batch_size or self.full:
            # A full queue means producers are about to wait: commit now, not later.
            self.batch_ready.set()

    def take(self, n: int) -> list[FrameTuple]:
        items = self._items
        batch = [items.popleft() for _ in range(min(n, len(items)))]
        self._bytes -= sum(len(f[6]) for f in batch)
        if items:
            # The new head's receive time (time.monotonic_ns, the loop's clock too).
            self.oldest_at = items[0][4] / 1e9  # monotonic_ns
        else:
            self.not_empty.clear()
        if len(items) < self.batch_size and not self.full:
            self.batch_ready.clear()
        if not self.full:
            self._not_full.set()
        return batch


def rows_and_index(batch: Sequence[Sequence[Any]]) -> tuple[list[FrameRow], IndexBatch]:
    """Classify a batch: the rows to insert and what they say about sessions and tasks."""
    rows: list[FrameRow] = []
    index = IndexBatch()
    append = rows.append
    add = index.add
    for frame in batch:
        cid, seq, direction, received, mono, is_text, data = frame
        info = classify(data, is_text)
        text = info.text
        append(
            (
                cid,
                seq,
                direction,
                received,
                mono,
                OPCODE_TEXT if is_text else OPCODE_BINARY,
                len(data),
                info.type,
                info.session_id,
                info.task_id,
                info.parse_error,
                text,
                None if text is not None else data,
            )
        )
        add(frame, info)
    return rows, index


# --- wire format between the two processes -----------------------------------------


async def _send(stream: asyncio.StreamWriter, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    await stream.drain()


async def _receive(stream: asyncio.StreamReader) -> Any:
    """The next message, or None when the other side has gone."""
    try:
        (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
        return pickle.loads(await stream.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


# --- parent side ----------------------------------------------------------------


class Writer:
    """The parent's handle on the writer process; the only way to the database."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 2000,
        commit_interval: float = 1.0,
        queue_max_frames: int = 20000,
        queue_max_bytes: int = 64 * 1024 * 1024,
        log_level: str = "info",
        log_format: str = "json",
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self.queue = FrameQueue(queue_max_frames, queue_max_bytes, batch_size)
        self.committed = 0
        self.commits = 0
        self._log = (log_level, log_format)
        self._hurry = asyncio.Event()
        self._stopping = False
        # The last batch shipped was full: frames are arriving faster than batch_size
        # per commit_interval.
        self._bursting = False
        self._progress = asyncio.Condition()
        self._flush_targets = 0
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._process: Any = None
        self._stream: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._died: str | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> tuple[str | None, str | None]:
        """Start the writer processes; they migrate the database. Returns (before, after) revisions."""
        self._process, reader, self._stream = await _spawn("classifier_entry")
        await _send(self._stream, (self.url, self._log))
        hello = await _receive(reader)
        if not isinstance(hello, tuple) or hello[0] != "ready":
            self._stream.close()
            await self._reap()
            detail = hello[1] if isinstance(hello, tuple) and len(hello) > 1 else "it exited"
            raise WriterError(f"database writer did not start: {detail}")
        self._reader_task = asyncio.create_task(self._read_answers(reader), name="writer-answers")
        return hello[1], hello[2]

    async def close(self) -> None:
        """Stop the writer processes (after :meth:`run` has drained the queue)."""
        if self._stream is not None and self._died is None:
            try:
                await self._call("stop")
            except WriterError:
                pass
        if self._stream is not None:
            self._stream.close()
        if self._reader_task is not None:
            await self._reader_task
        await self._reap()

    async def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            log.error("writer process did not exit; killing it", pid=process.pid)
            process.kill()
            await process.wait()

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        while True:
            answer = await _receive(reader)
            if answer is None:
                break
            rid, ok, result = answer
            future = self._waiting.pop(rid, None)
            if future is not None and not future.done():
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(WriterError(result))
        self._died = self._died or "the writer process exited"
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(WriterError(self._died))
        self._waiting.clear()
        async with self._progress:
            self._progress.notify_all()

    async def _call(self, kind: str, payload: object = None) -> Any:
        if self._died is not None or self._stream is None:
            raise WriterError(self._died or "the writer is not running")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        async with self._send_lock:
            await _send(self._stream, (kind, rid, payload))
        # Shielded: a cancelled caller must not lose the answer's bookkeeping.
        result = await asyncio.shield(future)
        self.commits += 1
        async with self._progress:
            self._progress.notify_all()
        return result

    # --- producer side -----------------------------------------------------------

    async def put(self, frame: FrameTuple) -> None:
        await self.queue.put(frame)

    async def flush(self) -> None:
        """Return once every frame put before this call is committed."""
        target = self.queue.enqueued
        if self.committed >= target:
            return
        self._flush_targets += 1
        self._hurry.set()
        try:
            async with self._progress:
                await self._progress.wait_for(
                    lambda: self.committed >= target or self._died is not None
                )
        finally:
            self._flush_targets -= 1
        if self._died is not None and self.committed < target:
            raise WriterError(self._died)

    async def wait_commit(self) -> None:
        """Return after the next commit (for tests and tools that watch progress)."""
        seen = self.commits
        async with self._progress:
            await self._progress.wait_for(lambda: self.commits > seen or self._died is not None)

    async def open_connection(self, role: str, url: str, client_addr: str | None = None) -> int:
        result: int = await self._call("open", (role, url, now_us(), client_addr))
        return result

    async def close_connection(
        self,
        connection_id: int,
        *,
        code: int | None = None,
        reason: str | None = None,
        closed_by: str | None = None,
        error: str | None = None,
    ) -> None:
        closed = now_us()
        await self.flush()
        await self._call("close", (connection_id, closed, code, reason, closed_by, error))

    async def active_session_ids(self) -> list[str]:
        await self.flush()
        result: list[str] = await self._call("active")
        return result

    async def close_dangling(self) -> int:
        result: int = await self._call("dangling", now_us())
        return result

    def stop(self) -> None:
        """Ask :meth:`run` to drain the queue and return."""
        self._stopping = True
        self._hurry.set()
        self.queue.not_empty.set()

    # --- the shipping task -------------------------------------------------------

    async def run(self) -> None:
        queue = self.queue
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not queue:
                    if self._stopping:
                        break
                    # stop() sets this too, to wake an idle writer.
                    await queue.not_empty.wait()
                    continue
                await self._wait_for_batch()
                await self._in_flight.acquire()
                self._bursting = len(queue) >= self.batch_size
                batch = queue.take(self.batch_size)
                task = asyncio.create_task(self._ship(batch))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if self._died is not None:
                    raise WriterError(self._died)
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._died is not None:
            raise WriterError(self._died)

    async def _ship(self, batch: list[FrameTuple]) -> None:
        try:
            await self._call("batch", batch)
            self.committed += len(batch)
            async with self._progress:
                self._progress.notify_all()
        finally:
            self._in_flight.release()

    async def _wait_for_batch(self) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()
        deadline = queue.oldest_at + self.commit_interval
        while not queue.batch_ready.is_set() and not self._stopping and not self._flush_targets:
            until = deadline
            if self._bursting:
                until = min(deadline, queue.newest_at + BURST_END_QUIET)
            remaining = until - loop.time()
            if remaining <= 0:
                return
            ready = asyncio.ensure_future(queue.batch_ready.wait())
            hurry = asyncio.ensure_future(self._hurry.wait())
            try:
                await asyncio.wait(
                    (ready, hurry), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ready.cancel()
                hurry.cancel()
            self._hurry.clear()


# --- child side -------------------------------------------------------------------


# The settings every child process gets first: (database URL, (log level, log format)).
Settings = tuple[str, tuple[str, str]]
ChildMain = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Settings], Awaitable[None]]


def classifier_entry() -> None:
    """The classifier process, the service's child: ``python -c ... <socket fd>``."""
    _run_child(_classifier)


def database_entry() -> None:
    """The database process, the classifier's child."""
    _run_child(_database)


def migration_entry() -> None:
    """A short-lived process that migrates the database, the database process's child."""
    _run_child(_migration)


def _run_child(main: ChildMain) -> None:
    """A child's life: ignore stop signals, read its settings, configure logging, run."""
    # The service decides when to stop (after draining); systemd's SIGTERM to the
    # whole control group, or Ctrl-C in a terminal, must not kill these first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))

    async def child() -> None:
        reader, stream = await asyncio.open_connection(sock=sock)
        settings = await _receive(reader)
        if settings is None:
            return
        from recorder import logs

        logs.configure(*settings[1])
        await main(reader, stream, settings)

    asyncio.run(child())


async def _spawn(entry: str) -> tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]:
    """A Python child process running ``recorder.writer.<entry>``, and a socket to it."""
    ours, theirs = socket.socketpair()
    # A plain child process (no multiprocessing: its resource tracker would be one
    # more); the database URL travels over the socket, never in argv.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"from recorder.writer import {entry}; {entry}()",
        str(theirs.fileno()),
        pass_fds=(theirs.fileno(),),
        stdin=asyncio.subprocess.DEVNULL,
    )
    theirs.close()
    reader, stream = await asyncio.open_connection(sock=ours)
    return process, reader, stream


async def _classifier(
    parent_in: asyncio.StreamReader, parent_out: asyncio.StreamWriter, settings: Settings
) -> None:
    """Classify batches on their way to the database process; relay everything else.

    Classification (JSON parsing, id extraction, index deltas) and SQLite's work
    are each about half of the writer's CPU per frame. In one process the GIL let
    only one of them run at a time, whatever the threads (measured: a database
    thread beside a classifying one gained nothing). Two processes use two cores.
    Messages keep their order, so a connection is closed after its frames are in.
    """
    process, db_in, db_out = await _spawn("database_entry")
    await _send(db_out, settings)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)

    async def upward() -> None:
        # Answers, and the database's hello, go back to the parent as they are.
        while (answer := await _receive(db_in)) is not None:
            await _send(parent_out, answer)
        parent_out.close()

    answers = asyncio.create_task(upward())
    try:
        while (message := await _receive(parent_in)) is not None:
            kind, rid, payload = message
            if kind == "batch":
                message = (kind, rid, rows_and_index(payload))
            await _send(db_out, message)
    except ConnectionError:
        pass  # the database process is gone; upward() tells the parent
    finally:
        db_out.close()
        await answers
        await process.wait()


async def _migration(
    reader: asyncio.StreamReader, stream: asyncio.StreamWriter, settings: Settings
) -> None:
    # Alembic and its templates are about 10 MB that the database process, which
    # runs for months, would otherwise keep for a few milliseconds of use.
    from recorder.store import WriterDatabase, prepare_sqlite_file, upgrade_sync

    url = settings[0]
    try:
        prepare_sqlite_file(url)
        db = await WriterDatabase.open(url)
        try:
            before, after = await db.run(upgrade_sync)
        finally:
            await db.shutdown()
    except Exception as exc:
        await _send(stream, ("failed", _one_line(exc)))
    else:
        await _send(stream, ("ready", before, after))
    stream.close()


async def _migrate(settings: Settings) -> Any:
    """Run the migration process; its answer: ("ready", before, after) or ("failed", why)."""
    process, reader, stream = await _spawn("migration_entry")
    await _send(stream, settings)
    answer = await _receive(reader)
    stream.close()
    await process.wait()
    return answer if answer is not None else ("failed", "the migration process exited")


async def _database(
    reader: asyncio.StreamReader, stream: asyncio.StreamWriter, settings: Settings
) -> None:
    from recorder.store import Store, WriterDatabase

    url = settings[0]
    migrated = await _migrate(settings)
    if migrated[0] != "ready":
        await _send(stream, migrated)
        stream.close()
        return
    _, before, after = migrated
    try:
        db = await WriterDatabase.open(url)
        store = Store(db.dialect)
    except Exception as exc:
        await _send(stream, ("failed", _one_line(exc)))
        stream.close()
        return
    # Everything allocated so far lives for the whole run; keep the collector off it,
    # and let the young generation grow: each batch makes thousands of short-lived objects.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    await _send(stream, ("ready", before, after))
    # While one batch is written (on SQLite's thread, mostly without the GIL), the
    # next one is read off the socket and unpickled.
    writing: asyncio.Task[None] | None = None

    async def write_and_answer(rid: int, rows: list[FrameRow], index: IndexBatch) -> None:
        try:
            await _write_rows(db, store, rows, index)
        except Exception as exc:
            await _send(stream, (rid, False, _one_line(exc)))
        else:
            await _send(stream, (rid, True, None))

    try:
        while (message := await _receive(reader)) is not None:
            kind, rid, payload = message
            if writing is not None:
                await writing  # one transaction at a time, in order
                writing = None
            if kind == "batch":
                rows, index = payload
                writing = asyncio.create_task(write_and_answer(rid, rows, index))
                continue
            try:
                result = await _handle(db, store, kind, payload)
            except Exception as exc:
                log.exception("writer operation failed", operation=kind)
                await _send(stream, (rid, False, _one_line(exc)))
                continue
            await _send(stream, (rid, True, result))
            if kind == "stop":
                break
        if writing is not None:
            await writing
    finally:
        await db.shutdown()
        stream.close()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


async def _handle(db: WriterDatabase, store: Store, kind: str, payload: Any) -> Any:
    if kind == "open":
        role, url, opened, client_addr = payload
        return await db.run(store.open_connection, role, url, opened, client_addr)
    if kind == "close":
        cid, closed, code, reason, closed_by, error = payload
        await db.run(
            partial(
                store.close_connection, code=code, reason=reason, closed_by=closed_by, error=error
            ),
            cid,
            closed,
        )
        return None
    if kind == "active":
        return await db.run(store.active_session_ids)
    if kind == "dangling":
        return await db.run(store.close_dangling, payload)
    if kind == "stop":
        return None
    raise ValueError(f"unknown writer operation {kind!r}")


async def _write_rows(
    db: WriterDatabase, store: Store, rows: list[FrameRow], index: IndexBatch
) -> None:
    delay = 0.5
    while True:
        try:
            await db.run(store.write_batch, rows, index)
        except Exception as exc:
            # Keep the batch and retry: the parent's queue fills meanwhile and pushes
            # back on the sockets, so nothing is dropped while the database is away.
            log.error(
                "database write failed; retrying",
                error=str(exc),
                frames=len(rows),
                retry_in=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            try:
                await db.reopen()
            except Exception:
                pass  # the next attempt fails and waits again
        else:
            db.wrote(rows)
            return


def now_us() -> int:
    return time.time_ns() // 1000
