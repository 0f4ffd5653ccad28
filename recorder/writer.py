"""The one task that owns the database.

Producers (the daemon link, later the proxy) put frames on a bounded queue and
never wait for the database unless the queue is full: then they wait, which stops
them reading their sockets and pushes back on the sender. A frame is never
dropped. The writer takes batches off the queue, classifies them, and commits
every ``commit_interval`` seconds or ``batch_size`` frames, whichever comes first.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from recorder.protocol import Frame, IndexBatch, classify
from recorder.schema import OPCODE_BINARY, OPCODE_TEXT
from recorder.store import FrameRow, Store

log = structlog.get_logger("recorder.writer")

T = TypeVar("T")

# Parsing a frame this large would stall the event loop (and the proxy) for too long.
PARSE_IN_THREAD_BYTES = 256 * 1024
# Yield to the event loop this often while classifying a batch.
YIELD_EVERY = 256


class FrameQueue:
    """A FIFO bounded both in frames and in bytes (frames of several MiB happen)."""

    def __init__(self, max_frames: int, max_bytes: int, batch_size: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self._items: deque[Frame] = deque()
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
    def full(self) -> bool:
        return len(self._items) >= self.max_frames or (
            self._bytes >= self.max_bytes and bool(self._items)
        )

    async def put(self, frame: Frame) -> None:
        while self.full:
            self.waits += 1
            self._not_full.clear()
            await self._not_full.wait()
        if not self._items:
            self.oldest_at = asyncio.get_running_loop().time()
            self.not_empty.set()
        self._items.append(frame)
        self._bytes += len(frame.data)
        self.enqueued += 1
        if len(self._items) >= self.batch_size or self.full:
            # A full queue means producers are about to wait: commit now, not later.
            self.batch_ready.set()

    def take(self, n: int) -> list[Frame]:
        items = self._items
        batch = [items.popleft() for _ in range(min(n, len(items)))]
        self._bytes -= sum(len(f.data) for f in batch)
        if items:
            # We don't know when the new head arrived; "now" errs on the late side.
            self.oldest_at = asyncio.get_running_loop().time()
        else:
            self.not_empty.clear()
        if len(items) < self.batch_size and not self.full:
            self.batch_ready.clear()
        if not self.full:
            self._not_full.set()
        return batch


def to_row(frame: Frame, info: Any) -> FrameRow:
    return (
        frame.connection_id,
        frame.seq,
        frame.direction,
        frame.received_us,
        frame.monotonic_ns,
        OPCODE_TEXT if frame.is_text else OPCODE_BINARY,
        len(frame.data),
        info.type,
        info.session_id,
        info.task_id,
        info.parse_error,
        info.text,
        None if info.text is not None else frame.data,
    )


class Writer:
    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 2000,
        commit_interval: float = 1.0,
        queue_max_frames: int = 20000,
        queue_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self.queue = FrameQueue(queue_max_frames, queue_max_bytes, batch_size)
        self.committed = 0
        self.commits = 0
        self._lock = asyncio.Lock()
        self._hurry = asyncio.Event()
        self._stopping = False
        self._progress = asyncio.Condition()
        self._flush_targets = 0

    # --- producer side -----------------------------------------------------------

    async def put(self, frame: Frame) -> None:
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
                await self._progress.wait_for(lambda: self.committed >= target)
        finally:
            self._flush_targets -= 1

    async def wait_commit(self) -> None:
        """Return after the next commit (for tests and tools that watch progress)."""
        seen = self.commits
        async with self._progress:
            await self._progress.wait_for(lambda: self.commits > seen)

    async def _exclusive(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one store operation under the lock, immune to the caller's cancellation.

        A cancelled caller (a connection's helper task, say) must not leave the
        shared database connection half-way through a transaction.
        """

        async def locked() -> T:
            async with self._lock:
                result = await op()
            # Every store operation ends in a commit; watchers re-check after each.
            self.commits += 1
            async with self._progress:
                self._progress.notify_all()
            return result

        return await asyncio.shield(asyncio.ensure_future(locked()))

    async def open_connection(self, role: str, url: str, client_addr: str | None = None) -> int:
        opened = now_us()
        return await self._exclusive(
            lambda: self.store.open_connection(role, url, opened, client_addr)
        )

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
        await self._exclusive(
            lambda: self.store.close_connection(
                connection_id, closed, code=code, reason=reason, closed_by=closed_by, error=error
            )
        )

    async def active_session_ids(self) -> list[str]:
        await self.flush()
        return await self._exclusive(self.store.active_session_ids)

    def stop(self) -> None:
        """Ask the writer to drain the queue and return from :meth:`run`."""
        self._stopping = True
        self._hurry.set()
        self.queue.not_empty.set()

    # --- the writer task ---------------------------------------------------------

    async def run(self) -> None:
        queue = self.queue
        while True:
            if not queue:
                if self._stopping:
                    return
                # stop() sets this too, to wake an idle writer.
                await queue.not_empty.wait()
                continue
            await self._wait_for_batch()
            batch = queue.take(self.batch_size)
            await self._write(batch)

    async def _wait_for_batch(self) -> None:
        queue = self.queue
        loop = asyncio.get_running_loop()
        deadline = queue.oldest_at + self.commit_interval
        while not queue.batch_ready.is_set() and not self._stopping and not self._flush_targets:
            remaining = deadline - loop.time()
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

    async def _commit(self, rows: list[FrameRow], index: IndexBatch) -> None:
        await self.store.write_batch(rows, index)
        self.committed += len(rows)

    async def _write(self, batch: list[Frame]) -> None:
        rows: list[FrameRow] = []
        index = IndexBatch()
        for i, frame in enumerate(batch):
            if len(frame.data) > PARSE_IN_THREAD_BYTES:
                info = await asyncio.to_thread(classify, frame.data, frame.is_text)
            else:
                info = classify(frame.data, frame.is_text)
            rows.append(to_row(frame, info))
            index.add(frame, info)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        delay = 0.5
        while True:
            try:
                await self._exclusive(functools.partial(self._commit, rows, index))
                break
            except Exception as exc:
                # Keep the batch and retry: the queue fills meanwhile and pushes back on
                # the sockets, so nothing is dropped while the database is unavailable.
                log.error(
                    "database write failed; retrying",
                    error=str(exc),
                    frames=len(rows),
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


def now_us() -> int:
    return time.time_ns() // 1000
