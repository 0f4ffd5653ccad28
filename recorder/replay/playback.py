"""One run of a served replay (``replay --serve``): the sessions it has shown, and which
recorded requests its client has matched (``--wait-for-client``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

from recorder.protocol.daemon import dumps
from recorder.replay.matching import describe, request_key
from recorder.replay.plan import ReplayFrame

log = logging.getLogger("recorder.replay.serve")

SESSION_FRAMES = ("session_status_update", "session_spawned")

# (is_text, data): a frame as it goes on the wire.
Wire = tuple[bool, bytes]


def parse_request(data: str | bytes) -> dict[str, Any] | None:
    """The request as the daemon reads it: a JSON object with a string type, or None."""
    if isinstance(data, bytes):  # recorded text
        try:
            data = data.decode()
        except UnicodeDecodeError:
            return None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None


class Playback:
    """One run through the recording: the sessions it has shown, and which recorded
    requests its client has matched."""

    def __init__(self, keys: list[bytes]) -> None:
        # Session id -> (its latest object, the session_status_update answering for it).
        self.sessions: dict[str, tuple[dict[str, Any], Wire]] = {}
        self.finished = False
        self._claimed = bytearray(len(keys))
        self._claims = asyncio.Event()
        # Per key, the recorded requests not yet claimed, earliest first: a claim is a
        # lookup, not a scan from the first request (n² for a long session).
        self._unclaimed: dict[bytes, deque[int]] = {}
        for i, key in enumerate(keys):
            self._unclaimed.setdefault(key, deque()).append(i)

    def claim(self, data: str | bytes) -> bool:
        """The earliest unclaimed recorded request this one matches, claimed."""
        key = request_key(data.encode() if isinstance(data, str) else data)
        waiting = self._unclaimed.get(key)
        if not waiting:
            return False
        self._claimed[waiting.popleft()] = True
        self._claims.set()
        return True

    async def claimed(self, index: int, request: ReplayFrame) -> None:
        if not self._claimed[index]:
            # Once: a UI that sends something else must learn what the replay expects.
            log.info(
                "waiting for the client's %s (recorded request %d)",
                describe(request.data),
                index + 1,
            )
        while not self._claimed[index]:
            self._claims.clear()
            await self._claims.wait()

    def saw(self, frame: ReplayFrame) -> None:
        """Keep the session object a played session_status_update or session_spawned carries."""
        if frame.type not in SESSION_FRAMES or not frame.is_text:
            return
        obj = parse_request(frame.data)
        session = obj.get("session") if obj is not None else None
        if not isinstance(session, dict) or not isinstance(session.get("id"), str):
            return
        if frame.type == "session_status_update":
            answer: Wire = (True, frame.data)  # what the daemon said, byte-exact
        else:
            rebuilt = {"type": "session_status_update", "session": session}
            answer = (True, dumps(rebuilt).encode())
        self.sessions[session["id"]] = (session, answer)

    @property
    def active(self) -> int:
        return sum(1 for s, _ in self.sessions.values() if s.get("status") == "running")
