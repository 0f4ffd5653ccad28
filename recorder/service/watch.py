"""What the service says about itself while it runs: sd_notify's STATUS= and the
watchdog, which pings systemd only while the event loop keeps time and the writer
processes answer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import TYPE_CHECKING

import structlog

from recorder.pipeline.cleanup_ops import DatabaseBytes
from recorder.pipeline.ops import Heartbeat, Ping
from recorder.service.notify import Notifier
from recorder.times import format_us, now_us

if TYPE_CHECKING:
    from recorder.service.lifecycle import Service

log = structlog.get_logger("recorder.service")

# STATUS= is refreshed this often without a watchdog.
STATUS_EVERY = 5.0


def state(service: Service) -> dict[str, object]:
    """What `recorder status` shows of a running recorder."""
    link = service.link
    proxy = service.proxy
    return {
        "link": {
            "state": link.state,
            "url": link.safe_url,
            "since_us": link.since_us,
            "last_error": link.last_error,
            "last_error_us": link.last_error_us,
            "retry_at_us": link.retry_at_us,
            "reconnects": link.reconnects,
        },
        "proxy": None
        if proxy is None
        else {
            "listen": f"{proxy.config.proxy.host}:{proxy.port}",
            "clients": proxy.clients,
            "conversations": proxy.conversations,
        },
        "frames_recorded": service.writer.committed,
        "queued": service.writer.queued,
    }


async def beat(service: Service, *, stopped: bool = False) -> None:
    """The heartbeat row: written at start, every few seconds, and at the stop."""
    info = state(service) | {"stopped": stopped}
    await service.writer.perform(
        Heartbeat(
            service.config.storage.instance,
            os.getpid(),
            socket.gethostname(),
            service.started_us,
            now_us(),
            json.dumps(info),
        )
    )


def describe(service: Service) -> str:
    """One line: the link's state, what was recorded, the UIs proxied."""
    link = service.link
    if link.state == "connected":
        state = f"connected to {link.safe_url} since {format_us(link.since_us)[:19]}Z"
    elif link.retry_at_us is not None:
        wait = max(0.0, (link.retry_at_us - now_us()) / 1e6)
        state = f"reconnecting to {link.safe_url} in {wait:.0f} s"
        if link.last_error:
            state += f" after: {link.last_error}"
    else:
        state = f"connecting to {link.safe_url}"
    parts = [state, f"{service.writer.committed:,} frames recorded"]
    if service.proxy is not None:
        parts.append(
            f"{service.proxy.clients} UI(s) proxied now, {service.proxy.conversations} in all"
        )
    return "; ".join(parts)


async def refresh(service: Service) -> None:
    """The heartbeat row and the database's size, for `recorder status` and /metrics."""
    try:
        await beat(service)
        service.database_bytes = await service.writer.perform(DatabaseBytes())
    except Exception as exc:
        log.warning("could not write the heartbeat", error=str(exc))


async def watch(service: Service, notifier: Notifier) -> None:
    """STATUS= every few seconds, and WATCHDOG=1 at half of systemd's interval.

    The heartbeat row is written beside, never in the way: it waits in line behind
    the batches, and a batch may wait minutes for a full disk or a locked database,
    while the writer processes still answer a Ping at once. One heartbeat at a time;
    one still waiting is not joined by another.
    """
    interval = notifier.watchdog or STATUS_EVERY
    refreshing: asyncio.Task[None] | None = None
    try:
        while True:
            expected = time.monotonic() + interval
            await asyncio.sleep(interval)
            # Woken late by more than an interval: the loop was blocked.
            late = time.monotonic() - expected
            healthy = late < interval
            if healthy and notifier.watchdog is not None:
                try:
                    await asyncio.wait_for(service.writer.perform(Ping()), interval)
                except Exception as exc:  # a writer that does not answer is not healthy
                    healthy = False
                    log.warning("writer processes did not answer the watchdog", error=str(exc))
            fields: dict[str, str | int] = {"STATUS": describe(service)}
            if healthy and notifier.watchdog is not None:
                fields["WATCHDOG"] = 1
            notifier.send(**fields)
            if refreshing is None or refreshing.done():
                refreshing = asyncio.create_task(refresh(service), name="heartbeat")
    finally:
        if refreshing is not None:
            refreshing.cancel()
