"""A session's course, from its recorded frames: every status the recording saw, in
order, whichever frame carried it; each task's own outcome; the requests the daemon
turned down; what each connection did. Pure, for ``recorder show``.

:class:`~recorder.protocol.story.Teller` folds the session's frames into a
:class:`Course` one at a time, in recording order, with the entries of the
``sessions_list`` replies that named the session among them (:func:`listed`: a
listing names many sessions, so it is no frame of this one, but the status it shows
is one the recording saw). Its memory does not grow with the session.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recorder.protocol.frames import OUT
from recorder.protocol.kept import Kept
from recorder.protocol.statuses import TERMINAL_STATUSES

if TYPE_CHECKING:
    from recorder.protocol.story import StoryFrame

# The type of a frame made of one entry of a sessions_list: its object is
# ``{"session": entry}`` (see :func:`listed`).
LISTED = "sessions_list"
# The frames whose session object carries a status.
STATUS_TYPES = frozenset({"session_status_update", "session_spawned", LISTED})
# Tasks remembered (requests waiting for their reply, outcomes): past this many, the
# oldest is forgotten. A daemon that makes up task ids cannot make them grow.
MAX_TASKS = 10_000
# Request types told apart per connection; the rest are counted under OTHER_REQUESTS.
MAX_ASKED = 8
OTHER_REQUESTS = "(other requests)"
# What the daemon answers a task for a session that is not running.
NOT_RUNNING = "is not running"


@dataclass(frozen=True)
class StatusChange:
    at_us: int
    status: str
    frame_id: int
    # The frame that carried it first: session_status_update, session_spawned or
    # sessions_list, and on which connection.
    source: str = ""
    connection_id: int = 0


@dataclass(frozen=True)
class TaskOutcome:
    """How one task ended, by the frames about it."""

    task_id: str
    # "completed" or "failed" (the daemon's reply), "rejected" (the session was over
    # when the task was asked), or for the session's first task, which gets no reply
    # of its own, the status its run ended in (``from_status``).
    status: str
    at_us: int
    error: str | None = None
    from_status: bool = False


@dataclass
class Conduct:
    """What one connection did in a session."""

    # The session's frames it carried, and the sessions_list replies that named it.
    frames: int = 0
    listed: int = 0
    # Its requests about the session, by type, in the order first sent.
    asked: dict[str, int] = field(default_factory=dict)

    def ask(self, kind: str) -> None:
        if kind not in self.asked and len(self.asked) >= MAX_ASKED:
            kind = OTHER_REQUESTS
        self.asked[kind] = self.asked.get(kind, 0) + 1


# A daemon time this far from the recorder's is flagged: the daemon's clock, or (for
# a start) a session older than its recording.
CLOCK_FLAG_US = 86_400 * 1_000_000


def clock_notes(session: Mapping[str, Any]) -> list[str]:
    """Where the daemon's startedAt/endedAt stand more than a day from the recorder's
    own times for the session: said, never believed (no deletion, no gap is decided
    by them)."""
    notes = []
    pairs = (
        ("startedAt", session.get("started_at_us"), session.get("first_seen_us"), "first saw it"),
        ("endedAt", session.get("ended_at_us"), session.get("finished_us"), "saw it end"),
    )
    for name, daemon, ours, what in pairs:
        if daemon is None or ours is None or abs(daemon - ours) <= CLOCK_FLAG_US:
            continue
        days = abs(daemon - ours) / CLOCK_FLAG_US
        side = "after" if daemon > ours else "before"
        notes.append(f"the daemon's {name} is {days:,.1f} days {side} the recorder {what}")
    return notes


def listed(obj: dict[str, Any] | None, session_id: str) -> dict[str, Any] | None:
    """The entry of a ``sessions_list`` reply that is ``session_id``'s, if it names it."""
    sessions = obj.get("sessions") if obj is not None else None
    if not isinstance(sessions, list):
        return None
    for entry in sessions:
        if isinstance(entry, dict) and entry.get("id") == session_id:
            return entry
    return None


