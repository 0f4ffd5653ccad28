"""The report as a scheduled digest: when it is due, and the alert that carries it
through the outbox. Pure (APScheduler's cron trigger computes the times; it is
imported only where a schedule is read).

A digest is an alert of kind :data:`~recorder.alerts.occurrence.REPORT`, stored with
:class:`~recorder.pipeline.alert_ops.RaiseAlerts` and delivered like any other, at
least once. Its dedupe key's occurrence is the scheduled run's time, so a service
that restarts, or reloads, and sends the latest run it missed (:func:`latest_run`)
never sends the same digest twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from recorder.alerts.occurrence import REPORT, Occurrence

# A run missed by at most this long (the service was stopped at 8 am, or restarted
# since) is sent late; an older one is skipped. The cleanup's misfire grace.
GRACE = timedelta(hours=1)
RULE = "report"


class ScheduleError(ValueError):
    """A schedule APScheduler's cron cannot read; the message says why."""


def cron(schedule: str) -> Any:
    """The APScheduler cron trigger of ``schedule`` (five fields, in UTC, as the
    cleanup's schedules); ScheduleError if cron rejects it."""
    from apscheduler.triggers.cron import CronTrigger

    if len(schedule.split()) != 5:
        raise ScheduleError(f"expected five cron fields (like '0 8 * * *'), got {schedule!r}")
    try:
        return CronTrigger.from_crontab(schedule, timezone=UTC)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None


def next_run(trigger: Any, after: datetime) -> datetime:
    """The first scheduled run strictly after ``after``."""
    # APScheduler answers the first run at or after its argument rounded up to the
    # second: a microsecond later is strictly after, whole second or not.
    found: datetime | None = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    assert found is not None  # a cron without an end always has a next run
    return found.astimezone(UTC)


def latest_run(trigger: Any, now: datetime, grace: timedelta = GRACE) -> datetime | None:
    """The latest scheduled run at or before ``now`` and no older than ``grace``; None
    when there was none in that time."""
    latest = None
    run = next_run(trigger, now - grace - timedelta(microseconds=1))
    while run <= now:
        latest = run
        run = next_run(trigger, run)
    return latest


def digest(
    run: datetime,
    title: str,
    markdown: str,
    until_us: int,
    notify: tuple[str, ...],
    instance: str,
) -> Occurrence:
    """The alert that carries the digest of the scheduled ``run``: its title (``what``),
    the report's markdown (``text``, escaped by its renderer), and the end of its window
    (``at_us``). Keyed by the run's time and this recorder's instance: recorders that
    share a database send each its own digest."""
    return Occurrence(
        rule=RULE,
        kind=REPORT,
        subject=f"{RULE} {instance}",
        occurrence=run.astimezone(UTC).isoformat(timespec="seconds"),
        what=title,
        text=markdown,
        session_id=None,
        at_us=until_us,
        notify=notify,
    )
