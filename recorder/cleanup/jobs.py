"""Cleanup policies running inside the service: on their schedules, and on request.

APScheduler's AsyncIOScheduler fires each enabled policy (``coalesce``, one instance
at a time, a misfire grace time: a laptop that slept or a slow purge never stacks
runs). A run asks the database process which sessions match (it also notes when each
match began, for ``cleanup.grace``), then acts: ``stop_session`` over the daemon link
(recorded like any frame), ``purge`` and ``compact`` through the one writer in short
transactions between batches, so recording goes on. Each policy runs on its own: one
stuck (a daemon that stops reading) never holds another back. Every run writes its
audit row (``recorder cleanup history``) before it acts and completes it when it
ends, and one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import structlog

from recorder.cleanup.actions import PURGE_CHUNK, Action, SizeLimit, action_of
from recorder.cleanup.actor import Actor, Direct, Performer, Run, error_line
from recorder.cleanup.settings import policy_said, trigger
from recorder.pipeline.cleanup_ops import (
    AnswerRequest,
    EndInterrupted,
    FinishRun,
    StartRun,
    TakeRequests,
)
from recorder.protocol.policy import Conditions, Policy
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.capture.link import Link
    from recorder.config import Config

# Re-exported: the CLI and the tests run cleanups directly, on a database they open.
__all__ = [
    "MAX_SIZE",
    "PURGE_CHUNK",
    "RETENTION",
    "Cleanup",
    "Direct",
    "loaded",
    "policies_of",
]

log = structlog.get_logger("recorder.cleanup")

RETENTION = "storage.retention"
MAX_SIZE = "storage.max_db_size"
MISFIRE_GRACE = 3600
# Coalesced, one at a time, tolerant of a machine that slept: a slow run never stacks.
OPTIONS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE}
REQUESTS, INTERRUPTED = "requests", "interrupted"


# storage.max_db_size, checked every 10 minutes: a run when the database is over it.
SIZE_POLICY = Policy(MAX_SIZE, "every 10m", SizeLimit.name)


def policies_of(config: Config) -> list[Policy]:
    """The configured policies, and the one ``storage.retention`` stands for."""
    found = list(config.cleanup.policies)
    retention = config.storage.retention_s
    if retention is not None:
        when = Conditions(ended_before=retention)
        found.append(Policy(RETENTION, "every 1h", "retention", when))
    return found


def loaded(cleanup: Cleanup | None, config: Config) -> dict[str, Any]:
    """What a running service has loaded, for its heartbeat row (`recorder cleanup
    policies` reads it): the file, each policy as the file says it and its next run on
    the running schedule (None: disabled, or no schedule)."""
    policies = cleanup.policies if cleanup is not None else {}
    return {
        # As a path from anywhere: the command that reads it runs elsewhere.
        "source": absolute(config.source),
        "policies": [
            policy_said(p) | {"next_run_us": cleanup.next_run_us(p.name) if cleanup else None}
            for p in policies.values()
        ],
    }


def absolute(source: str) -> str:
    """A configuration's source as an absolute path ("<defaults>" as it is)."""
    import os

    return source if source == "<defaults>" else os.path.abspath(source)


