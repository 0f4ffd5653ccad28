"""The cleanup's operations on the writer line: each a small class that runs one of
:mod:`recorder.db.cleanup`'s functions in the database process, between batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recorder.cleanup.policy import Decision, Policy, SessionFacts
from recorder.pipeline.ops import Operation

if TYPE_CHECKING:
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store


@dataclass(frozen=True, slots=True)
class MatchPolicy(Operation[list[Decision]]):
    policy: Policy
    now_us: int
    grace: float
    remember: bool

    async def run(self, db: WriterDatabase, store: Store) -> list[Decision]:
        from recorder.db.cleanup import match_policy

        return await db.run(
            match_policy, self.policy, self.now_us, self.grace, self.remember, store.instance
        )


@dataclass(frozen=True, slots=True)
class PurgeSome(Operation[tuple[int, int, list[int]]]):
    """Up to ``limit`` frames of a finished session: one short transaction. Answers how
    many went, their payload bytes, and the connections they were on."""

    session_id: str
    limit: int

    async def run(self, db: WriterDatabase, store: Store) -> tuple[int, int, list[int]]:
        from recorder.db.cleanup import purge_some

        result = await db.run(purge_some, self.session_id, self.limit)
        db.changed()  # deletes and page moves grow the WAL too
        return result


@dataclass(frozen=True, slots=True)
class PurgeFinish(Operation[int]):
    session_id: str
    connection_ids: tuple[int, ...]

    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.cleanup import purge_finish

        result = await db.run(purge_finish, self.session_id, self.connection_ids)
        db.changed()  # deletes and page moves grow the WAL too
        return result


@dataclass(frozen=True, slots=True)
class Compact(Operation[tuple[int, int]]):
    session_id: str

    async def run(self, db: WriterDatabase, store: Store) -> tuple[int, int]:
        from recorder.db.cleanup import compact

        result = await db.run(compact, self.session_id)
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

        return await db.run(oldest_finished, self.limit)


@dataclass(frozen=True, slots=True)
class RecordRun(Operation[int]):
    run_row: dict[str, Any]

    async def run(self, db: WriterDatabase, store: Store) -> int:
        from recorder.db.cleanup_records import record_run

        return await db.run(record_run, {**self.run_row, "instance": store.instance})


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
        from recorder.db.cleanup import drop_due_partitions

        return await db.run(drop_due_partitions, self.before_us)