class Course:
    """The statuses, task outcomes and connections' conduct of one session, folded a
    frame at a time (:meth:`add`). ``tasks``: the ids whose outcomes are wanted (all,
    up to :data:`MAX_TASKS`, when None). ``text``: how a text is kept (cut for a
    screen, or whole)."""

    def __init__(
        self,
        keep: int,
        *,
        tasks: Collection[str] | None = None,
        text: Callable[[str], str] = str,
    ) -> None:
        self.timeline: Kept[StatusChange] = Kept(keep)
        self.rejected: Kept[TaskOutcome] = Kept(keep)
        self.outcomes: OrderedDict[str, TaskOutcome] = OrderedDict()
        self.conduct: dict[int, Conduct] = {}
        # The latest status, and when the recording first saw it.
        self.status: str | None = None
        self.status_us: int | None = None
        # The latest error that was the session's own (not a request turned down), and
        # whether the latest error of all was a request turned down.
        self.own_error: str | None = None
        self.last_error_rejected = False
        self._tasks = None if tasks is None else frozenset(tasks)
        self._text = text
        # Tasks asked and not yet answered: task id -> whether the session was over.
        self._asked: OrderedDict[str, bool] = OrderedDict()

    @property
    def over(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def add(self, frame: StoryFrame) -> bool:
        """Fold one frame in; True when it is a task_failed that turned down a request
        (an answer to the one who asked, not an error of the session)."""
        conduct = self.conduct.setdefault(frame.connection_id, Conduct())
        if frame.type == LISTED:
            conduct.listed += 1
        else:
            conduct.frames += frame.counted
        if frame.direction == OUT:
            if frame.type is not None:
                conduct.ask(frame.type)
                if frame.type == "execute_task" and frame.task_id is not None:
                    _remember(self._asked, frame.task_id, self.over)
            return False
        if frame.type in STATUS_TYPES:
            self._status(frame)
        elif frame.type == "task_completed" and frame.task_id is not None:
            self._asked.pop(frame.task_id, None)
            self._outcome(TaskOutcome(frame.task_id, "completed", frame.received_us))
        elif frame.type == "task_failed":
            return self._failed(frame)
        elif frame.type == "error":
            error = (frame.obj or {}).get("error")
            if isinstance(error, str):
                self.own_error, self.last_error_rejected = self._text(error), False
        return False

    def _status(self, frame: StoryFrame) -> None:
        session = (frame.obj or {}).get("session")
        status = session.get("status") if isinstance(session, dict) else None
        if not isinstance(session, dict) or not isinstance(status, str) or status == self.status:
            return
        was_over = self.over
        self.status, self.status_us = status, frame.received_us
        change = StatusChange(
            frame.received_us, self._text(status), frame.id, frame.type or "", frame.connection_id
        )
        self.timeline.add(change)
        task = session.get("task")
        task_id = task.get("id") if isinstance(task, dict) else None
        if self.over and not was_over and isinstance(task_id, str):
            # The session's first task gets no reply of its own: its run ended when
            # the session first did (a stop later does not change how it ended).
            self._outcome(TaskOutcome(task_id, status, frame.received_us, from_status=True))

    def _failed(self, frame: StoryFrame) -> bool:
        error = (frame.obj or {}).get("error")
        error = error if isinstance(error, str) else None
        task_id = frame.task_id
        over_when_asked = self._asked.pop(task_id, None) if task_id is not None else None
        if over_when_asked is None:  # the request was not recorded: the daemon's words
            over_when_asked = error is not None and NOT_RUNNING in error
        rejected = over_when_asked and self.over
        said = self._text(error) if error is not None else None
        if task_id is not None:
            status = "rejected" if rejected else "failed"
            outcome = TaskOutcome(task_id, status, frame.received_us, said)
            self._outcome(outcome)
            if rejected:
                self.rejected.add(outcome)
        if rejected:
            self.last_error_rejected = True
        elif said is not None:
            self.own_error, self.last_error_rejected = said, False
        return rejected

    def _outcome(self, outcome: TaskOutcome) -> None:
        """A task's outcome; a reply about it outweighs the session's status."""
        if self._tasks is not None and outcome.task_id not in self._tasks:
            return
        if outcome.from_status and outcome.task_id in self.outcomes:
            return
        _remember(self.outcomes, outcome.task_id, outcome)


def _remember(held: OrderedDict[str, Any], key: str, value: Any) -> None:
    held[key] = value
    held.move_to_end(key)
    if len(held) > MAX_TASKS:
        held.popitem(last=False)
