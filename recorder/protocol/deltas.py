"""What one batch of frames changes in a session's or a task's row, and how that
merges with the row already stored: the rules the database process applies, pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from recorder.protocol.statuses import TERMINAL_STATUSES


@dataclass(slots=True)
class SessionDelta:
    """What a batch of frames says about one session; None means "no news".

    A session's row is created only by a frame showing that the session exists
    (``creates``): one that carries the session object, or a stream or tool frame
    from the daemon. Requests sent to the daemon, and its task and error replies,
    only update a session already known: asking about ``session_nope`` creates
    nothing. ``task_id``/``task_description`` keep the session's first task: the
    daemon overwrites ``session.task.description`` with each later task's text.
    """

    # Fields that replace the stored value when the delta has one; of those, the ones
    # a stored value keeps (the session's first task).
    NEWS: ClassVar[tuple[str, ...]] = (
        "orchestrator_id",
        "session_type",
        "status",
        "task_id",
        "task_description",
        "started_at_us",
        "ended_at_us",
        "last_error",
    )
    KEPT: ClassVar[frozenset[str]] = frozenset({"task_id", "task_description"})

    first_seen_us: int
    last_seen_us: int
    frame_count: int = 0
    creates: bool = False
    orchestrator_id: str | None = None
    session_type: str | None = None
    status: str | None = None
    task_id: str | None = None
    task_description: str | None = None
    started_at_us: int | None = None
    ended_at_us: int | None = None
    last_error: str | None = None
    # When, on the recorder's clock, the status this delta ends with became terminal
    # (None while it is not). Merged by :func:`finished_at`, not as news.
    finished_us: int | None = None
    # Whether the batch saw a status that is not terminal: a session that runs again
    # ends anew, whatever end time is stored.
    ran: bool = False
    # The batch's last frame showing work (see _WORK_FROM_DAEMON), and the first status
    # a session object showed, with its time: it is work too when it differs from the
    # stored row's. Merged by :func:`active_at`.
    active_us: int | None = None
    first_status: str | None = None
    first_status_us: int | None = None

    def set_status(self, status: str, at_us: int) -> None:
        """A status seen at ``at_us``: the first terminal one of a run of them dates
        the session's end."""
        if status not in TERMINAL_STATUSES:
            self.finished_us = None
            self.ran = True
        elif self.status not in TERMINAL_STATUSES or self.finished_us is None:
            self.finished_us = at_us
        self.status = status

    def show_status(self, status: str, at_us: int) -> None:
        """A status the daemon showed in a session object: a change is work."""
        if self.status is None:
            self.first_status, self.first_status_us = status, at_us
        elif status != self.status:
            self.worked(at_us)
        self.set_status(status, at_us)

    def worked(self, at_us: int) -> None:
        if self.active_us is None or at_us > self.active_us:
            self.active_us = at_us


@dataclass(slots=True)
class TaskDelta:
    """What a batch of frames says about one task; None means "no news"."""

    NEWS: ClassVar[tuple[str, ...]] = (
        "description",
        "status",
        "started_at_us",
        "ended_at_us",
        "error",
    )
    # Each task keeps its own text, and the time it first started.
    KEPT: ClassVar[frozenset[str]] = frozenset({"description", "started_at_us"})

    first_seen_us: int
    last_seen_us: int
    frame_count: int = 0
    description: str | None = None
    status: str | None = None
    started_at_us: int | None = None
    ended_at_us: int | None = None
    error: str | None = None


def merged(
    old: Mapping[str, Any] | None, delta: SessionDelta | TaskDelta, *, own: bool = True
) -> dict[str, Any]:
    """A stored row's columns after a batch's delta: seen-times widen, counts add up,
    and each of the delta's ``NEWS`` takes its value where it has one, unless it is
    one of ``KEPT`` and already stored. A session row that is not the merging
    recorder's ``own`` (another ``storage.instance`` stored it) takes none of the
    news: what its recorder's daemon says of it stands."""
    row: dict[str, Any] = {
        "first_seen_us": delta.first_seen_us,
        "last_seen_us": delta.last_seen_us,
        "frame_count": delta.frame_count,
    }
    if old is not None:
        row["first_seen_us"] = min(old["first_seen_us"], delta.first_seen_us)
        row["last_seen_us"] = max(old["last_seen_us"], delta.last_seen_us)
        row["frame_count"] += old["frame_count"]
        if not own:
            for key in (*delta.NEWS, "finished_us", "active_us"):
                row[key] = old.get(key)
            return row
    for key in delta.NEWS:
        new = getattr(delta, key)
        stored = None if old is None else old[key]
        row[key] = stored if stored is not None and (new is None or key in delta.KEPT) else new
    if isinstance(delta, SessionDelta):
        row["finished_us"] = finished_at(old, delta, row["status"], row["last_seen_us"])
        row["active_us"] = active_at(old, delta)
    return row


def finished_at(
    old: Mapping[str, Any] | None, delta: SessionDelta, status: str | None, last_seen_us: int
) -> int | None:
    """When the recorder saw a session end, on its own clock; None while it has not.

    A session that was already finished keeps its time (a stop after it completed
    does not make it younger), unless the batch saw it run again (``ran``: it ended
    anew); otherwise the time the batch saw it become terminal. A terminal status
    with no such time (a row written before this was kept) is dated by the last
    frame seen, which is never before the real end. ``recorder.db.pg_index`` spells
    the same rule in SQL.
    """
    if status not in TERMINAL_STATUSES:
        return None
    if (
        old is not None
        and not delta.ran
        and old["status"] in TERMINAL_STATUSES
        and old["finished_us"] is not None
    ):
        return int(old["finished_us"])
    return delta.finished_us if delta.finished_us is not None else last_seen_us


def active_at(old: Mapping[str, Any] | None, delta: SessionDelta) -> int | None:
    """When the session last showed work, on the recorder's clock: what cleanup's
    ``idle_for`` measures. The batch's work, and its first status when that differs
    from the stored one; a new row without either was at work when first seen.
    ``recorder.db.pg_index`` spells the same rule in SQL.
    """
    shown = None
    if delta.first_status is not None and (old is None or old["status"] != delta.first_status):
        shown = delta.first_status_us
    stored = old.get("active_us") if old is not None else None
    times = [t for t in (stored, delta.active_us, shown) if t is not None]
    if times:
        return max(times)
    return delta.first_seen_us if old is None else None
