"""Cleanup policies running inside the service: on their schedules, and on request.

APScheduler's AsyncIOScheduler fires each enabled policy (``coalesce``, one instance
at a time, a misfire grace time: a laptop that slept or a slow purge never stacks
runs). A run asks the database process which sessions match (it also notes when each
match began, for ``cleanup.grace``), then acts: ``stop_session`` over the daemon link
(recorded like any frame), ``purge`` and ``compact`` through the one writer in short
transactions between batches, so recording goes on. Every run writes an audit row
(``recorder cleanup history``) and one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from recorder.cleanup.policy import Conditions, Policy
from recorder.cleanup.settings import trigger
from recorder.pipeline.cleanup_ops import (
    AnswerRequest,
    Compact,
    DatabaseBytes,
    DropDuePartitions,
    GiveBackSpace,
    MatchPolicy,
    OldestFinished,
    PurgeFinish,
    PurgeSome,
    RecordRun,
    TakeRequests,
)
from recorder.protocol import requests
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.capture.link import Link
    from recorder.config import Config
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store
    from recorder.pipeline.ops import Operation

T = TypeVar("T")


class Performer(Protocol):
    """Where operations run: the service's writer, or a database opened by the CLI."""

    async def perform(self, operation: Operation[T]) -> T: ...


class Direct:
    """Operations run at once on a database the CLI opened (no service running)."""

    def __init__(self, db: WriterDatabase, store: Store) -> None:
        self.db = db
        self.store = store

    async def perform(self, operation: Operation[T]) -> T:
        return await operation.run(self.db, self.store)


log = structlog.get_logger("recorder.cleanup")

RETENTION = "storage.retention"
MAX_SIZE = "storage.max_db_size"
# Frames per purge transaction, and free pages given back per vacuum step.
PURGE_CHUNK = 2000
VACUUM_PAGES = 2000
MISFIRE_GRACE = 3600


def policies_of(config: Config) -> list[Policy]:
    """The configured policies, and the one ``storage.retention`` stands for."""
    found = list(config.cleanup.policies)
    retention = config.storage.retention_s
    if retention is not None:
        found.append(Policy(RETENTION, "every 1h", "purge", Conditions(ended_before=retention)))
    return found


