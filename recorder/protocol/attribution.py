"""Which session a frame belongs to when the frame itself does not say.

The daemon's protocol has no request ids. A ``spawn_session`` request names no
session (the daemon makes one up), and an ``{"type":"error"}`` reply names
nothing at all. Both are part of a session's story, so they are attributed from
what happened around them on the same connection:

- a ``spawn_session`` belongs to the session that the next ``session_spawned`` on
  that connection announces (the one whose orchestrator and task description match
  the request, else the oldest request still waiting);
- an ``error`` belongs to the session its text names ("Session not found:
  session_x": the daemon answers in order, so the latest request is not always the
  one answered); one that names none, to the session of the latest request on that
  connection that named a session and has had no reply yet.

The state lives in the classifier process, per connection, bounded, and is
dropped when the connection closes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from recorder.protocol.classify import not_found_session, text_or_none
from recorder.protocol.frames import IN, OUT

# Requests remembered per connection; replies come within moments, so only a
# flood of unanswered requests reaches this, and then the oldest are forgotten.
PENDING_MAX = 64


@dataclass(slots=True)
class _Spawn:
    seq: int
    # Strings only: any other JSON value could be nested a thousand deep, and
    # comparing two such values overflows the stack.
    orchestrator_id: str | None
    description: str | None


@dataclass(slots=True)
class _Connection:
    spawns: deque[_Spawn] = field(default_factory=lambda: deque(maxlen=PENDING_MAX))
    # Session ids named by requests without a reply yet, oldest first.
    asked: deque[str] = field(default_factory=lambda: deque(maxlen=PENDING_MAX))


class Attribution:
    """Per-connection memory of requests, to attribute spawns and errors.

    ``waiting`` holds the connections with a request still unanswered: a frame
    from the daemon on any other connection has nothing to attribute, and the
    classifier skips :meth:`see` for it (most frames are such), but for errors.
    """

    def __init__(self) -> None:
        self._connections: dict[int, _Connection] = {}
        self.waiting: set[int] = set()

    def see(
        self,
        connection_id: int,
        seq: int,
        direction: str,
        type_: str | None,
        session_id: str | None,
        obj: dict[str, Any] | None,
    ) -> tuple[str | None, tuple[int, int] | None]:
        """Fold one classified frame in.

        Returns the session this frame belongs to if it names none itself (an
        error's; the classifier shows it every error, waiting or not, since an error
        can name its session), and, when this frame announces a spawned session, the
        ``(connection_id, seq)`` of the ``spawn_session`` request it answers.
        """
        state = self._connections.get(connection_id)
        if type_ == "error" and session_id is None and direction == IN:
            named = _named_by(obj)
            if named is not None:
                if state is not None:
                    _forget_latest(state.asked, named)
                    self._settle(connection_id, state)
                return named, None
        if direction == OUT:
            if type_ == "spawn_session" and obj is not None:
                payload = obj.get("payload")
                task = payload.get("task") if isinstance(payload, dict) else None
                spawn = _Spawn(
                    seq,
                    text_or_none(payload.get("orchestratorId"))
                    if isinstance(payload, dict)
                    else None,
                    text_or_none(task.get("description")) if isinstance(task, dict) else None,
                )
                self._state(connection_id, state).spawns.append(spawn)
                self.waiting.add(connection_id)
            elif session_id is not None:
                self._state(connection_id, state).asked.append(session_id)
                self.waiting.add(connection_id)
            return None, None
        if state is None or direction != IN:
            return None, None
        attributed: str | None = None
        spawn_request: tuple[int, int] | None = None
        if type_ == "error" and session_id is None:
            attributed = state.asked.pop() if state.asked else None
        elif session_id is not None and state.asked:
            _forget_latest(state.asked, session_id)
        if type_ == "session_spawned" and session_id is not None and state.spawns:
            spawn_request = (connection_id, _matching_spawn(state.spawns, obj).seq)
        self._settle(connection_id, state)
        return attributed, spawn_request

    def forget(self, connection_id: int) -> None:
        """The connection closed: nothing more will be answered on it."""
        self._connections.pop(connection_id, None)
        self.waiting.discard(connection_id)

    def _settle(self, connection_id: int, state: _Connection) -> None:
        if not state.asked and not state.spawns:
            self.waiting.discard(connection_id)

    def _state(self, connection_id: int, state: _Connection | None) -> _Connection:
        if state is None:
            state = self._connections[connection_id] = _Connection()
        return state


def _named_by(error: dict[str, Any] | None) -> str | None:
    """The session an error frame's text names, if it names one."""
    text = text_or_none(error.get("error")) if error is not None else None
    return not_found_session(text) if text is not None else None


def _forget_latest(asked: deque[str], session_id: str) -> None:
    """A reply about ``session_id`` answers the latest request that named it."""
    for i in range(len(asked) - 1, -1, -1):
        if asked[i] == session_id:
            del asked[i]
            return


def _matching_spawn(spawns: deque[_Spawn], obj: dict[str, Any] | None) -> _Spawn:
    session = obj.get("session") if obj is not None else None
    task = session.get("task") if isinstance(session, dict) else None
    if isinstance(session, dict) and isinstance(task, dict):
        wanted = (
            text_or_none(session.get("orchestratorId")),
            text_or_none(task.get("description")),
        )
        for spawn in spawns:
            if (spawn.orchestrator_id, spawn.description) == wanted:
                spawns.remove(spawn)
                return spawn
    return spawns.popleft()
