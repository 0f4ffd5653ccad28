"""The operations that travel down the writer line, one small class per kind of work.

The service sends an operation with a request id; the classifier prepares it
(:meth:`Operation.prepared`: a batch of frames becomes rows and index deltas) and
passes it on; the database process runs it (:meth:`Operation.run`) and answers.
Every kind of database work is one class here, so adding one touches no dispatch
code, as with Home Assistant's recorder tasks. Operations are pickled between
processes: they hold plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import structlog

from recorder.pipeline.faults import Outage, raised_at, short_error, stop_if_corrupt
from recorder.protocol.frames import FrameTuple
from recorder.protocol.index import IndexBatch

if TYPE_CHECKING:
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import FrameRow, Store
    from recorder.pipeline.classifier import Classifier

log = structlog.get_logger("recorder.pipeline")
T = TypeVar("T")
# A batch's answer counts the alerts it stored under this key (no connection is 0).
ALERTS = (0, "alerts")


class Operation(Generic[T]):
    """One piece of database work; ``T`` is what the database process answers."""

    __slots__ = ()
    # The database process stops reading after answering this one.
    last: ClassVar[bool] = False

    def prepared(self, classifier: Classifier) -> Operation[T]:
        """What the classifier process passes on to the database process."""
        return self

    async def run(self, db: WriterDatabase, store: Store) -> T:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class OpenConnection(Operation[int]):
    """A new connection row; answers its id."""

    role: str
    url: str
    opened_us: int
    client_addr: str | None = None

    async def run(self, db: WriterDatabase, store: Store) -> int:
        return await db.run(
            store.open_connection, self.role, self.url, self.opened_us, self.client_addr
        )


@dataclass(frozen=True, slots=True)
class CloseConnection(Operation[None]):
    connection_id: int
    closed_us: int
    code: int | None
    reason: str | None
    closed_by: str | None
    error: str | None

    def prepared(self, classifier: Classifier) -> CloseConnection:
        classifier.attribution.forget(self.connection_id)
        if classifier.rules is not None:
            classifier.rules.forget(self.connection_id)
        return self

    async def run(self, db: WriterDatabase, store: Store) -> None:
        close = partial(
            store.close_connection,
            code=self.code,
            reason=self.reason,
            closed_by=self.closed_by,
            error=self.error,
        )
        await db.run(close, self.connection_id, self.closed_us)


@dataclass(frozen=True, slots=True)
class CloseDangling(Operation[int]):
    """Connections a previous run left open: closed now; answers how many."""

    now_us: int

    async def run(self, db: WriterDatabase, store: Store) -> int:
        return await db.run(store.close_dangling, self.now_us)


@dataclass(frozen=True, slots=True)
class ActiveSessions(Operation[list[str]]):
    """The ids of sessions the index believes active, most recently seen first."""

    async def run(self, db: WriterDatabase, store: Store) -> list[str]:
        return await db.run(store.active_session_ids)


@dataclass(frozen=True, slots=True)
class Stop(Operation[None]):
    """The last operation: the database process closes its connection after it."""

    last: ClassVar[bool] = True

    async def run(self, db: WriterDatabase, store: Store) -> None:
        return None


@dataclass(frozen=True, slots=True)
class WriteFrames(Operation[dict[tuple[int, str], tuple[int, int]]]):
    """A batch as the service ships it; the classifier turns it into :class:`WriteRows`."""

    frames: list[FrameTuple]

    def prepared(self, classifier: Classifier) -> WriteRows:
        try:
            return WriteRows(*classifier.rows_and_index(self.frames))
        except Exception as exc:
            # Classification is meant never to raise, whatever the frames; should
            # some input still make it, the frames are recorded unclassified rather
            # than the classifier process dying with the batch and the ones behind it.
            log.error(
                "cannot classify a batch; recording its frames unclassified",
                error=raised_at(exc),
                frames=len(self.frames),
            )
            return WriteRows(*classifier.unclassified(self.frames))


@dataclass(frozen=True, slots=True)
class WriteRows(Operation[dict[tuple[int, str], tuple[int, int]]]):
    """A classified batch: its rows and index deltas, committed in one transaction.

    Answers frames and bytes per (connection, direction): the service's metrics.
    """

    rows: list[FrameRow]
    index: IndexBatch

    async def run(self, db: WriterDatabase, store: Store) -> dict[tuple[int, str], tuple[int, int]]:
        return (await write_together(db, store, [self]))[0]

    def tally(self) -> dict[tuple[int, str], tuple[int, int]]:
        """Frames and bytes per (connection, direction): what :meth:`run` answers; and
        under :data:`ALERTS`, how many alerts the batch stored (the deliverer is woken)."""
        tally: dict[tuple[int, str], tuple[int, int]] = {}
        for (cid, _, direction, _), (n, size) in self.index.tallies.items():
            old = tally.get((cid, direction), (0, 0))
            tally[(cid, direction)] = (old[0] + n, old[1] + size)
        if self.index.alerts:
            tally[ALERTS] = (len(self.index.alerts), 0)
        return tally


async def write_together(
    db: WriterDatabase, store: Store, batches: list[WriteRows]
) -> list[dict[tuple[int, str], tuple[int, int]]]:
    """Consecutive batches committed in one transaction (:meth:`Store.write_batches`),
    kept and retried while the database fails; answers each batch's frames and bytes
    per (connection, direction): the service's metrics."""
    parts: list[tuple[list[FrameRow], IndexBatch]] = [(b.rows, b.index) for b in batches]
    outage = Outage(sum(len(b.rows) for b in batches))
    stripped = False
    while True:
        try:
            if outage.began and await db.run(store.holds, parts):
                pass  # committed before the connection dropped: only the answer was lost
            else:
                await db.run(store.write_batches, parts)
        except Exception as exc:
            from recorder.db.engine import refusal

            refused = refusal(exc)
            if refused is not None and len(batches) > 1 and not outage.began:
                # Batches written together: find the refused one by writing each alone
                # (the group's transaction was rolled back whole), so that the others
                # keep their index. (After other failures, whose end is still to be
                # logged here, the group is stripped whole instead.)
                return [t for b in batches for t in await write_together(db, store, [b])]
            if refused is not None and not stripped:
                # The same batch would be refused on every retry, and everything queued
                # behind it would wait: the classifier let through a value the database
                # will not take (see recorder.protocol.classify.storable).
                parts = _without_index(parts, refused, outage.frames)
                stripped = True
                continue
            stop_if_corrupt(exc)
            await outage.retry_after(db, refused or short_error(exc))
        else:
            outage.ended()
            for batch in batches:
                db.wrote(batch.rows)
            return [batch.tally() for batch in batches]


def _without_index(
    parts: list[tuple[list[FrameRow], IndexBatch]], refused: str, frames: int
) -> list[tuple[list[FrameRow], IndexBatch]]:
    """The frames of batches the database refused, kept without what was read from
    them (their index deltas but the counts)."""
    from recorder.db.write import unindexed

    log.error(
        "database refused a value read from the frames; writing them without their index",
        error=refused,
        frames=frames,
        # What the frames said is not stored, nor the alerts read from it.
        alerts_dropped=sum(len(index.alerts) for _, index in parts),
    )
    return [(unindexed(r), index.counts_only()) for r, index in parts]


@dataclass(frozen=True, slots=True)
class Ping(Operation[None]):
    """Through both writer processes and back: they are alive and answering."""

    async def run(self, db: WriterDatabase, store: Store) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Heartbeat(Operation[None]):
    """The service says what it is doing (``recorder status`` reads it)."""

    name: str
    pid: int
    host: str
    started_us: int
    at_us: int
    state: str

    async def run(self, db: WriterDatabase, store: Store) -> None:
        from recorder.db.instances import heartbeat

        await db.run(
            heartbeat, self.name, self.pid, self.host, self.started_us, self.at_us, self.state
        )
