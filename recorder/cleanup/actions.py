"""The cleanup's actions, one class each: which matched sessions it leaves alone and
why (its rule), what a run's record says, and the work it does, through the writer
or the daemon link. :data:`ACTIONS` is what a policy may name; the retention and the
size limit are built in (:data:`BUILT_IN`). An action is added here, and only here.

The rules and :func:`decide` are pure; the work goes through an
:class:`~recorder.cleanup.actor.Actor`. The writer's operations are imported where
they run: loading a configuration (which names the actions) must stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from recorder.protocol.policy import Decision, MatchState, Policy, SessionFacts, matches
from recorder.protocol.statuses import LOST_STATUS

if TYPE_CHECKING:
    from recorder.cleanup.actor import Actor, Run

# Frames per purge (and compaction) transaction.
PURGE_CHUNK = 2000


class Action:
    """What a policy does to each session it matches."""

    name: ClassVar[str]
    # What the audit row calls it (the built-in ones purge).
    verb: ClassVar[str]
    # Removes recorded data: never from a session still active, and only once it has
    # matched for cleanup.grace.
    destructive: ClassVar[bool] = False

    def leaves(
        self, session: SessionFacts, state: MatchState | None, now_us: int, grace: float
    ) -> str | None:
        """Why this action leaves a matched session alone now, or None to act on it."""
        if not self.destructive:
            return None
        if not session.finished:
            return "active"
        first = state.first_matched_us if state is not None else now_us
        if grace > 0 and now_us - first < grace * 1e6:
            return "grace"
        return None

    def said(self, verdict: str) -> str:
        """A run's record of a session: why it was left alone, or (dry) what it would do."""
        return f"would {self.verb}" if verdict == "act" else verdict

    async def act(self, actor: Actor, run: Run, session_id: str) -> dict[str, Any]:
        """Do it to one session; what the run's record says of it."""
        raise NotImplementedError

    async def steps(self, actor: Actor, run: Run) -> None:
        """A run: match, then act on each session the rule does not leave alone."""
        for decision in await actor.match(run, self):
            sid = decision.session_id
            if decision.verdict != "act" or run.dry_run:
                run.leave(sid, self.said(decision.verdict))
            else:
                run.actions.append(await actor.on_session(run, sid, self))
        if self.destructive and run.acted:
            await actor.give_back_space()


class StopSession(Action):
    """``stop_session`` over the daemon link, recorded like any frame. A session that
    goes on matching after its stop (the daemon refused or ignored it) is asked again
    after each of :attr:`DELAYS`, then given up: a daemon that answers every stop with
    a 10 MB error is not asked every run."""

    name = verb = "stop_session"
    DELAYS: ClassVar[tuple[float, ...]] = (60.0, 240.0, 960.0)
    ATTEMPTS: ClassVar[int] = len(DELAYS) + 1

    def leaves(
        self, session: SessionFacts, state: MatchState | None, now_us: int, grace: float
    ) -> str | None:
        if session.status == LOST_STATUS:
            return "unknown"  # the daemon no longer knows it: nothing to stop
        if state is not None and state.attempts >= self.ATTEMPTS:
            return "given up"
        if state is not None and state.retry_us is not None and now_us < state.retry_us:
            return "waiting"
        return None

    def said(self, verdict: str) -> str:
        if verdict == "given up":
            return f"given up: still matching after {self.ATTEMPTS} stop requests"
        if verdict == "waiting":
            return "waiting: a stop was sent; the next waits for its backoff"
        return super().said(verdict)

    async def act(self, actor: Actor, run: Run, session_id: str) -> dict[str, Any]:
        from recorder.pipeline.cleanup_ops import NoteStop
        from recorder.protocol import requests

        if not await actor.send(requests.stop_session(session_id)):
            return {"result": f"skipped: {actor.no_link}", "done": False}
        attempts = await actor.perform(NoteStop(run.policy.name, session_id, self.DELAYS))
        if attempts == 1:
            return {"result": "requested", "done": True}
        return {"result": f"requested again ({attempts} of {self.ATTEMPTS})", "done": True}


class Purge(Action):
    """A finished session's frames in transactions of :data:`PURGE_CHUNK` between
    batches of new frames, then its index rows and the connections it emptied."""

    name = verb = "purge"
    destructive = True

    async def act(self, actor: Actor, run: Run, session_id: str) -> dict[str, Any]:
        from recorder.db.cleanup import Work
        from recorder.pipeline.cleanup_ops import PurgeFinish, PurgeSome

        work = Work(session_id, run.id, run.through_id)
        touched: set[int] = set()
        total = size = 0
        while True:
            deleted, freed, connections = await actor.perform(PurgeSome(work, PURGE_CHUNK))
            if not deleted:
                break
            total += deleted
            size += freed
            touched.update(connections)
        await actor.perform(PurgeFinish(work, tuple(sorted(touched))))
        return {"result": f"purged {total} frames", "done": True, "bytes": size}


