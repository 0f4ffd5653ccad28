"""Where a cleanup run's work goes, and the record it keeps: the writer's operations
(in the service, or directly on a database the CLI opened), the daemon link, and the
run's audit row, filled in as it goes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from recorder.cleanup.actions import Action, decide
from recorder.pipeline.cleanup_ops import GiveBackSpace, MatchPolicy
from recorder.protocol.policy import Decision, Policy
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.capture.link import Link
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


# Free pages given back per step.
VACUUM_PAGES = 2000
# Sessions a run's record names per kind of "left alone"; the rest are counted.
LISTED = 100


@dataclass
class Run:
    """One run's audit record, filled in as it goes."""

    policy: Policy
    trigger: str
    dry_run: bool
    started_us: int
    id: int | None = None
    # The newest frame when it began: what it may touch (later frames are the next run's).
    through_id: int = 0
    matched: int = 0
    actions: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    # Sessions left alone, by what the record says of them (see :meth:`leave`).
    left: dict[str, int] = field(default_factory=dict)

    def leave(self, session_id: str, said: str) -> None:
        """A session the run did not act on. The record names the first :data:`LISTED`
        of each kind and counts the rest: 20 000 sessions a stop policy gave up on
        made every run's record 1.9 MB."""
        n = self.left.get(said, 0)
        self.left[said] = n + 1
        if n < LISTED:
            self.actions.append({"session": session_id, "result": said})

    def start_row(self, verb: str) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "action": verb,
            "trigger": self.trigger,
            "dry_run": int(self.dry_run),
            "started_us": self.started_us,
            "ended_us": self.started_us,
            "matched": 0,
            "acted": 0,
            "actions": "[]",
        }

    @property
    def acted(self) -> int:
        return sum(1 for a in self.actions if a.get("done"))

    def outcome(self) -> dict[str, Any]:
        """What the audit row says once the run is over. A run whose every action
        failed failed: it says why (a full disk, say), not just "0 acted"."""
        error = self.error
        failed = [str(a["result"]) for a in self.actions if str(a["result"]).startswith("failed")]
        if error is None and failed and not self.acted:
            error = f"every action failed ({len(failed)}); the first: {failed[0][8:]}"
        more = [{"result": said, "more": n - LISTED} for said, n in self.left.items() if n > LISTED]
        return {
            "ended_us": now_us(),
            "matched": self.matched,
            "acted": self.acted,
            "actions": json.dumps(self.actions + more, ensure_ascii=False),
            "error": error,
        }


class Actor:
    """The cleanup's hands: the writer's operations and the daemon link, shared by the
    runs of a :class:`~recorder.cleanup.jobs.Cleanup`."""

    def __init__(
        self,
        writer: Performer,
        link: Link | None,
        *,
        grace: float = 0.0,
        max_db_bytes: int | None = None,
        no_link: str = "the daemon link is down",
    ) -> None:
        self.writer = writer
        self.link = link
        # A destructive action waits until a session has matched this long.
        self.grace = grace
        self.max_db_bytes = max_db_bytes
        # What a stop says when there is no link to send it on.
        self.no_link = no_link

    async def perform(self, operation: Operation[T]) -> T:
        return await self.writer.perform(operation)

    async def send(self, text: str) -> bool:
        """A request to the daemon, recorded like any frame; False when it could not go
        (no link, or a daemon that stopped reading: the link's send is bounded)."""
        return self.link is not None and await self.link.request(text)

    async def match(self, run: Run, action: Action) -> list[Decision]:
        """The run's decisions, made where the sessions are (the database process),
        which remembers when each match began unless the run is dry."""
        now = run.started_us
        decider = partial(decide, run.policy, now_us=now, grace=self.grace)
        policy = run.policy
        match = MatchPolicy(policy.name, policy.when, now, decider, not run.dry_run, run.id)
        decisions = await self.perform(match)
        run.matched = len(decisions)
        return decisions

    async def on_session(self, run: Run, session_id: str, action: Action) -> dict[str, Any]:
        """``action`` on one session: its record, a failure included (the run goes on).
        A session another run holds (the database says which) is left to it."""
        from recorder.db.cleanup import Busy

        entry: dict[str, Any] = {"session": session_id}
        try:
            entry.update(await action.act(self, run, session_id))
        except Busy as exc:
            entry.update(result=f"skipped: {exc}", done=False)
        except Exception as exc:
            entry.update(result=f"failed: {error_line(exc)}", done=False)
        return entry

    async def give_back_space(self) -> None:
        left = await self.perform(GiveBackSpace(VACUUM_PAGES))
        while left > 0:
            before, left = left, await self.perform(GiveBackSpace(VACUUM_PAGES))
            if left >= before:
                break  # nothing freed this round: another round would free nothing either


def error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
