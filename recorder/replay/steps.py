"""What a live replay (``replay --against``) sends when, and what it compares with: a
recorded conversation turned into steps, pure (the module docstring of
:mod:`recorder.replay.live` says how they are played)."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, NamedTuple

from recorder.protocol.classify import classify
from recorder.protocol.frames import IN
from recorder.replay.compare import kind
from recorder.replay.plan import ReplayFrame, timeline
from recorder.replay.source import Conversation

Slot = tuple[str, int]  # (kind, how many of that kind so far, this one included)


class Step(NamedTuple):
    """A request; the reply it waited for, how long the daemon took to send that
    reply, the recorded seconds from that reply (else the previous request), and how
    many of the compared replies the recording had before it."""

    frame: ReplayFrame
    awaited: Slot | None
    daemon_time: float
    pause: float
    before: int = 0


class Plan(NamedTuple):
    session: str
    spawn: tuple[Any, Any] | None  # (orchestratorId, description) of the creating spawn
    steps: list[Step]
    replies: list[ReplayFrame]  # the recorded side of the comparison
    slots: dict[Slot, tuple[str | None, str | None]]  # (session, task) id at each slot
    last: Slot | None  # the reply the conversation ended with
    tail: float  # recorded seconds from the last request to the last reply
    assigned: frozenset[str]  # ids a reply named before any request: the daemon's


def announced(obj: dict[str, Any] | None, key: str) -> tuple[Any, Any]:
    """(orchestratorId, task description) of a spawn request or a session frame."""
    inner = obj.get(key) if obj else None
    inner = inner if isinstance(inner, dict) else {}
    task = inner.get("task")
    return inner.get("orchestratorId"), task.get("description") if isinstance(task, dict) else None


def plan(recorded: Conversation) -> Plan:
    """When each request goes, and what the replayed conversation is compared with."""
    carried = {f.connection_id for f in recorded.requests}
    replies = [f for f in recorded.replies if f.connection_id in carried]
    hello = recorded.hello if recorded.hello and recorded.hello.connection_id in carried else None
    merged = sorted([*recorded.requests, *replies, *([hello] if hello else [])], key=lambda f: f.id)
    at = {cue.frame.id: cue.t for cue in timeline(merged, []) if cue.frame is not None}
    spawn = next((f for f in recorded.requests if f.type == "spawn_session"), None)
    counts: Counter[str] = Counter()
    slots: dict[Slot, tuple[str | None, str | None]] = {}
    steps: list[Step] = []
    awaited: tuple[Slot, float] | None = None
    last = awaited
    named: set[str] = set()
    assigned: set[str] = set()
    previous = at[hello.id] if hello else None
    for frame in merged:
        if frame is hello:
            continue
        c = classify(frame.data, frame.is_text)
        ids = {i for i in (c.session_id, c.task_id) if i is not None} - named
        named |= ids
        if frame.direction == IN:
            assigned |= ids
            k = kind(frame.type)
            counts[k] += 1
            slots[(k, counts[k])] = (c.session_id, c.task_id)
            if frame.type != "stream_chunk":
                awaited = last = ((k, counts[k]), at[frame.id])
            continue
        t, before = at[frame.id], sum(counts.values())
        if awaited is not None:
            daemon = awaited[1] - (previous if previous is not None else awaited[1])
            steps.append(Step(frame, awaited[0], max(daemon, 0.0), t - awaited[1], before))
        else:
            pause = t - previous if previous is not None else 0.0
            steps.append(Step(frame, None, 0.0, pause, before))
        previous, awaited = t, None
    tail = max(at[replies[-1].id] - previous, 0.0) if replies and previous is not None else 0.0
    key = announced(classify(spawn.data, True).obj, "payload") if spawn else None
    end = last[0] if last else None
    return Plan(recorded.session.id, key, steps, replies, slots, end, tail, frozenset(assigned))


def substitute(data: bytes, ids: dict[str, str]) -> bytes:
    """``data`` with each ``"old"`` JSON string replaced by ``"new"``, in one pass: a
    new id may be a recorded one (a daemon that numbers across sessions), and must not
    be replaced again."""
    if not ids:
        return data
    quoted = {_quoted(old): _quoted(new) for old, new in ids.items()}
    pattern = re.compile(b"|".join(re.escape(old) for old in quoted))
    return pattern.sub(lambda m: quoted[m.group()], data)


def _quoted(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()