class Compact(Action):
    """A finished session's stream chunks folded, per connection, into frames of their
    text, in the purge's steps (:mod:`recorder.db.compaction`)."""

    name = verb = "compact"
    destructive = True

    async def act(self, actor: Actor, run: Run, session_id: str) -> dict[str, Any]:
        from recorder.db.cleanup import Work
        from recorder.pipeline.cleanup_ops import CompactSome

        work = Work(session_id, run.id, run.through_id)
        step = await actor.perform(CompactSome(work, 0, PURGE_CHUNK, {}))
        replaced, written = step.replaced, step.written
        while not step.done:
            opened = dict(step.open_frames)
            step = await actor.perform(CompactSome(work, step.after_id, PURGE_CHUNK, opened))
            replaced += step.replaced
            written += step.written
        return {"result": f"compacted {replaced} chunks into {written} frames", "done": True}


class Retention(Purge):
    """``storage.retention``: a purge of what ended before it. On PostgreSQL, months
    entirely past it first go whole (their partitions dropped), unless they hold
    frames of a session that is not due."""

    name = "retention"

    async def steps(self, actor: Actor, run: Run) -> None:
        from recorder.pipeline.cleanup_ops import DropDuePartitions

        before = run.policy.when.ended_before
        if not run.dry_run and before is not None:
            cutoff = run.started_us - int(before * 1e6)
            for name, count in await actor.perform(DropDuePartitions(cutoff)):
                run.actions.append(
                    {"partition": name, "result": f"dropped {count} frames", "done": True}
                )
        await super().steps(actor, run)


class SizeLimit(Purge):
    """``storage.max_db_size``: this recorder's oldest finished sessions go until the
    database fits (on PostgreSQL, the size of its frames: see
    :func:`recorder.db.space.database_bytes`)."""

    name = "max_db_size"

    async def over(self, actor: Actor) -> bool:
        from recorder.pipeline.cleanup_ops import DatabaseBytes

        limit = actor.max_db_bytes
        return limit is not None and await actor.perform(DatabaseBytes()) > limit

    async def steps(self, actor: Actor, run: Run) -> None:
        from recorder.pipeline.cleanup_ops import OldestFinished

        tried: set[str] = set()  # a purge that failed is not tried again in this run
        while await self.over(actor):
            found = await actor.perform(OldestFinished(len(tried) + 20))
            oldest = next((s for s in found if s.id not in tried), None)
            if oldest is None:
                run.error = "over storage.max_db_size, with nothing finished left to purge"
                return
            tried.add(oldest.id)
            run.actions.append(await actor.on_session(run, oldest.id, self))
            run.matched += 1
        if run.acted:
            await actor.give_back_space()


ACTIONS: dict[str, Action] = {a.name: a for a in (StopSession(), Purge(), Compact())}
BUILT_IN: dict[str, Action] = {a.name: a for a in (Retention(), SizeLimit())}


def action_of(policy: Policy) -> Action:
    """The action a policy names; a name no action has is an error, never another's."""
    found = ACTIONS.get(policy.action) or BUILT_IN.get(policy.action)
    if found is None:
        raise ValueError(f"no cleanup action named {policy.action!r}")
    return found


def decide(
    policy: Policy,
    sessions: Iterable[SessionFacts],
    now_us: int,
    *,
    pinned: frozenset[str] = frozenset(),
    matched: Mapping[str, MatchState] | None = None,
    grace: float = 0.0,
) -> list[Decision]:
    """Every session the policy matches, newest first, and what to do with it: pinned
    ones and the ``keep_last`` newest are spared, then the action's rule decides."""
    action = action_of(policy)
    found = sorted(
        (s for s in sessions if matches(policy.when, s, now_us)),
        key=lambda s: (s.started_us, s.id),
        reverse=True,
    )
    known = matched or {}
    decisions = []
    for rank, session in enumerate(found):
        if session.id in pinned:
            verdict = "pinned"
        elif rank < policy.keep_last:
            verdict = "kept"
        else:
            state = known.get(session.id)
            verdict = action.leaves(session, state, now_us, grace) or "act"
        decisions.append(Decision(session.id, verdict))
    return decisions