@dataclass
class Run:
    """One run's audit record, filled in as it goes."""

    policy: Policy
    trigger: str
    dry_run: bool
    started_us: int
    matched: int = 0
    actions: list[dict[str, Any]] | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        actions = self.actions or []
        return {
            "policy": self.policy.name,
            "action": self.policy.action,
            "trigger": self.trigger,
            "dry_run": int(self.dry_run),
            "started_us": self.started_us,
            "ended_us": now_us(),
            "matched": self.matched,
            "acted": sum(1 for a in actions if a.get("done")),
            "actions": json.dumps(actions, ensure_ascii=False),
            "error": self.error,
        }


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
        self.link = link
        # What a stop_session run says when there is no link to send it on.
        self.no_link = no_link
        self.policies = {p.name: p for p in policies_of(config)}
        self.runs = 0
        self._scheduler: Any = None
        self._lock = asyncio.Lock()
        self._requested: set[asyncio.Task[None]] = set()

    @property
    def wanted(self) -> bool:
        return bool(self.policies) or self.config.storage.max_db_bytes is not None

    @property
    def scheduled(self) -> bool:
        """Whether its schedule is running (started, not stopped)."""
        return self._scheduler is not None

    def start(self) -> None:
        """Schedule every enabled policy (the caller checked :attr:`wanted`)."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        # A poll that finds the previous one still waiting for the writer is skipped
        # by design (coalesce, one at a time): no warning line for it.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        scheduler = AsyncIOScheduler(timezone=UTC)
        options = {"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE}
        for policy in self.policies.values():
            if policy.enabled:
                scheduler.add_job(
                    self._scheduled, trigger(policy), args=(policy,), id=policy.name, **options
                )
        if self.config.storage.max_db_bytes is not None:
            scheduler.add_job(
                self.keep_under_size, IntervalTrigger(minutes=10), id=MAX_SIZE, **options
            )
        poll = IntervalTrigger(seconds=self.config.cleanup.poll)
        scheduler.add_job(self.take_requests, poll, id="requests", **options)
        scheduler.start()
        self._scheduler = scheduler

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
            # The service is stopping: what is done is done, the rest waits for the
            # next run (a purge picks up where it stopped).
            log.info("cleanup run interrupted by the stop", policy=policy.name)

    # --- runs -----------------------------------------------------------------------

    async def run(
        self, policy: Policy, *, dry_run: bool | None = None, trigger: str = "schedule"
    ) -> int:
        """Run one policy now; returns its audit row's id."""
        dry = policy.dry_run if dry_run is None else dry_run
        async with self._lock:
            run = Run(policy, trigger, dry, now_us())
            started = time.monotonic()
            try:
                run.actions = []
                if policy.name == RETENTION and not dry and policy.when.ended_before is not None:
                    # PostgreSQL: months entirely past the retention go whole first.
                    cutoff = run.started_us - int(policy.when.ended_before * 1e6)
                    for name, count in await self.writer.perform(DropDuePartitions(cutoff)):
                        run.actions.append(
                            {"partition": name, "result": f"dropped {count} frames", "done": True}
                        )
                decisions = await self.writer.perform(
                    MatchPolicy(policy, run.started_us, self.config.cleanup.grace, not dry)
                )
                run.matched = len(decisions)
                for decision in decisions:
                    if decision.verdict != "act":
                        run.actions.append(
                            {"session": decision.session_id, "result": decision.verdict}
                        )
                    elif dry:
                        run.actions.append(
                            {"session": decision.session_id, "result": f"would {policy.action}"}
                        )
                    else:
                        run.actions.append(await self._act(policy.action, decision.session_id))
                if (
                    not dry
                    and any(a.get("done") for a in run.actions)
                    and policy.action != "stop_session"
                ):
                    await self._give_back_space()
            except Exception as exc:  # recorded, logged, and the service goes on
                run.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            row = run.row()
            run_id = await self.writer.perform(RecordRun(row))
            self.runs += 1
        log.info(
            "cleanup run",
            policy=policy.name,
            action=policy.action,
            trigger=trigger,
            dry_run=dry,
            matched=run.matched,
            acted=row["acted"],
            error=run.error,
            seconds=round(time.monotonic() - started, 3),
        )
        return run_id

    async def _act(self, action: str, session_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"session": session_id}
        try:
            if action == "stop_session":
                sent = self.link is not None and await self.link.request(
                    requests.stop_session(session_id)
                )
                entry.update(result="requested" if sent else f"skipped: {self.no_link}", done=sent)
            elif action == "purge":
                frames, size = await self.purge(session_id)
                entry.update(result=f"purged {frames} frames", done=True, bytes=size)
            else:
                replaced, written = await self.writer.perform(Compact(session_id))
                entry.update(result=f"compacted {replaced} chunks into {written} frames", done=True)
        except Exception as exc:
            entry.update(result=f"failed: {type(exc).__name__}: {exc}".splitlines()[0], done=False)
        return entry

    async def purge(self, session_id: str) -> tuple[int, int]:
        """A session's frames in short transactions, then its index rows: how many
        frames went, and their payload bytes."""
        touched: set[int] = set()
        total = size = 0
        while True:
            deleted, freed, connections = await self.writer.perform(
                PurgeSome(session_id, PURGE_CHUNK)
            )
            if not deleted:
                break
            total += deleted
            size += freed
            touched.update(connections)
        await self.writer.perform(PurgeFinish(session_id, tuple(sorted(touched))))
        return total, size

    async def _give_back_space(self) -> None:
        left = await self.writer.perform(GiveBackSpace(VACUUM_PAGES))
        while left > 0:
            before, left = left, await self.writer.perform(GiveBackSpace(VACUUM_PAGES))
            if left >= before:
                break  # nothing freed this round: another round would free nothing either

    async def keep_under_size(self) -> None:
        """``storage.max_db_size``: the oldest finished sessions go until it fits."""
        limit = self.config.storage.max_db_bytes
        if limit is None or await self.writer.perform(DatabaseBytes()) <= limit:
            return
        policy = Policy(MAX_SIZE, "every 10m", "purge")
        async with self._lock:
            run = Run(policy, "schedule", False, now_us(), actions=[])
            assert run.actions is not None
            # PostgreSQL's size does not shrink when rows go (VACUUM reuses the space
            # later), so what must go is worked out once and counted as it goes.
            excess = await self.writer.perform(DatabaseBytes()) - limit
            freed = 0
            tried: set[str] = set()  # a purge that failed is not tried again in this run
            fits = False
            while not fits:
                found = await self.writer.perform(OldestFinished(len(tried) + 20))
                oldest = [s for s in found if s.id not in tried]
                if not oldest:
                    run.error = "over storage.max_db_size, with nothing finished left to purge"
                    break
                for session in oldest:
                    tried.add(session.id)
                    entry = await self._act("purge", session.id)
                    run.actions.append(entry)
                    run.matched += 1
                    freed += entry.get("bytes", 0)
                    fits = freed >= excess or await self.writer.perform(DatabaseBytes()) <= limit
                    if fits:
                        break
            await self._give_back_space()
            await self.writer.perform(RecordRun(run.row()))
        log.info(
            "cleanup run", policy=MAX_SIZE, action="purge", matched=run.matched, error=run.error
        )

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
            except asyncio.CancelledError:
                ids = None
            result = json.dumps(
                {"runs": ids} if ids is not None else {"error": "the recorder stopped first"}
            )
        await self.writer.perform(AnswerRequest(request_id, now_us(), result))
