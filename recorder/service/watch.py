"""What the service says about itself while it runs: sd_notify's STATUS=, the
watchdog (pinged only while the event loop keeps time and the writer processes
answer), and the heartbeat row. They read the snapshot the service hands them
(:mod:`recorder.service.snapshot`), and reach the writer through the two calls it
hands them too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from recorder.service.notify import Notifier
from recorder.service.snapshot import Snapshot

log = structlog.get_logger("recorder.service")

# STATUS= is refreshed this often without a watchdog.
STATUS_EVERY = 5.0


@dataclass(frozen=True)
class Watched:
    """What the watch loop is given of the service."""

    snapshot: Callable[[], Snapshot]
    # The writer processes' answer to a Ping (a batch may wait minutes for a full disk
    # meanwhile: the processes still answer).
    ping: Callable[[], Awaitable[None]]
    # The heartbeat row and the database's size, written beside the batches.
    refresh: Callable[[], Awaitable[None]]


async def watch(service: Watched, notifier: Notifier) -> None:
    """STATUS= every few seconds, and WATCHDOG=1 at half of systemd's interval.

    The heartbeat row is written beside, never in the way: it waits in line behind
    the batches, while the writer processes still answer a Ping at once. One
    heartbeat at a time; one still waiting is not joined by another.
    """
    interval = notifier.watchdog or STATUS_EVERY
    refreshing: asyncio.Task[None] | None = None
    try:
        while True:
            expected = time.monotonic() + interval
            await asyncio.sleep(interval)
            # Woken late by more than an interval: the loop was blocked.
            healthy = time.monotonic() - expected < interval
            if healthy and notifier.watchdog is not None:
                try:
                    await asyncio.wait_for(service.ping(), interval)
                except Exception as exc:  # a writer that does not answer is not healthy
                    healthy = False
                    log.warning("writer processes did not answer the watchdog", error=str(exc))
            fields: dict[str, str | int] = {"STATUS": service.snapshot().describe()}
            if healthy and notifier.watchdog is not None:
                fields["WATCHDOG"] = 1
            notifier.send(**fields)
            if refreshing is None or refreshing.done():
                refreshing = asyncio.create_task(_refreshed(service), name="heartbeat")
    finally:
        if refreshing is not None:
            refreshing.cancel()


async def _refreshed(service: Watched) -> None:
    try:
        await service.refresh()
    except Exception as exc:
        log.warning("could not write the heartbeat", error=str(exc))
