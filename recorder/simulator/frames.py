"""The frames a daemon sends, built exactly as the real one serialises them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from recorder.protocol.daemon import dumps

if TYPE_CHECKING:
    from recorder.simulator.plans import ToolStep
    from recorder.simulator.sessions import SimSession

JSONObject = dict[str, Any]
SHUTDOWN_CODE: Final = 1000
SHUTDOWN_REASON: Final = "Server shutting down"
RESTART_CODE: Final = 1012
RESTART_REASON: Final = "Service restart"
TOKEN_EXPIRED_CODE: Final = 4001
TOKEN_EXPIRED_REASON: Final = "Token expired"
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "stopped"})
FIREHOSE_BATCH: Final = 64

# Order and names as in the real daemon's daemon_status_update.
SUBSYSTEMS: Final = (
    "websocket",
    "sessionManager",
    "memoryManager",
    "llmClient",
    "mcpRegistry",
    "hookEngine",
    "skillRegistry",
    "teamCoordinator",
    "agentRegistry",
    "modelRouter",
    "channelRegistry",
    "securityGate",
    "streamHandler",
    "protocolRouter",
    "pluginManager",
    "configWatcher",
)


def js_number(value: float) -> int | float:
    """Integral floats serialise as ``1`` in JavaScript, not ``1.0``."""
    return int(value) if float(value).is_integer() else value


def parse_message(data: str | bytes) -> tuple[str, JSONObject] | None:
    """The message type and object, or None when the daemon would say "Invalid message format"."""
    if not isinstance(data, str):
        return None
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if not isinstance(kind, str):
        return None
    return kind, message


def session_frame(kind: str, session: SimSession, at_ms: int | None = None) -> str:
    return dumps({"type": kind, "session": session.to_json(at_ms)})


def stream_start_frame(session_id: str) -> str:
    return dumps({"type": "stream_start", "data": {"sessionId": session_id}})


def stream_end_frame(session_id: str) -> str:
    return dumps({"type": "stream_end", "data": {"sessionId": session_id}})


def stream_chunk_frame(session_id: str, chunk: str, index: int) -> str:
    return dumps(
        {
            "type": "stream_chunk",
            "data": {
                "sessionId": session_id,
                "chunk": chunk,
                "metadata": {"type": "text", "index": index},
            },
        }
    )


def tool_call_start_frame(session_id: str, step: ToolStep, timestamp: str) -> str:
    return dumps(
        {
            "type": "tool_call_start",
            "data": {
                "sessionId": session_id,
                "toolName": step.name,
                "toolInput": step.tool_input,
                "status": "started",
                "timestamp": timestamp,
            },
        }
    )


def tool_call_result_frame(session_id: str, step: ToolStep, timestamp: str) -> str:
    result = {"content": step.content} if step.ok else {"error": step.content}
    return dumps(
        {
            "type": "tool_call_result",
            "data": {
                "sessionId": session_id,
                "toolName": step.name,
                "status": "completed" if step.ok else "failed",
                "result": result,
                "timestamp": timestamp,
            },
        }
    )


def task_frame(kind: str, session_id: str, task: str, error: str | None = None) -> str:
    frame: JSONObject = {"type": kind, "sessionId": session_id, "taskId": task}
    if error is not None:
        frame["error"] = error
    return dumps(frame)


def firehose_template(session_id: str, size: int, count: int) -> tuple[str, str]:
    """Prefix and suffix around the index, padded so each frame is about ``size`` bytes."""
    head = '{"type":"stream_chunk","data":{"sessionId":"' + session_id + '","chunk":"'
    tail = '","metadata":{"type":"text","index":'
    suffix = "}}}"
    digits = len(str(max(count - 1, 0)))
    room = max(size - len(head) - len(tail) - len(suffix) - digits, 0)
    filler = ("lorem ipsum dolor sit amet " * (room // 27 + 1))[:room]
    return head + filler + tail, suffix
