"""The requests the recorder itself sends to the daemon, as exact frame texts."""

from __future__ import annotations

import json

PING = '{"type":"ping"}'
DAEMON_STATUS = '{"type":"daemon_status"}'
LIST_SESSIONS = '{"type":"list_sessions"}'


def stop_session(session_id: str) -> str:
    return json.dumps(
        {"type": "stop_session", "payload": {"sessionId": session_id}}, separators=(",", ":")
    )


def session_status(session_id: str) -> str:
    return json.dumps(
        {"type": "session_status", "payload": {"sessionId": session_id}}, separators=(",", ":")
    )
