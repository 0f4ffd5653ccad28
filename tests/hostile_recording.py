"""A recording whose every field is an attack on the web console: session id,
orchestrator, type, task text, stream chunks, tool names, inputs and results, error
texts, an unknown frame type, a binary frame. Each payload, were it ever run, sets
``window.canary`` (or opens a dialog); a page that shows them as text leaves it unset."""

from __future__ import annotations

import json
from typing import Any

from tests.cleanup_scripts import SECOND, Script

CANARY = "window.canary=1"
ATTACKS = [
    f"<script>{CANARY}</script>",
    f'<img src=x onerror="{CANARY}">',
    f'"><svg onload="{CANARY}">',
    f"javascript:{CANARY}",
    "{{7*7}}{% raw %}${7*7}",
    f"</textarea></pre><iframe srcdoc='<script>{CANARY}</script>'>",
    "\u202e\x1b[2J\x1b]52;c;cHduZWQ=\x07",
]
# One string that is all of them at once.
ALL = " ".join(ATTACKS)
SID = f"s<img src=x onerror={CANARY}>/../replay?x=1#{{{{7*7}}}}"


def _frame(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def hostile_script(sid: str = SID) -> Script:
    """The attacked session, one frame a second, ending failed."""
    session = {
        "id": sid,
        "status": "running",
        "orchestratorId": ALL,
        "type": ALL,
        "task": {"id": ALL, "description": ALL},
        "startedAt": ALL,
    }
    data = {"sessionId": sid}
    messages: list[dict[str, Any]] = [
        {"type": "session_spawned", "session": session},
        {"type": "session_status_update", "session": session},
        {"type": "stream_start", "data": data},
        *({"type": "stream_chunk", "data": {**data, "chunk": a}} for a in ATTACKS),
        {"type": "tool_call_start", "data": {**data, "toolName": ALL, "toolInput": {ALL: ALL}}},
        {
            "type": "tool_call_result",
            "data": {**data, "toolName": ALL, "status": "failed", "result": {"error": ALL}},
        },
        {"type": "stream_end", "data": data},
        {"type": "task_failed", "sessionId": sid, "taskId": ALL, "error": ALL},
        {"type": "error", "error": ALL},
        {"type": ALL, "sessionId": sid, ALL: ALL},
        {"type": "session_status_update", "session": {**session, "status": "failed"}},
    ]
    script: list[tuple[int, str, bytes]] = [
        (i * SECOND, "in", _frame(m)) for i, m in enumerate(messages, 1)
    ]
    script.insert(
        3, (3 * SECOND + 1, "out", _frame({"type": "send_task", "payload": data | {"task": ALL}}))
    )
    # Not text: the frame as bytes that are not UTF-8, with the attack inside.
    script.append((len(messages) * SECOND + 5, "in", b"\xff\xfe" + ALL.encode()))
    return script
