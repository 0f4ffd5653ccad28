"""The daily digest: ``recorder report`` sent on ``[report] schedule`` through the alert
outbox, to ``[report] notify``.

At each scheduled run (cron, in UTC) the report of ``[report] since`` up to now is
built in a thread through the read library (never on the event loop, never through
the writer) and rendered as markdown; the digest is then stored like any alert
(:class:`~recorder.pipeline.alert_ops.RaiseAlerts`) and the deliverer sends it, at
least once. When the service starts, or reloads, the latest run of the last hour is
sent if it was not: a service down at 8 am sends the digest late, and one restarted at
8:05 finds the 8 am digest stored already (its dedupe key holds the run's time) and
sends nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from recorder.alerts.digest import GRACE, cron, digest, latest_run, next_run
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.alerts.delivery import Reads
    from recorder.alerts.occurrence import Occurrence
    from recorder.config.sections import ReportConfig
    from recorder.db.recordings import Recordings

log = structlog.get_logger("recorder.alerts")

# Stores alerts in the outbox; answers the new ids (none: stored before).
Store = Callable[[list["Occurrence"]], Awaitable[list[int]]]
# A run that could not be built or stored is tried again after this long, while it
# is not older than the grace.
RETRY = timedelta(minutes=1)


class Digest:
    """The digest's schedule, a task of the service's alerting: :meth:`start`,
    :meth:`reload` (SIGHUP), :meth:`stop`. :meth:`send` sends one run's digest."""

    def __init__(self, report: ReportConfig, reads: Reads, store: Store, instance: str) -> None:
        self.report = report
        self._reads = reads
        self._store = store
        self._instance = instance
        self._task: asyncio.Task[None] | None = None
        # The last run sent, or found sent already, and the ids it stored (none: it
        # was in the outbox already); set after each.
        self.last: tuple[datetime, list[int]] | None = None
        self.ran = asyncio.Event()

    def start(self) -> None:
        if self.report.schedule and self._task is None:
            self._task = asyncio.create_task(self._schedule(), name="report digest")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def reload(self, report: ReportConfig) -> None:
        """The schedule, targets and window as the file says now; the latest run of
        the last hour is sent if it was not (the dedupe key keeps one sent from
        being sent again, even to targets added since)."""
        if report == self.report and (self._task is not None or not report.schedule):
            return
        await self.stop()
        self.report = report
        self.start()

    async def send(self, run: datetime) -> list[int]:
        """The digest of the scheduled ``run``: the report of ``since`` up to now, built
        in a thread, stored in the outbox; the new alert's id (none: sent before)."""
        from recorder.report import build_report
        from recorder.report.render import render
        from recorder.report.sections import title

        window = int(self.report.since * 1e6)

        def built(recordings: Recordings) -> tuple[str, str, int]:
            until = now_us()
            report = build_report(recordings, until - window, until)
            return title(report), render(report, "markdown"), until

        said, markdown, until = await self._reads(built)
        alert = digest(run, said, markdown, until, self.report.notify, self._instance)
        ids = await self._store([alert])
        self.last = (run, ids)
        self.ran.set()
        log.info("report digest", run=alert.occurrence, stored=bool(ids), targets=alert.notify)
        return ids

    async def _schedule(self) -> None:
        trigger = cron(self.report.schedule)
        # From the grace ago: a run missed meanwhile is sent at once.
        after = datetime.now(UTC) - GRACE - timedelta(microseconds=1)
        while True:
            now = datetime.now(UTC)
            run = next_run(trigger, after)
            if run > now:
                # Slept on the loop's clock, checked on the wall's: a clock set back
                # (or forward) is looked at again when the sleep ends.
                await asyncio.sleep((run - now).total_seconds())
                continue
            # Due: the latest run that is (a machine that slept past several sends one).
            latest = latest_run(trigger, now)
            if latest is not None:
                await self._send_retrying(latest)
            after = latest or now

    async def _send_retrying(self, run: datetime) -> None:
        """:meth:`send`, tried again every minute while the run is within the grace."""
        while True:
            try:
                await self.send(run)
                return
            except Exception as exc:
                log.error("cannot send the report digest", run=run.isoformat(), error=str(exc))
            if datetime.now(UTC) + RETRY > run + GRACE:
                return
            await asyncio.sleep(RETRY.total_seconds())