class Cleanup:
    def __init__(
        self,
        config: Config,
        writer: Performer,
        link: Link | None,
        *,
        no_link: str = "the daemon link is down",
    ) -> None:
        self.config = config
        self.writer = writer
        self.policies = {p.name: p for p in policies_of(config)}
        self.runs = 0
        self._scheduler: Any = None
        # One run at a time per policy; different policies run side by side.
        self._locks: dict[str, asyncio.Lock] = {}
        self._requested: set[asyncio.Task[None]] = set()
        # The audit rows of the runs in progress here (any other of this recorder's
        # marked running was cut short).
        self.alive: set[int] = set()
        self.actor: Actor = Actor(
            writer,
            link,
            grace=config.cleanup.grace,
            max_db_bytes=config.storage.max_db_bytes,
            no_link=no_link,
        )

    @property
    def wanted(self) -> bool:
        return bool(self.policies) or self.config.storage.max_db_bytes is not None

    @property
    def scheduled(self) -> bool:
        """Whether its schedule is running (started, not stopped)."""
        return self._scheduler is not None

    @property
    def job_ids(self) -> list[str]:
        """What its schedule holds: a job per enabled policy, and the request poll."""
        return sorted(job.id for job in self._scheduler.get_jobs()) if self._scheduler else []

    def next_run_us(self, name: str) -> int | None:
        """When the schedule runs policy ``name`` next (None: not scheduled)."""
        job = self._scheduler.get_job(name) if self._scheduler is not None else None
        moment = getattr(job, "next_run_time", None)
        return None if moment is None else int(moment.timestamp() * 1_000_000)

    def start(self) -> None:
        """Schedule every enabled policy (the caller checked :attr:`wanted`)."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        # A poll that finds the previous one still waiting for the writer is skipped
        # by design (coalesce, one at a time): no warning line for it.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone=UTC)
        self._schedule(scheduler)
        poll = IntervalTrigger(seconds=self.config.cleanup.poll)
        requests = ("cleanup requests could not be read", self.take_requests)
        scheduler.add_job(quietly, poll, args=requests, id=REQUESTS, **OPTIONS)
        # Once, now: runs a kill cut short are history, not "running".
        scheduler.add_job(self._end_interrupted, id=INTERRUPTED)
        scheduler.start()
        self._scheduler = scheduler

    def _schedule(self, scheduler: Any) -> None:
        for policy in self.policies.values():
            if policy.enabled:
                job = trigger(policy)
                scheduler.add_job(self._scheduled, job, args=(policy,), id=policy.name, **OPTIONS)
        if self.config.storage.max_db_bytes is not None:
            size = ("the size limit could not be checked", self.keep_under_size)
            scheduler.add_job(quietly, trigger(SIZE_POLICY), args=size, id=MAX_SIZE, **OPTIONS)

    def apply(self, config: Config) -> None:
        """A reload: the new policies replace the old on the running schedule. Runs in
        progress finish as they began (a run `recorder cleanup run` waits for, too)."""
        self.config = config
        self.policies = {p.name: p for p in policies_of(config)}
        self.actor.grace = config.cleanup.grace
        self.actor.max_db_bytes = config.storage.max_db_bytes
        if self._scheduler is None:
            return
        for job in self._scheduler.get_jobs():
            if job.id not in (REQUESTS, INTERRUPTED):
                job.remove()
        self._schedule(self._scheduler)

    async def _end_interrupted(self) -> None:
        try:
            ended = await self.writer.perform(EndInterrupted(tuple(self.alive)))
        except Exception as exc:
            log.warning("cannot mark interrupted cleanup runs", error=error_line(exc))
            return
        if ended:
            log.warning("cleanup runs were interrupted by the last stop", runs=ended)

    async def stop(self) -> None:
        """No new runs; a run in progress stops between two of its steps."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for task in list(self._requested):
            task.cancel()
        await asyncio.gather(*self._requested, return_exceptions=True)

    async def _scheduled(self, policy: Policy) -> None:
        try:
            await self.run(policy)
        except asyncio.CancelledError:
            # The service is stopping: what is done is done (its audit row says so,
            # as interrupted), the rest waits for the next run.
            log.info("cleanup run interrupted by the stop", policy=policy.name)
        except Exception as exc:  # its audit row could not be written: the log says
            log.error("cleanup run failed", policy=policy.name, error=error_line(exc))

    # --- runs -----------------------------------------------------------------------

    async def run(
        self, policy: Policy, *, dry_run: bool | None = None, trigger: str = "schedule"
    ) -> int:
        """Run one policy now; returns its audit row's id. ``dry_run`` can only make a
        run dry: a policy that says dry_run = true never acts, however it is run."""
        dry = policy.dry_run or bool(dry_run)
        action = action_of(policy)
        async with self._locks.setdefault(policy.name, asyncio.Lock()):
            run = Run(policy, trigger, dry, now_us())
            started = time.monotonic()
            await self._recorded(run, action)
            self.runs += 1
        log.info(
            "cleanup run",
            policy=policy.name,
            action=action.verb,
            trigger=trigger,
            dry_run=dry,
            matched=run.matched,
            acted=run.acted,
            error=run.outcome()["error"],
            seconds=round(time.monotonic() - started, 3),
        )
        assert run.id is not None
        return run.id

    async def _recorded(self, run: Run, action: Action) -> None:
        """The action's steps between the audit row's start and its end. An error ends
        the run and is its record; a cancellation (the stop) leaves the row running,
        which the next run or start of this recorder marks interrupted."""
        start = StartRun(run.start_row(action.verb), tuple(self.alive))
        run_id, run.through_id = await self.writer.perform(start)
        run.id = run_id
        self.alive.add(run_id)
        try:
            try:
                await action.steps(self.actor, run)
            except Exception as exc:  # recorded, logged, and the service goes on
                run.error = error_line(exc)
            await self.writer.perform(FinishRun(run_id, run.outcome()))
        finally:
            self.alive.discard(run_id)

    async def keep_under_size(self) -> None:
        """``storage.max_db_size``: a run only when the database is over it."""
        size = action_of(SIZE_POLICY)
        assert isinstance(size, SizeLimit)
        if await size.over(self.actor):
            await self.run(SIZE_POLICY)

    async def take_requests(self) -> None:
        """What `recorder cleanup run` asked of this service: run in tasks of their own,
        so this poll is over at once (a long purge must not hold the poller)."""
        for request in await self.writer.perform(TakeRequests(now_us())):
            task = asyncio.create_task(self._answer(*request))
            self._requested.add(task)
            task.add_done_callback(self._requested.discard)

    async def _answer(self, request_id: int, name: str | None, dry: bool) -> None:
        chosen = [self.policies[name]] if name in self.policies else []
        if name is None:
            chosen = [p for p in self.policies.values() if p.enabled]
        if name is not None and not chosen:
            result = json.dumps({"error": f"no policy named {name!r}"})
        else:
            try:
                ids = [await self.run(p, dry_run=dry, trigger="request") for p in chosen]
                result = json.dumps({"runs": ids})
            except asyncio.CancelledError:
                result = json.dumps({"error": "the recorder stopped first"})
            except Exception as exc:  # its audit row could not be written
                result = json.dumps({"error": f"the run could not start: {error_line(exc)}"})
        await self.writer.perform(AnswerRequest(request_id, now_us(), result))


async def quietly(what: str, job: Callable[[], Awaitable[None]]) -> None:
    """A scheduled job that ends, whatever happens, without APScheduler's report: it
    logs a job that raised, or that the stop cancelled mid-way (a poll waiting for the
    writer when the service stops), as an error with its traceback."""
    try:
        await job()
    except asyncio.CancelledError:
        pass  # the stop: the next start does what is left
    except Exception as exc:
        log.error(what, error=error_line(exc))
