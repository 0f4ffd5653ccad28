"""The service's handle on the writer processes: the only way to the database.

Producers (the daemon link, the proxy) hand frames over with :meth:`Writer.offer`
(never waits) or :meth:`Writer.put` (waits while the queue is full, which stops
them reading their sockets and pushes back on the sender). A frame is never
dropped. :meth:`Writer.run` cuts batches from the queue and ships them down the
line to the classifier and database processes; every other database operation
travels the same line, in order, so the database process is the only writer, as
in Home Assistant's recorder thread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from recorder.pipeline.batching import Batcher, FrameQueue
from recorder.pipeline.channel import Answer, Pidfds, Ready, Settings, receive, send, spawn
from recorder.pipeline.ops import (
    ALERTS,
    ActiveSessions,
    CloseConnection,
    CloseDangling,
    OpenConnection,
    Operation,
    Stop,
    WriteFrames,
)
from recorder.pipeline.writer_metrics import WriterMetrics
from recorder.protocol.frames import F_RECEIVED, FrameTuple
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.alerts.spec import AlertsConfig
    from recorder.config import Config

log = structlog.get_logger("recorder.pipeline")
T = TypeVar("T")

# Batches shipped before waiting for an answer: some being written, one being
# classified, one on the wire. While a database is slower than the socket, the ones
# that queue in the database process are written together (processes.WRITE_TOGETHER):
# on PostgreSQL a COPY and a commit cost about as much for 2000 rows as for 8000
# (bench/ingest.py into PostgreSQL: 0.40 of the ceiling with 3 in flight, 0.46 with 6
# and batches written together; SQLite unchanged at 0.51).
IN_FLIGHT = 6

# The writer processes' orderly stop (a Stop behind everything shipped, then their
# exit) takes at most this long unless the caller says otherwise; then they are killed.
CLOSE_TIMEOUT = 10.0
# After SIGKILL, the processes are waited for this long at most.
KILL_WAIT = 5.0


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class WriterError(Exception):
    """The writer processes failed to start, or died."""

    def __init__(self, message: str, config_error: bool = False) -> None:
        super().__init__(message)
        # Not a fault of the moment: the configuration names something unusable.
        self.config_error = config_error


class Writer:
    """The parent's handle on the writer processes."""

    @classmethod
    def of(cls, config: Config, *, unclean: bool = False, used_before: bool = False) -> Writer:
        """The writer ``config`` describes: [storage], the log, the alerts' frame rules."""
        s = config.storage
        return cls(
            s.url,
            batch_size=s.batch_size,
            commit_interval=s.commit_interval,
            queue_max_frames=s.queue_max_frames,
            queue_max_bytes=s.queue_max_bytes,
            log_level=config.log.level,
            log_format=config.log.format,
            instance=s.instance,
            unclean=unclean,
            used_before=used_before,
            alerts=config.alerts,
        )

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
        instance: str = "default",
        unclean: bool = False,
        used_before: bool = False,
        alerts: AlertsConfig | None = None,
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self.queue = FrameQueue(queue_max_frames, queue_max_bytes, batch_size)
        # The producers' way in: append if there is room, else say so (never waits).
        self.offer = self.queue.offer
        self._batcher = Batcher(self.queue, batch_size, commit_interval)
        self.committed = 0
        self.commits = 0
        self.metrics = WriterMetrics()
        # Called when a batch stored alerts its frames raised (the deliverer's wake-up).
        self.on_alerts: Callable[[], None] | None = None
        self._settings = Settings(
            url, log_level, log_format, instance, unclean, used_before, alerts
        )
        self._stopping = False
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
        # The classifier and the database process, to kill them and see them gone.
        self._pids = Pidfds()
        self._running = False
        self._closed = False

    @property
    def died(self) -> str | None:
        """Why the writer processes are gone (also after a clean :meth:`close`)."""
        return self._died

    @property
    def running(self) -> bool:
        """The writer processes started, and are not known to be gone."""
        return self._running

    @property
    def queued(self) -> int:
        """Frames handed over and not yet shipped to the writer processes."""
        return len(self.queue)

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> tuple[str | None, str | None]:
        """Start the writer processes; they migrate the database. Returns (before, after) revisions."""
        self._process, reader, self._stream = await spawn("classifier_entry")
        self._pids.hold(self._process.pid)
        await send(self._stream, self._settings)
        hello = await receive(reader)
        if not isinstance(hello, Ready):
            self._stream.close()
            await self._reap()
            self._pids.close()
            detail = getattr(hello, "reason", "it exited")
            raise WriterError(
                f"database writer did not start: {detail}",
                config_error=getattr(hello, "config_error", False),
            )
        if hello.pid is not None:
            self._pids.hold(hello.pid)
        self._running = True
        self._reader_task = asyncio.create_task(self._read_answers(reader), name="writer-answers")
        return hello.before, hello.after

    async def close(self, within: float = CLOSE_TIMEOUT) -> bool:
        """Stop the writer processes: a Stop behind everything shipped (after
        :meth:`run` has drained the queue), and their exit; True then. Killed if that
        takes longer than ``within`` (False). Nothing waits on the writer after this
        returns; a second call does nothing."""
        if self._closed:
            return True
        self._closed = True
        try:
            async with asyncio.timeout(within):
                if self._stream is not None and self._died is None:
                    try:
                        await self._call(Stop())
                    except WriterError:
                        pass
                if self._stream is not None:
                    self._stream.close()
                if self._reader_task is not None:
                    await self._reader_task
                if self._process is not None:
                    await self._process.wait()
            stopped = True
        except TimeoutError:
            self.kill_and_wait()
            stopped = False
        self._running = False
        self._pids.close()
        return stopped

    def kill(self) -> None:
        """SIGKILL both writer processes, now, whatever they are doing."""
        self._pids.kill()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()  # without pidfds (not Linux): the classifier at least

    def kill_and_wait(self, within: float = KILL_WAIT) -> bool:
        """:meth:`kill`, and wait until both processes are gone: True then (nothing
        more can be committed), False if that cannot be known within ``within``.
        Blocking, and briefly (a killed process is gone in milliseconds): a second
        stop signal calls it from a signal handler, where nothing else may run."""
        if not self._running:
            return True
        self.kill()
        if self._stream is not None:
            self._stream.close()
        self._running = not (self._pids and self._pids.wait_gone(within))
        return not self._running

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
            answer: Answer | None = await receive(reader)
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
        # Wake the shipping task now, not at the next frame: the service must notice
        # at once and stop reading what it can no longer record.
        self.queue.close()
        self._batcher.hurry.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(WriterError(self._died))
        self._waiting.clear()
        async with self._progress:
            self._progress.notify_all()

    async def _call(self, operation: Operation[T]) -> T:
        if self._died is not None or self._stream is None:
            raise WriterError(self._died or "the writer is not running")
        rid = next(self._ids)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # A caller cancelled meanwhile (a watchdog Ping that timed out) never reads
        # the error its answer may carry: marked as seen, so asyncio does not log it.
        future.add_done_callback(_seen)
        self._waiting[rid] = future
        async with self._send_lock:
            try:
                await send(self._stream, (rid, operation))
            except ConnectionError as exc:  # killed, or dying: the reader says so soon
                self._waiting.pop(rid, None)
                raise WriterError(self._died or f"the writer process is gone: {exc}") from None
        # Shielded: a cancelled caller must not lose the answer's bookkeeping.
        result = await asyncio.shield(future)
        self.commits += 1
        async with self._progress:
            self._progress.notify_all()
        return result

    # --- producer side -----------------------------------------------------------

    async def put(self, frame: FrameTuple) -> None:
        """Hand a frame over, waiting while the queue is full."""
        await self.queue.put(frame)

    async def room(self) -> None:
        """Return once :meth:`offer` would take a frame (or the writer is gone)."""
        await self.queue.room()

    def push(self, frame: FrameTuple) -> None:
        """Hand over a frame already sent, without waiting (see FrameQueue.push)."""
        self.queue.push(frame)

    async def flush(self) -> None:
        """Return once every frame put before this call is committed."""
        target = self.queue.enqueued
        if self.committed >= target:
            return
        self._flush_targets += 1
        self._batcher.hurry.set()
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

    async def perform(self, operation: Operation[T]) -> T:
        """Run one operation in the database process, in order with the batches."""
        return await self._call(operation)

    async def open_connection(self, role: str, url: str, client_addr: str | None = None) -> int:
        cid = await self._call(OpenConnection(role, url, now_us(), client_addr))
        self.metrics.roles[cid] = role
        return cid

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
        try:
            await self.flush()
            await self._call(CloseConnection(connection_id, closed, code, reason, closed_by, error))
        finally:
            # Its frames are counted (flushed) by now: the role is needed no more, and a
            # service that proxies for months must not keep one entry per conversation.
            self.metrics.roles.pop(connection_id, None)

    async def active_session_ids(self) -> list[str]:
        await self.flush()
        return await self._call(ActiveSessions())

    async def close_dangling(self) -> int:
        return await self._call(CloseDangling(now_us()))

    def stop(self) -> None:
        """Ask :meth:`run` to drain the queue and return."""
        self._stopping = True
        self._batcher.hurry.set()
        self.queue.not_empty.set()

    # --- the shipping task -------------------------------------------------------

    async def run(self) -> None:
        queue = self.queue
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                if self._died is not None:
                    raise WriterError(self._died)
                if not queue:
                    if self._stopping:
                        break
                    # stop() sets this too, to wake an idle writer.
                    await queue.not_empty.wait()
                    continue
                await self._batcher.wait(self._urgent)
                await self._in_flight.acquire()
                task = asyncio.create_task(self._ship(self._batcher.take()))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if self._died is not None:
                    raise WriterError(self._died)
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._died is not None:
            raise WriterError(self._died)

    def _urgent(self) -> bool:
        return self._stopping or bool(self._flush_targets)

    async def _ship(self, batch: list[FrameTuple]) -> None:
        try:
            shipped = time.monotonic()
            tally = await self._call(WriteFrames(batch))
            if tally.pop(ALERTS, None) is not None and self.on_alerts is not None:
                self.on_alerts()
            self.metrics.committed(tally, time.monotonic() - shipped, batch[-1][F_RECEIVED])
            self.committed += len(batch)
            async with self._progress:
                self._progress.notify_all()
        finally:
            self._in_flight.release()
