"""Simulated sessions: spawn requests, their state, and the object the daemon reports."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from recorder.simulator.frames import TERMINAL_STATUSES, JSONObject, js_number
from recorder.times import iso_from_ms, now_ms

_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
# What sessions are asked to do (a UI's spawn and execute_task requests too).
TASKS: Final = (
    "Implement feature X",
    "Refactor the session manager",
    "Write unit tests for the memory manager",
    "Investigate flaky reconnect test",
    "Review pull request #128",
    "Summarise yesterday's incidents",
    "Add rate limiting to the API gateway",
    "Migrate the settings page to the new design system",
)


def random_base36(rng: random.Random, length: int = 9) -> str:
    return "".join(rng.choice(_BASE36) for _ in range(length))


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    orchestrator_id: str
    description: str
    task_type: str = "code"
    priority: str = "medium"
    task_status: str = "pending"
    session_type: str = "claude-code"
    memory_profile: str = "default"


def parse_spawn_payload(payload: object) -> SpawnRequest | None:
    if not isinstance(payload, dict):
        return None
    task = payload.get("task")
    orchestrator_id = payload.get("orchestratorId")
    if not isinstance(task, dict) or not isinstance(orchestrator_id, str):
        return None
    description = task.get("description")
    task_type = task.get("type", "code")
    priority = task.get("priority", "medium")
    task_status = task.get("status", "pending")
    session_type = payload.get("sessionType", "claude-code")
    memory_profile = payload.get("memoryProfile", "default")
    if not (
        isinstance(description, str)
        and isinstance(task_type, str)
        and isinstance(priority, str)
        and isinstance(task_status, str)
        and isinstance(session_type, str)
        and isinstance(memory_profile, str)
    ):
        return None
    return SpawnRequest(
        orchestrator_id,
        description,
        task_type,
        priority,
        task_status,
        session_type,
        memory_profile,
    )


def parse_execute_payload(payload: object) -> tuple[str, str, bool] | None:
    if not isinstance(payload, dict):
        return None
    session_id = payload.get("sessionId")
    task = payload.get("task")
    stream = payload.get("streamResponse", True)
    if not isinstance(session_id, str) or not isinstance(task, str):
        return None
    return session_id, task, stream is not False


def _session_id_of(payload: object) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("sessionId"), str):
        return str(payload["sessionId"])
    return None


def autonomous_request(rng: random.Random) -> SpawnRequest:
    return SpawnRequest(
        orchestrator_id=f"vp_{rng.randint(100, 999)}",
        description=rng.choice(TASKS),
        task_type=rng.choice(("code", "research", "analysis", "review")),
        priority=rng.choice(("low", "medium", "high", "critical")),
        session_type=rng.choice(("claude-code", "claude-flow")),
    )


@dataclass(eq=False, slots=True)
class SimSession:
    id: str
    orchestrator_id: str
    task_id: str
    description: str
    task_type: str
    priority: str
    task_status: str
    session_type: str
    memory_profile: str
    created_ms: int
    rng: random.Random = field(repr=False)
    autonomous: bool = False
    status: str = "running"
    ended_ms: int | None = None
    episodic: list[JSONObject] = field(default_factory=list)
    tokens_used: int = 0
    tasks_completed: int = 0
    errors_encountered: int = 0
    response_times: list[int] = field(default_factory=list)

    @classmethod
    def spawned(
        cls,
        session_id: str,
        request: SpawnRequest,
        created_ms: int,
        rng: random.Random,
        *,
        autonomous: bool = False,
    ) -> SimSession:
        """The session a spawn request makes, as the daemon starts it at ``created_ms``."""
        return cls(
            id=session_id,
            orchestrator_id=request.orchestrator_id,
            task_id=f"task_{created_ms}",
            description=request.description,
            task_type=request.task_type,
            priority=request.priority,
            task_status=request.task_status,
            session_type=request.session_type,
            memory_profile=request.memory_profile,
            created_ms=created_ms,
            rng=random.Random(rng.getrandbits(64)),
            autonomous=autonomous,
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def end(self, status: str, at_ms: int | None = None) -> None:
        """``at_ms``: when, on a clock other than the wall's (a recording built
        without sockets, :mod:`recorder.simulator.database`)."""
        self.status = status
        if self.ended_ms is None:
            self.ended_ms = now_ms() if at_ms is None else at_ms

    def record_task(
        self,
        description: str,
        task_id: str,
        text: str,
        tool_calls: int,
        *,
        success: bool,
        elapsed_ms: int,
        at_ms: int | None = None,
    ) -> int:
        """Book a finished task into metrics and episodic memory; returns the tokens used."""
        # A rough chars/4 estimate, plus a flat cost per tool round trip.
        tokens = (len(text) + 3) // 4 + 150 * tool_calls
        self.tokens_used += tokens
        self.response_times.append(elapsed_ms)
        if success:
            self.tasks_completed += 1
        else:
            self.errors_encountered += 1
        stamp = now_ms() if at_ms is None else at_ms
        self.episodic.append(
            {
                "id": f"memory_{stamp}_{random_base36(self.rng)}",
                # The real daemon stores an empty result for a failed task.
                "content": f"Task: {description}\nResult: {text if success else ''}",
                "timestamp": iso_from_ms(stamp),
                "type": "interaction",
                "metadata": {
                    "taskId": task_id,
                    "tokensUsed": tokens,
                    "toolCallsMade": tool_calls,
                    "success": success,
                },
            }
        )
        return tokens

    def to_json(self, at_ms: int | None = None) -> JSONObject:
        """The session object exactly as the real daemon's session frames carry it
        (at ``at_ms``, if not now: the running session's duration so far)."""
        created = iso_from_ms(self.created_ms)
        now = now_ms() if at_ms is None else at_ms
        end = self.ended_ms if self.ended_ms is not None else now
        times = self.response_times
        obj: JSONObject = {
            "id": self.id,
            "orchestratorId": self.orchestrator_id,
            "task": {
                "id": self.task_id,
                "description": self.description,
                "type": self.task_type,
                "priority": self.priority,
                "status": self.task_status,
                "createdAt": created,
                "updatedAt": created,
            },
            "type": self.session_type,
            "status": self.status,
            "startedAt": created,
            "memoryContext": {"scratchpad": {}, "episodic": list(self.episodic), "semantic": []},
            "metrics": {
                "tokensUsed": self.tokens_used,
                "duration": end - self.created_ms,
                "tasksCompleted": self.tasks_completed,
                "errorsEncountered": self.errors_encountered,
                "averageResponseTime": js_number(sum(times) / len(times)) if times else 0,
            },
        }
        if self.ended_ms is not None:
            obj["endedAt"] = iso_from_ms(self.ended_ms)
        return obj


class TaskOutcome(NamedTuple):
    success: bool
    error: str
