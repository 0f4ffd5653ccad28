"""The service's deliverer: sends the alerts in the outbox to their targets, at least
once, across restarts, targets that are down and targets that hang.

The outbox is the database (:mod:`recorder.db.alerts`): an alert is stored with a
row per target before anything is sent, and each attempt is recorded through the
writer (:class:`~recorder.pipeline.alert_ops.RecordDelivery`), so what is left to
send, and when, survives a restart. The :class:`Deliverer` reads the pairs due
(:meth:`~recorder.db.alert_reads.AlertReads.due_deliveries`) when told that alerts
were raised, and on a timer for retries, and sends each through Apprise in a small
thread pool: a target that hangs holds one thread until its timeouts end it, never
the event loop, the writer, or the other targets. A failed attempt is tried again
after a backoff that doubles up to a cap, with jitter, for ever; meanwhile the
target is held back, so a target that is down costs one attempt per backoff, not
one per alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from recorder.alerts.notify import message, title
from recorder.alerts.occurrence import REPORT
from recorder.alerts.send import send, warm
from recorder.alerts.spec import mask_url
from recorder.db.alert_reads import Alert, Due
from recorder.pipeline.alert_ops import RecordDelivery
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.db.recordings import Recordings

log = structlog.get_logger("recorder.alerts")
T = TypeVar("T")

# Sends at once, at most: each in a thread of its own.
THREADS = 4
# Due deliveries read at a time.
BATCH = 100


class Reads(Protocol):
    """Runs a read of the read library somewhere that does not block the loop."""

    async def __call__(self, read: Callable[[Recordings], T]) -> T: ...


Perform = Callable[[RecordDelivery], Awaitable[object]]
# An alert's notification: its title and its body.
Message = Callable[[Alert], tuple[str, str]]


@dataclass(frozen=True)
class Retry:
    """How long one send may take, and how failed ones are tried again (seconds)."""

    timeout: float = 20.0
    base: float = 5.0
    cap: float = 600.0


def retry_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first):
    ``base * 2**(attempt - 1)``, capped at ``cap``, of which the second half is random
    (``rand`` in [0, 1)): targets that come back are not all retried at one instant."""
    ceiling = cap if attempt > 64 else min(cap, base * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2 + ceiling / 2 * rand


def default_message(alert: Alert) -> tuple[str, str]:
    """The notification's title and body (:mod:`recorder.alerts.notify`), without a
    link to the web console."""
    return title(alert), message(alert)


class ThreadReads:
    """Reads of a database through the read library, each in a thread of the loop's
    default executor (not the senders' pool, which hung targets may fill)."""

    def __init__(self, url: str, shown: str | None = None) -> None:
        self.url = url
        self.shown = shown

    async def __call__(self, read: Callable[[Recordings], T]) -> T:
        return await asyncio.to_thread(self._read, read)

    def _read(self, read: Callable[[Recordings], T]) -> T:
        from recorder.db.recordings import Recordings

        with Recordings.open(self.url, self.shown) as recordings:
            return read(recordings)


def in_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """``work()`` in a thread of its own, its result on the running loop. A daemon
    thread: a send still hanging when the service stops (its socket timeouts not yet
    spent) must not hold the process's exit, as a pool's threads would (the
    interpreter joins them at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the loop, raised where it is awaited
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="alert-send", daemon=True).start()
    return future


class Deliverer:
    """Delivers the outbox's alerts: :meth:`run` is the service's task,
    :meth:`raised` wakes it when alerts were stored, :meth:`retarget` takes reloaded
    targets. ``targets``: Apprise URLs by name; ``instance``: deliver only the alerts
    this recorder raised (None: all)."""

    def __init__(
        self,
        reads: Reads,
        perform: Perform,
        targets: Mapping[str, str],
        *,
        message: Message = default_message,
        retry: Retry | None = None,
        instance: str | None = None,
        threads: int = THREADS,
        clock: Callable[[], int] = now_us,
        rng: random.Random | None = None,
    ) -> None:
        self.targets = dict(targets)
        self.retry = retry or Retry()
        self._reads = reads
        self._perform = perform
        self._message = message
        self._instance = instance
        self._clock = clock
        self._rng = rng or random.Random()
        warm()
        # A send holds a slot until its thread returns, past its timeout too: at most
        # ``threads`` threads send at once, a hung target's among them.
        self._slots = asyncio.Semaphore(threads)
        self._wake = asyncio.Event()
        # Targets being sent to; targets with a thread still running past its
        # timeout (how many); targets held back after a failure, until when.
        self._draining: set[str] = set()
        self._stuck: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0

    @property
    def stuck(self) -> dict[str, int]:
        """Targets with sends still running in a thread past their timeout (how
        many): no other send goes to them until those return."""
        return dict(self._stuck)

    def raised(self) -> None:
        """Alerts were stored: look for deliveries due now."""
        self._wake.set()

    def retarget(self, targets: Mapping[str, str]) -> None:
        """Targets reloaded (SIGHUP): alerts for a target no longer named wait in the
        outbox until it is named again."""
        self.targets = dict(targets)
        self._held = {k: v for k, v in self._held.items() if k in self.targets}
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        try:
            while True:
                self._wake.clear()
                try:
                    wait = await self._round()
                except Exception as exc:
                    log.warning("cannot read the alert outbox; trying again", error=str(exc))
                    wait = self.retry.base
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
                # cancellation that comes as the event is set (a send just done),
                # and the service could then never stop this task.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Threads still sending end with their timeouts; nothing waits for them.

    async def _round(self) -> float:
        """Start sending what is due to each free target; seconds until the next look."""
        now = self._clock()
        self._held = {k: v for k, v in self._held.items() if v > now}
        free = [t for t in self.targets if self._free(t)]
        if not free:
            return self._wait_s(now, None)

        def read(r: Recordings) -> tuple[list[Due], int | None]:
            due = r.due_deliveries(now, BATCH, free, self._instance)
            return due, r.next_delivery_us(now, free, self._instance)

        due, next_us = await self._reads(read)
        by_target: dict[str, list[Due]] = {}
        for pair in due:
            by_target.setdefault(pair.target, []).append(pair)
        for target, pairs in by_target.items():
            self._start(target, pairs)
        # A full batch: more may be due, for targets still free.
        return 0.0 if len(due) == BATCH else self._wait_s(now, next_us)

    def _free(self, target: str) -> bool:
        return (
            target not in self._draining and target not in self._stuck and target not in self._held
        )

    def _wait_s(self, now: int, next_us: int | None) -> float:
        """Seconds until a delivery is due or a target's hold ends (at most the
        backoff's cap: a look now and then costs one indexed read)."""
        times = [v for k, v in self._held.items() if k not in self._draining]
        if next_us is not None:
            times.append(next_us)
        soonest = min(times, default=now + int(self.retry.cap * 1e6))
        return min(max(soonest - now, 0) / 1e6, self.retry.cap)

    def _start(self, target: str, pairs: list[Due]) -> None:
        self._draining.add(target)
        task = asyncio.create_task(self._drain(target, pairs))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._draining.discard(target)
            self._wake.set()
            if not t.cancelled() and t.exception() is not None:
                log.error("alert delivery failed", target=target, error=str(t.exception()))

        task.add_done_callback(done)

    async def _drain(self, target: str, pairs: list[Due]) -> None:
        """Send ``pairs`` to ``target`` one after another, until one fails."""
        for pair in pairs:
            url = self.targets.get(target)
            if url is None or not await self._deliver(pair, url):
                return

    async def _deliver(self, pair: Due, url: str) -> bool:
        """One attempt, recorded; whether the target took the alert."""
        title, body = self._message(pair.alert)
        markdown = pair.alert.kind == REPORT  # the digest: markdown, escaped by its renderer
        ok, answer = await self._send(pair.target, url, title, body, markdown)
        attempt = pair.attempts + 1
        at = self._clock()
        delay = retry_delay(attempt, self.retry.base, self.retry.cap, self._rng.random())
        next_us = at + int(delay * 1e6)
        try:
            await self._perform(
                RecordDelivery(pair.alert.id, pair.target, attempt, at, ok, answer, next_us)
            )
        except Exception as exc:
            # Not recorded: the pair is still due, and is sent again after the hold
            # (at least once, perhaps twice), not in a loop while the writer is down.
            log.error("cannot record an alert's delivery", target=pair.target, error=str(exc))
            self._held[pair.target] = at + int(self.retry.base * 1e6)
            return False
        if ok:
            self.delivered += 1
            self._held.pop(pair.target, None)
            return True
        self.failed += 1
        self._held[pair.target] = next_us
        log.warning(
            "alert not delivered; trying again later",
            alert=pair.alert.id,
            target=pair.target,
            url=mask_url(url),
            attempt=attempt,
            answer=answer,
            retry_in_s=round(delay, 1),
        )
        return False

    async def _send(
        self, target: str, url: str, title: str, body: str, markdown: bool = False
    ) -> tuple[bool, str]:
        """Send in a thread of the pool, waiting for it ``retry.timeout`` at most."""
        timeout = self.retry.timeout
        await self._slots.acquire()
        future = in_daemon_thread(partial(send, url, title, body, timeout, markdown=markdown))
        future.add_done_callback(lambda _: self._slots.release())
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            self._stick(target, future)
            return False, f"no answer within {timeout:g} s"

    def _stick(self, target: str, future: asyncio.Future[Any]) -> None:
        """``target`` gets no other send until this one's thread returns: a target
        that hangs holds one thread at most."""
        self._stuck[target] = self._stuck.get(target, 0) + 1

        def unstuck(_: asyncio.Future[Any]) -> None:
            left = self._stuck.pop(target) - 1
            if left:
                self._stuck[target] = left
            self._wake.set()

        future.add_done_callback(unstuck)
