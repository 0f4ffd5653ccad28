"""The bounded frame queue, and when to cut a batch from it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from recorder.protocol.frames import F_DATA, F_MONOTONIC, FrameTuple

# After a burst that filled whole batches, the rest is committed once no frame has
# arrived for this long, rather than up to commit_interval later: the burst is
# over, and the disk is already busy with it. Below batch_size frames per
# commit_interval this never applies, and commits stay one per interval.
BURST_END_QUIET = 0.01


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
        # The writer is gone: frames handed over from now on are counted, not kept.
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def newest_at(self) -> float:
        """When the newest waiting frame arrived (loop time), or 0 when empty."""
        return self._items[-1][F_MONOTONIC] / 1e9 if self._items else 0.0

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_frames or (
            self._bytes >= self.max_bytes and bool(self._items)
        )

    def offer(self, frame: FrameTuple) -> bool:
        """Append if there is room and say so; never waits (the producers' common case)."""
        if self.full:
            return False
        self._append(frame)
        return True

    async def put(self, frame: FrameTuple) -> None:
        """Append, waiting for room first: the wait is the back-pressure on the socket."""
        while self.full and not self.closed:
            self.waits += 1
            self._not_full.clear()
            await self._not_full.wait()
        self.push(frame)

    async def room(self) -> None:
        """Return once a frame would be taken without waiting (or the writer is gone)."""
        while self.full and not self.closed:
            self._not_full.clear()
            await self._not_full.wait()

    def push(self, frame: FrameTuple) -> None:
        """Append, full or not: for a frame already sent, which must be recorded
        without waiting. Its sender waited for :meth:`room` before sending, so the
        queue goes over its bound by at most the sends under way."""
        if self.closed:
            self.enqueued += 1  # lost, and counted as such (enqueued - committed)
            return
        self._append(frame)

    def close(self) -> None:
        """No writer will take frames any more: release producers waiting for room."""
        self.closed = True
        self._not_full.set()
        self.not_empty.set()

    def _append(self, frame: FrameTuple) -> None:
        if not self._items:
            self.oldest_at = asyncio.get_running_loop().time()
            self.not_empty.set()
        self._items.append(frame)
        self._bytes += len(frame[F_DATA])
        self.enqueued += 1
        if len(self._items) >= self.batch_size or self.full:
            # A full queue means producers are about to wait: commit now, not later.
            self.batch_ready.set()

    def take(self, n: int) -> list[FrameTuple]:
        items = self._items
        batch = [items.popleft() for _ in range(min(n, len(items)))]
        self._bytes -= sum(len(f[F_DATA]) for f in batch)
        if items:
            # The new head's receive time (time.monotonic_ns, the loop's clock too).
            self.oldest_at = items[0][F_MONOTONIC] / 1e9
        else:
            self.not_empty.clear()
        if len(items) < self.batch_size and not self.full:
            self.batch_ready.clear()
        if not self.full:
            self._not_full.set()
        return batch


class Batcher:
    """When the next batch leaves the queue: a commit every ``commit_interval``
    seconds or ``batch_size`` frames, whichever comes first, and right after a
    burst ends (see :data:`BURST_END_QUIET`)."""

    def __init__(self, queue: FrameQueue, batch_size: int, commit_interval: float) -> None:
        self.queue = queue
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        # Set to cut the batch now (a flush, a stop).
        self.hurry = asyncio.Event()
        # The last batch taken was full: frames arrive faster than batch_size per interval.
        self._bursting = False

    async def wait(self, urgent: Callable[[], bool]) -> None:
        """Return when a batch is due, or at once while ``urgent()`` holds."""
        queue = self.queue
        loop = asyncio.get_running_loop()
        deadline = queue.oldest_at + self.commit_interval
        while not queue.batch_ready.is_set() and not urgent():
            until = deadline
            if self._bursting:
                until = min(deadline, queue.newest_at + BURST_END_QUIET)
            remaining = until - loop.time()
            if remaining <= 0:
                return
            ready = asyncio.ensure_future(queue.batch_ready.wait())
            hurry = asyncio.ensure_future(self.hurry.wait())
            try:
                await asyncio.wait(
                    (ready, hurry), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ready.cancel()
                hurry.cancel()
            self.hurry.clear()

    def take(self) -> list[FrameTuple]:
        """The next batch, at most ``batch_size`` frames."""
        self._bursting = len(self.queue) >= self.batch_size
        return self.queue.take(self.batch_size)
