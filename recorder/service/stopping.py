"""The stop's steps, bounded, and what it cost.

The producers (the link, the proxy) close within a share of the stop's time, or are
aborted. What the stop cost (frames received, frames the database holds, frames
lost) is said only once the writer processes are gone, so that nothing is committed
behind the message: the database itself is counted, since batches in flight may
have been committed without their answer coming back.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog

from recorder.capture.link import Link, LinkGaveUp
from recorder.capture.proxy import Proxy
from recorder.db.readonly import frames_since
from recorder.pipeline.writer import Writer, WriterError

log = structlog.get_logger("recorder.service")

# The link's and the proxy's closing handshakes take at most this long of the stop
# (and at most half of storage.shutdown_timeout: the rest is the drain's).
CLOSE_TIMEOUT = 5.0
# Counting what the database holds takes at most this long at the end of a stop.
COUNT_WITHIN = 5.0


@dataclass(frozen=True, slots=True)
class Loss:
    received: int
    stored: int
    # The database was counted; False: ``stored`` is what the writer confirmed, and
    # the database may hold more (it could not be read).
    counted: bool = True

    @property
    def lost(self) -> int:
        return self.received - self.stored

    def fields(self) -> dict[str, Any]:
        """For the log line that says it."""
        fields: dict[str, Any] = {
            "received": self.received,
            "stored": self.stored,
            "lost": self.lost,
        }
        if not self.counted:
            fields["note"] = "the database could not be counted: lost is at most this"
        return fields


def settle(received: int, confirmed: int, in_flight: int, counted: int | None) -> Loss:
    """What this run stored: the database's count of the frames it holds of this run
    (``counted``), which lies between what the writer confirmed and that plus what
    was in flight; a cleanup purge of this run's frames can only make the count
    smaller, never the stored frames fewer than confirmed."""
    if counted is None:
        return Loss(received, confirmed, counted=False)
    return Loss(received, min(max(counted, confirmed), confirmed + in_flight))


def count(writer: Writer, url: str, first_frame_id: int, within: float) -> Loss:
    """The loss of this run, read from the database within ``within`` seconds (call
    once the writer is gone). Blocking: a second stop signal counts from its handler,
    where nothing else may run meanwhile; the read runs in a thread of its own (the
    PostgreSQL reader drives an event loop of its own)."""
    found: list[int | None] = []
    reading = threading.Thread(
        target=lambda: found.append(frames_since(url, first_frame_id)), daemon=True
    )
    reading.start()
    reading.join(within)
    counted = found[0] if found else None
    received = writer.queue.enqueued
    in_flight = max(received - writer.queued - writer.committed, 0)
    return settle(received, writer.committed, in_flight, counted)


def say(failed: BaseException, loss: Loss, timeout: float) -> int:
    """One line for a stop whose drain did not end well (``failed``: the writer's
    error, or TimeoutError past ``timeout``); returns the exit code it makes."""
    if isinstance(failed, WriterError):
        log.error("database writer failed; frames were lost", error=str(failed), **loss.fields())
        return 1
    if not isinstance(failed, TimeoutError):
        log.error("writer failed", error=repr(failed), **loss.fields())
        return 1
    if loss.lost:
        log.error(
            "writer did not drain in time; frames were lost", timeout=timeout, **loss.fields()
        )
        return 1
    log.warning(
        "writer did not stop in time; every frame was committed", timeout=timeout, **loss.fields()
    )
    return 0


async def close_producers(
    link: Link, link_task: asyncio.Task[None], proxy: Proxy | None, left: Callable[[], float]
) -> int:
    """The link and the proxy close (handshakes, bounded), or are aborted, within
    ``left()``; returns 1 if the link had failed (it gave up, or crashed), else 0."""
    link.stop()
    closing = min(CLOSE_TIMEOUT, left() / 2)
    # Closes every UI with 1001, and each of their upstream connections.
    stopping = asyncio.ensure_future(proxy.stop(closing)) if proxy is not None else None
    if not await finished(link_task, closing, cancel=False):
        link.abort()
    if not await finished(link_task, left()):
        log.error("link did not close in time; abandoning it")
    if stopping is not None and not await finished(stopping, left()):
        log.error("proxy did not close in time; abandoning it")
    if link_task.cancelled() or link_task.exception() is None:
        return 0
    exc = link_task.exception()
    if isinstance(exc, LinkGaveUp):
        log.error(str(exc))
    else:
        log.error("link failed", error=repr(exc))
    return 1


async def finished(task: asyncio.Future[Any], seconds: float, *, cancel: bool = True) -> bool:
    """Whether ``task`` ended within ``seconds``; if not, it is cancelled (``cancel``).
    Its exception, if any, counts as seen: the caller reads it where it matters."""
    if not task.done():
        await asyncio.wait((task,), timeout=seconds)
    if task.done():
        if not task.cancelled():
            task.exception()
        return True
    if cancel:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return False


def at_once(
    said: tuple[int, int] | None, writer: Writer | None, url: str, first_frame_id: int
) -> NoReturn:
    """The exit on a second stop signal (see ``Service.force_exit``)."""
    if said is not None:
        code, lost = said
        log.warning(
            "stopping at once on a second signal; what the stop cost is said above", lost=lost
        )
        os._exit(code)
    loss = Loss(0, 0)
    failed = False
    if writer is not None and writer.running:
        failed = writer.died is not None
        if not writer.kill_and_wait():
            log.error("writer processes did not exit after SIGKILL; counting anyway")
        loss = count(writer, url, first_frame_id, COUNT_WITHIN)
    if loss.lost == 0 and not failed:
        log.warning("stopping at once on a second signal; nothing was lost", lost=0)
        os._exit(0)
    log.error("stopping at once on a second signal; frames were not committed", **loss.fields())
    os._exit(1)
