"""The service's alerts: the outbox's deliverer, and the condition rules on a timer.

The frame rules run where the frames are classified, in the writer's classifier
process, and their alerts are stored with the batch that raised them
(:mod:`recorder.pipeline.classifier`); the writer says when a batch stored some, and
the deliverer is woken. The condition rules (the link down, the daemon silent, the
recording behind, the writer's fault, the database's size, the disk) look at the
service's own state here, every few seconds, and their alerts go through the writer
like any other database work. Delivery never waits on the writer or holds it: sends run
in the deliverer's threads. The report's digest (``[report] schedule``) is sent through
the same outbox (:mod:`recorder.service.digest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from recorder.alerts.conditions import Snapshot as State
from recorder.alerts.delivery import Deliverer, ThreadReads
from recorder.alerts.notify import message, title
from recorder.alerts.rules import Rules
from recorder.db.alerts import raised_alerts
from recorder.db.backend import backend
from recorder.pipeline.alert_ops import RaiseAlerts, ReloadRules
from recorder.service.digest import Digest
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.alerts.occurrence import Occurrence
    from recorder.config import Config
    from recorder.db.alert_reads import Alert
    from recorder.pipeline.writer import Writer
    from recorder.service.snapshot import Snapshot

log = structlog.get_logger("recorder.alerts")

# Seconds between two looks at the conditions, at most; a rule's own duration, halved,
# when that is shorter (a link down for 2 s is seen within a second or so).
CHECK_EVERY = 5.0
CHECK_AT_LEAST = 0.2
# Condition alerts kept while they cannot be stored, at most (the newest).
UNSTORED = 1000


class Alerting:
    """Started with the service when ``[alerts]`` has rules or ``[report]`` a schedule;
    stopped with it."""

    def __init__(self, config: Config, writer: Writer, snapshot: Callable[[], Snapshot]) -> None:
        self.writer = writer
        self.snapshot = snapshot
        self.rules = Rules.from_config(config.alerts)
        self.public_url = config.web.public_url
        path = backend(config.storage.url).path
        self.disk = path.parent if path is not None else None
        reads = ThreadReads(config.storage.url)
        self.deliverer = Deliverer(
            reads,
            writer.perform,
            {t.name: t.url for t in config.alerts.targets},
            message=self._message,
            instance=config.storage.instance,
        )
        writer.on_alerts = self.deliverer.raised
        self.digest = Digest(config.report, reads, self.store, config.storage.instance)
        # Since when the queue is full, and the writer gone (this process's looks).
        self._behind_since: int | None = None
        # Condition alerts raised and not stored yet (the writer failed meanwhile).
        self._unstored: list[Occurrence] = []
        self._fault_since: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.deliverer.run(), name="alert delivery"),
            asyncio.create_task(self._watch(), name="alert conditions"),
        ]
        self.digest.start()

    async def stop(self) -> None:
        await self.digest.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def reload(self, config: Config) -> None:
        """SIGHUP: the rules, the targets and the digest's schedule as the file says
        now; the frame rules in the classifier process, through the writer."""
        await self.writer.perform(ReloadRules(config.alerts))
        self.rules = self.rules.reloaded(config.alerts)
        self.public_url = config.web.public_url
        self.deliverer.retarget({t.name: t.url for t in config.alerts.targets})
        await self.digest.reload(config.report)

    def _message(self, alert: Alert) -> tuple[str, str]:
        return title(alert), message(alert, self.public_url or "")

    def _every(self) -> float:
        durations = [r.when.seconds / 2 for r in self.rules.rules if r.when.seconds]
        return max(CHECK_AT_LEAST, min([CHECK_EVERY, *durations]))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._every())
            try:
                self._unstored += self.rules.on_conditions(self.state(), now_us())
                if self._unstored:
                    await self.store(self._unstored)
                    self._unstored = []
            except Exception as exc:  # a look that fails is tried again at the next
                # The conditions count what they raised as said: what could not be
                # stored (a writer waiting for room on a full disk) is kept, and stored
                # at a later look (its dedupe key keeps it one alert), the newest kept.
                self._unstored = self._unstored[-UNSTORED:]
                log.warning("cannot look at the alert conditions", error=str(exc))

    async def store(self, raised: list[Occurrence]) -> list[int]:
        """Alerts raised apart from a batch, into the outbox; the deliverer is woken.
        The new alerts' ids (those stored before are left out)."""
        ids = await self.writer.perform(RaiseAlerts(raised_alerts(raised), now_us()))
        self.deliverer.raised()
        return ids

    def state(self) -> State:
        """The service's state as the condition rules read it."""
        shot = self.snapshot()
        link = shot.link
        now = now_us()
        if self.writer.queue.full:
            self._behind_since = self._behind_since or now
        else:
            self._behind_since = None
        died = self.writer.died
        self._fault_since = (self._fault_since or now) if died else None
        return State(
            link_up=link.state == "connected",
            link_since_us=link.since_us,
            last_frame_us=shot.writer.last_frame_us,
            behind_since_us=self._behind_since,
            writer_fault=died,
            writer_fault_since_us=self._fault_since,
            db_bytes=shot.database_bytes,
            disk_free_bytes=_free_bytes(self.disk),
        )


def _free_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    with contextlib.suppress(OSError):
        return shutil.disk_usage(path).free
    return None


def alerting(config: Config, writer: Writer, snapshot: Callable[[], Snapshot]) -> Alerting | None:
    """The service's alerting, started; None when there are no rules and no digest."""
    if not config.alerts.rules and not config.report.schedule:
        return None
    started = Alerting(config, writer, snapshot)
    started.start()
    return started
