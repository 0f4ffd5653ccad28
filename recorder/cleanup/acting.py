"""What a cleanup run does, and the record it keeps: its audit row, filled in as it
goes, and the actions on one session each (a stop request over the daemon link;
a purge or a compaction through the writer, in steps between its batches)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from recorder.cleanup.policy import STOP_ATTEMPTS, Policy
from recorder.pipeline.cleanup_ops import (
    CompactSome,
    GiveBackSpace,
    NoteStop,
    PurgeFinish,
    PurgeSome,
)
from recorder.protocol import requests
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


# Frames per purge (and compaction) transaction, and free pages given back per step.
PURGE_CHUNK = 2000
VACUUM_PAGES = 2000


@dataclass
class Run:
    """One run's audit record, filled in as it goes."""

    policy: Policy
    trigger: str
    dry_run: bool
    started_us: int
    id: int | None = None
    matched: int = 0
    actions: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def start_row(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "action": self.policy.action,
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
        return {
            "ended_us": now_us(),
            "matched": self.matched,
            "acted": self.acted,
            "actions": json.dumps(self.actions, ensure_ascii=False),
            "error": error,
        }


class Actor:
    """Acts on one session at a time for the runs of a :class:`~recorder.cleanup.jobs.Cleanup`."""

    def __init__(self, writer: Performer, link: Link | None, no_link: str, busy: set[str]) -> None:
        self.writer = writer
        self.link = link
        # What a stop_session run says when there is no link to send it on.
        self.no_link = no_link
        # Sessions a purge or compaction is working on: another run leaves them alone.
        self.busy = busy

    async def act(self, run: Run, session_id: str) -> dict[str, Any]:
        action = run.policy.action
        entry: dict[str, Any] = {"session": session_id}
        if action != "stop_session" and session_id in self.busy:
            return {**entry, "result": "skipped: another run is working on it", "done": False}
        self.busy.add(session_id)
        try:
            if action == "stop_session":
                entry.update(await self._stop(run.policy, session_id))
            elif action == "purge":
                frames, size = await self.purge(session_id, run.id)
                entry.update(result=f"purged {frames} frames", done=True, bytes=size)
            elif action == "compact":
                replaced, written = await self.compact(session_id, run.id)
                entry.update(result=f"compacted {replaced} chunks into {written} frames", done=True)
            else:
                raise ValueError(f"no such cleanup action: {action!r}")
        except Exception as exc:
            entry.update(result=f"failed: {error_line(exc)}", done=False)
        finally:
            self.busy.discard(session_id)
        return entry

    async def _stop(self, policy: Policy, session_id: str) -> dict[str, Any]:
        """One stop_session request, counted for its backoff; the link's send is
        bounded, so a daemon that stops reading costs this run that long, no more."""
        sent = self.link is not None and await self.link.request(requests.stop_session(session_id))
        if not sent:
            return {"result": f"skipped: {self.no_link}", "done": False}
        attempts = await self.writer.perform(NoteStop(policy.name, session_id))
        said = "requested" if attempts == 1 else f"requested again ({attempts} of {STOP_ATTEMPTS})"
        return {"result": said, "done": True}

    async def purge(self, session_id: str, run_id: int | None = None) -> tuple[int, int]:
        """A session's frames in short transactions, then its index rows: how many
        frames went, and their payload bytes."""
        touched: set[int] = set()
        total = size = 0
        while True:
            deleted, freed, connections = await self.writer.perform(
                PurgeSome(session_id, PURGE_CHUNK, run_id)
            )
            if not deleted:
                break
            total += deleted
            size += freed
            touched.update(connections)
        await self.writer.perform(PurgeFinish(session_id, tuple(sorted(touched)), run_id))
        return total, size

    async def compact(self, session_id: str, run_id: int | None = None) -> tuple[int, int]:
        """A session's chunks folded into compacted frames, in steps of the purge's
        size between batches: (chunks replaced, frames written)."""
        step = await self.writer.perform(CompactSome(session_id, 0, PURGE_CHUNK, {}, run_id))
        replaced, written = step.replaced, step.written
        while not step.done:
            step = await self.writer.perform(
                CompactSome(session_id, step.after_id, PURGE_CHUNK, dict(step.open_frames), run_id)
            )
            replaced += step.replaced
            written += step.written
        return replaced, written

    async def give_back_space(self) -> None:
        left = await self.writer.perform(GiveBackSpace(VACUUM_PAGES))
        while left > 0:
            before, left = left, await self.writer.perform(GiveBackSpace(VACUUM_PAGES))
            if left >= before:
                break  # nothing freed this round: another round would free nothing either


def error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
