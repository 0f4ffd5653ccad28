"""The cleanup's operations on the writer line: each a small class that runs one of
:mod:`recorder.db.cleanup`'s functions in the database process, between batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recorder.pipeline.ops import Operation
from recorder.protocol.policy import Conditions, Decision, SessionFacts
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.db.cleanup import Work
    from recorder.db.compaction import CompactStep
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store


@dataclass(frozen=True, slots=True)
class MatchPolicy(Operation[list[Decision]]):
    """A policy's decisions over this recorder's sessions, made where they are:
    ``decide(facts, pinned=..., matched=...)`` is the action's rule (a picklable
    function of the cleanup's, handed down: this layer knows no action)."""

    policy: str
    conditions: Conditions
    now_us: int
    decide: Callable[..., list[Decision]]
    remember: bool
    # The run's audit row, which says how many matched as soon as they have.
    run_id: int | None = None

    async def run(self, db: WriterDatabase, store: Store) -> list[Decision]:
        from recorder.db.cleanup import match_policy

        return await db.run(
            match_policy,
            self.policy,
            self.conditions,
            self.now_us,
            self.decide,
            self.remember,
            store.instance,
            self.run_id,
        )


@dataclass(frozen=True, slots=True)
class NoteStop(Operation[int]):
    """A stop_session request went out: count it, and when the next may go (after
    ``delays[n - 1]`` seconds, the n-th sent). Answers the count."""

    policy: str
    session_id: str
    delays: tuple[float, ...]

    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.cleanup import note_stop

        return await db.run(note_stop, self.policy, self.session_id, now_us(), self.delays)


@dataclass(frozen=True, slots=True)
class PurgeSome(Operation[tuple[int, int, list[int]]]):
    """Up to ``limit`` frames of a finished session: one short transaction, which also
    counts them on the run's audit row. Answers how many went, their payload bytes,
    and the connections they were on."""

    work: Work
    limit: int

    async def run(self, db: WriterDatabase, store: Store) -> tuple[int, int, list[int]]:
        from recorder.db.cleanup import purge_some

        result = await db.run(purge_some, self.work, self.limit, now_us())
        db.changed()  # deletes and page moves grow the WAL too
        return result


@dataclass(frozen=True, slots=True)
class PurgeFinish(Operation[int]):
    work: Work
    connection_ids: tuple[int, ...]

    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.cleanup import purge_finish

        result = await db.run(purge_finish, self.work, self.connection_ids)
        db.changed()  # deletes and page moves grow the WAL too
        return result


@dataclass(frozen=True, slots=True)
class CompactSome(Operation["CompactStep"]):
    """One bounded step of a session's compaction (see :mod:`recorder.db.compaction`)."""

    work: Work
    after_id: int
    limit: int
    open_frames: dict[tuple[int, str | None, str], int]

    async def run(self, db: WriterDatabase, store: Store) -> CompactStep:
        from recorder.db.compaction import compact_some

        result = await db.run(
            compact_some, self.work, self.after_id, self.limit, self.open_frames, now_us()
        )
        db.changed()  # deletes and page moves grow the WAL too
        return result


@dataclass(frozen=True, slots=True)
class GiveBackSpace(Operation[int]):
    pages: int

    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.space import give_back_space

        result = await db.run(give_back_space, self.pages)
        db.changed()  # deletes and page moves grow the WAL too
        return result


@dataclass(frozen=True, slots=True)
class DatabaseBytes(Operation[int]):
    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.space import database_bytes

        return await db.run(database_bytes)


@dataclass(frozen=True, slots=True)
class OldestFinished(Operation[list[SessionFacts]]):
    limit: int

    async def run(self, db: WriterDatabase, store: Store) -> list[SessionFacts]:
        from recorder.db.cleanup import oldest_finished

        return await db.run(oldest_finished, self.limit, store.instance)


@dataclass(frozen=True, slots=True)
class StartRun(Operation[tuple[int, int]]):
    """A run's audit row before it acts; this recorder's runs still marked running that
    are not ``alive`` become interrupted. Answers the row's id, and the newest frame's
    (what the run may touch: frames after it are the next run's)."""

    run_row: dict[str, Any]
    alive: tuple[int, ...]

    async def run(self, db: WriterDatabase, store: Store) -> tuple[int, int]:
        from recorder.db.cleanup_records import start_run

        return await db.run(start_run, {**self.run_row, "instance": store.instance}, self.alive)


@dataclass(frozen=True, slots=True)
class EndInterrupted(Operation[int]):
    """This recorder's runs still marked running that are not ``alive``: interrupted."""

    alive: tuple[int, ...]

    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.cleanup_records import end_interrupted

        return await db.run(end_interrupted, store.instance, self.alive)


@dataclass(frozen=True, slots=True)
class FinishRun(Operation[None]):
    run_id: int
    values: dict[str, Any]

    async def run(self, db: WriterDatabase, store: Store) -> None:
        from recorder.db.cleanup_records import finish_run

        await db.run(finish_run, self.run_id, self.values)


@dataclass(frozen=True, slots=True)
class TakeRequests(Operation[list[tuple[int, str | None, bool]]]):
    now_us: int

    async def run(self, db: WriterDatabase, store: Store) -> list[tuple[int, str | None, bool]]:
        from recorder.db.cleanup_records import take_requests

        return await db.run(take_requests, self.now_us, store.instance)


@dataclass(frozen=True, slots=True)
class AnswerRequest(Operation[None]):
    request_id: int
    now_us: int
    result: str

    async def run(self, db: WriterDatabase, store: Store) -> None:
        from recorder.db.cleanup_records import answer_request

        await db.run(answer_request, self.request_id, self.now_us, self.result)


@dataclass(frozen=True, slots=True)
class DropDuePartitions(Operation[list[tuple[str, int]]]):
    """PostgreSQL retention: whole monthly partitions of frames, where they are due."""

    before_us: int

    async def run(self, db: WriterDatabase, store: Store) -> list[tuple[str, int]]:
        from recorder.db.partitions import drop_due

        return await db.run(drop_due, self.before_us, store.instance)
