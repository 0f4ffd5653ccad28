"""What frames say about sessions and tasks, folded per batch into deltas.

The database process applies one :class:`IndexBatch` per transaction; building it
is pure, so every rule about statuses, tasks and listings is tested here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recorder.protocol.classify import Classified, id_or_none, not_found_session, text_or_none
from recorder.protocol.deltas import SessionDelta, TaskDelta
from recorder.protocol.frames import F_CONNECTION, F_DIRECTION, F_RECEIVED, IN, OUT
from recorder.protocol.statuses import LOST_STATUS, TERMINAL_STATUSES
from recorder.times import parse_daemon_time

DAY_US = 86_400 * 1_000_000
# Frames from the daemon that name a session without showing that it exists: the
# daemon answers a task request for an unknown session with task_* frames too.
_NOT_EVIDENCE = frozenset({"task_executing", "task_completed", "task_failed", "error"})
# Frames that show a session at work (``active_us``, what cleanup's idle_for measures):
# its output and its tasks' progress; requests that give it work. Not the recorder's
# own polls and stops, errors, nor replies repeating a known status (show_status).
_WORK_FROM_DAEMON = ("stream_", "tool_call_", "task_", "session_spawned")
_WORK_TYPES = frozenset({"stream_chunk", "stream_end", "tool_call_start", "tool_call_result"})
_WORK_REQUESTS = frozenset({"execute_task", "spawn_session"})


@dataclass(slots=True)
class IndexBatch:
    """Index changes accumulated over a batch of frames, applied in one go by the store."""

    sessions: dict[str, SessionDelta] = field(default_factory=dict)
    tasks: dict[tuple[str, str], TaskDelta] = field(default_factory=dict)
    # Frames and bytes per (connection, type, direction, UTC day): one dict update per
    # frame, from which the connections' counts and the daily rollup are summed.
    tallies: dict[tuple[int, str | None, str, int], list[int]] = field(default_factory=dict)
    # Each sessions_list seen: (connection id, receive time, the ids it named). Only
    # the link's lists may end sessions (the store knows which connection is which).
    listings: list[tuple[int, int, frozenset[str]]] = field(default_factory=list)
    # Earlier frames that now belong to a session: (connection id, seq, session id).
    attributions: list[tuple[int, int, str]] = field(default_factory=list)
    # spawn_session requests in this batch, (connection id, seq): their rows' ids are
    # noted as they are stored, for their attribution later.
    spawns: list[tuple[int, int]] = field(default_factory=list)
    # The alerts its frames raised (recorder.alerts.occurrence.Occurrence): stored in the
    # outbox in the frames' own transaction, so a committed frame's alert is never lost.
    alerts: list[Any] = field(default_factory=list)

    @property
    def connection_frames(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for (cid, _, _, _), (n, _) in self.tallies.items():
            counts[cid] = counts.get(cid, 0) + n
        return counts

    @property
    def days(self) -> dict[tuple[int, str, str], list[int]]:
        """Frames and bytes per (UTC day, type or "", direction): the stats rollup."""
        days: dict[tuple[int, str, str], list[int]] = {}
        for (_, type_, direction, day), (n, size) in self.tallies.items():
            tally = days.setdefault((day, type_ or "", direction), [0, 0])
            tally[0] += n
            tally[1] += size
        return days

    def counts_only(self) -> IndexBatch:
        """The batch's frame and byte counts, without types: all that is indexed of
        frames whose index values the database refused (see
        :func:`recorder.pipeline.ops.write_together`)."""
        plain = IndexBatch()
        for (cid, _, direction, day), (n, size) in self.tallies.items():
            plain.count(cid, None, direction, day, n, size)
        return plain

    def count(
        self, cid: int, type_: str | None, direction: str, at_us: int, frames: int, size: int
    ) -> None:
        """Add frames and bytes to a tally (what :meth:`add` does for every frame)."""
        tally = self.tallies.setdefault((cid, type_, direction, at_us - at_us % DAY_US), [0, 0])
        tally[0] += frames
        tally[1] += size

    def session(self, session_id: str, at_us: int) -> SessionDelta:
        delta = self.sessions.get(session_id)
        if delta is None:
            delta = self.sessions[session_id] = SessionDelta(at_us, at_us)
        else:
            delta.last_seen_us = max(delta.last_seen_us, at_us)
        return delta

    def task(self, session_id: str, task_id: str, at_us: int) -> TaskDelta:
        key = (session_id, task_id)
        delta = self.tasks.get(key)
        if delta is None:
            delta = self.tasks[key] = TaskDelta(at_us, at_us)
        else:
            delta.last_seen_us = max(delta.last_seen_us, at_us)
        return delta

    def attribute(self, connection_id: int, seq: int, session_id: str, at_us: int) -> None:
        """A frame recorded earlier (a ``spawn_session``) belongs to ``session_id``."""
        self.attributions.append((connection_id, seq, session_id))
        self.session(session_id, at_us).frame_count += 1

    def add(
        self, frame: Sequence[Any], info: Classified, session_id: str | None, size: int
    ) -> None:
        """Fold one classified frame (a :class:`Frame` or plain tuple) into the batch.

        ``session_id`` is the frame's own, or the one attribution gave it.
        """
        at = frame[F_RECEIVED]
        type_ = info.type
        direction = frame[F_DIRECTION]
        key = (frame[F_CONNECTION], type_, direction, at - at % DAY_US)
        tally = self.tallies.get(key)
        if tally is None:
            self.tallies[key] = [1, size]
        else:
            tally[0] += 1
            tally[1] += size
        sid = session_id
        if sid is not None:
            delta = self.sessions.get(sid)
            if delta is None:
                delta = self.sessions[sid] = SessionDelta(at, at)
            elif at > delta.last_seen_us:
                delta.last_seen_us = at
            delta.frame_count += 1
            if direction == IN:
                if not delta.creates and type_ not in _NOT_EVIDENCE:
                    delta.creates = True
                # delta.worked(at), inlined: this runs for every stream chunk (whose
                # type's hash the tally's lookup has computed already).
                if type_ in _WORK_TYPES or (
                    type_ is not None and type_.startswith(_WORK_FROM_DAEMON)
                ):
                    active = delta.active_us
                    if active is None or at > active:
                        delta.active_us = at
            elif type_ in _WORK_REQUESTS:
                delta.worked(at)
            if info.task_id is not None:
                self.task(sid, info.task_id, at).frame_count += 1
        obj = info.obj
        if obj is None:
            return
        if type(obj.get("session")) is dict:
            self._session_object(obj["session"], at)
        if type_ == "sessions_list" and direction == IN:
            self._listing(frame[F_CONNECTION], obj.get("sessions"), at)
        if type_ == "error" and session_id is not None and info.session_id is None:
            self._error(session_id, text_or_none(obj.get("error")), at)
        elif info.session_id is not None and info.task_id is not None and type_ is not None:
            self._task_frame(type_, direction, info.session_id, info.task_id, obj, at)

    def _listing(self, cid: int, listed: Any, at: int) -> None:
        if isinstance(listed, list):
            ids = set()
            for item in listed:
                if isinstance(item, dict):
                    sid = self._session_object(item, at)
                    if sid is not None:
                        ids.add(sid)
            self.listings.append((cid, at, frozenset(ids)))

    def _error(self, session_id: str, error: str | None, at: int) -> None:
        """An error reply attributed to ``session_id`` (see ``attribution``)."""
        if error is not None:
            delta = self.session(session_id, at)
            delta.last_error = error
            if not_found_session(error) == session_id:
                # The daemon no longer knows it: nothing to stop, ask about, wait for.
                # Only the session the error names: one attributed to the latest
                # request may answer an earlier one.
                delta.set_status(LOST_STATUS, at)

    def _task_frame(
        self, type_: str, direction: str, sid: str, tid: str, obj: dict[str, Any], at: int
    ) -> None:
        if type_ == "execute_task" and direction == OUT:
            task = self.task(sid, tid, at)
            payload = obj.get("payload")
            text = text_or_none(payload.get("task")) if isinstance(payload, dict) else None
            if text is not None:
                task.description = text
            task.status = task.status or "requested"
        elif type_ == "task_executing":
            task = self.task(sid, tid, at)
            task.status = "running"
            task.started_at_us = task.started_at_us or at
        elif type_ == "task_completed":
            task = self.task(sid, tid, at)
            task.status = "completed"
            task.ended_at_us = at
        elif type_ == "task_failed":
            task = self.task(sid, tid, at)
            task.status = "failed"
            task.ended_at_us = at
            error = text_or_none(obj.get("error"))
            if error is not None:
                task.error = error
                self.session(sid, at).last_error = error

    def _session_object(self, session: dict[str, Any], at: int) -> str | None:
        sid = id_or_none(session.get("id"))
        if sid is None:
            return None
        delta = self.session(sid, at)
        delta.creates = True
        if (v := id_or_none(session.get("orchestratorId"))) is not None:
            delta.orchestrator_id = v
        if (v := id_or_none(session.get("type"))) is not None:
            delta.session_type = v
        status = id_or_none(session.get("status"))
        if status is not None:
            delta.show_status(status, at)
        if (t := parse_daemon_time(session.get("startedAt"))) is not None:
            delta.started_at_us = t
        if (t := parse_daemon_time(session.get("endedAt"))) is not None:
            delta.ended_at_us = t
        task = session.get("task")
        if isinstance(task, dict):
            tid = id_or_none(task.get("id"))
            description = text_or_none(task.get("description"))
            # First wins, here and when stored (see SessionDelta).
            if description is not None and delta.task_description is None:
                delta.task_description = description
            if tid is not None:
                if delta.task_id is None:
                    delta.task_id = tid
                task_delta = self.task(sid, tid, at)
                if description is not None and task_delta.description is None:
                    task_delta.description = description
                # The daemon leaves task.status at "pending"; the session's status
                # is the truth about its first task.
                if status in TERMINAL_STATUSES or status == "running":
                    task_delta.status = status
                    if status in TERMINAL_STATUSES and delta.ended_at_us is not None:
                        task_delta.ended_at_us = delta.ended_at_us
                elif isinstance(task.get("status"), str):
                    task_delta.status = id_or_none(task.get("status"))
                if delta.started_at_us is not None and task_delta.started_at_us is None:
                    task_delta.started_at_us = delta.started_at_us
        return sid
