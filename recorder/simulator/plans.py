"""What a task will stream, decided up front from the session's random generator."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from recorder.simulator.frames import JSONObject

_OPENERS: Final = (
    "I'll start by looking at the relevant files. ",
    "Let me analyse the codebase first. ",
    "Sure — here is my plan. ",
    "Looking at the request, ",
    "I'll break this task into smaller steps. ",
)
_PHRASES: Final = (
    "The session manager keeps state in memory",
    "so a restart loses every running session",
    "I found the handler in `src/server/ws.ts`",
    "which validates each message with zod",
    "→ the reconnect backoff doubles each time",
    "All 42 tests pass ✅",
    "naïve retry logic could flood the daemon",
    "Next, I'll update the memory manager",
    "and add a regression test for the edge case",
    "The tool output shows two failing assertions",
    "so the fix belongs in `useDaemon`",
    "Here is the updated function:\n```ts\nexport function retry(n: number) {\n"
    "  return Math.min(3000 * 2 ** n, 30000);\n}\n```",
    "This keeps the public API unchanged",
    "but the metrics now include token usage 📈",
    "Summary:\n- fixed the race\n- added tests\n- updated docs",
)
_ERRORS: Final = (
    "LLM request failed: 429 Too Many Requests",
    "Tool execution timed out after 30000ms",
    "Context window exceeded (200000 tokens)",
    "LLM client unavailable: connection reset by peer",
)
_PATHS: Final = (
    "src/index.ts",
    "src/session/manager.ts",
    "src/memory/episodic.ts",
    "src/ws/server.ts",
    "package.json",
    "README.md",
)
_CODE_LINES: Final = (
    "import { EventEmitter } from 'events';",
    "export class SessionManager extends EventEmitter {",
    "  private sessions = new Map<string, Session>();",
    "  async spawn(task: Task): Promise<Session> {",
    "    const id = `session_${Date.now()}`;",
    "    this.emit('session:spawned', session);",
    "    return session;",
    "  }",
    "}",
    "// TODO: persist sessions across restarts",
    "const MAX_RETRIES = 3; // école, naïve — UTF-8 on purpose",
)


def jitter(rng: random.Random, mean: float) -> float:
    # Always draw, so that a seed yields the same texts whatever the pacing.
    factor = rng.uniform(0.5, 1.5)
    return mean * factor if mean > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ChunkStep:
    text: str
    delay: float


@dataclass(frozen=True, slots=True)
class ToolStep:
    name: str
    tool_input: JSONObject
    ok: bool
    content: str  # the result content, or the error text when not ok
    delay: float
    duration: float


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """What one task run will stream, decided up front from the session's RNG."""

    steps: tuple[ChunkStep | ToolStep, ...]
    success: bool
    error: str

    @property
    def text(self) -> str:
        return "".join(step.text for step in self.steps if isinstance(step, ChunkStep))


def _file_content(rng: random.Random) -> str:
    # Mostly small files, sometimes a big one, so results carry sizeable payloads.
    size = rng.randint(16_000, 64_000) if rng.random() < 0.1 else rng.randint(200, 4_000)
    lines: list[str] = []
    total = 0
    while total < size:
        line = rng.choice(_CODE_LINES)
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)


def _tool_step(rng: random.Random, chunk_delay: float) -> ToolStep:
    kind = rng.randrange(4)
    path = rng.choice(_PATHS)
    tool_input: JSONObject
    if kind == 0:
        name, tool_input, content = "read_file", {"path": path}, _file_content(rng)
    elif kind == 1:
        query = rng.choice(("SessionManager", "retry", "emit(", "TODO"))
        name, tool_input = "search_code", {"query": query, "path": "src"}
        content = "\n".join(
            f"{rng.choice(_PATHS)}:{rng.randint(1, 400)}: {rng.choice(_CODE_LINES)}"
            for _ in range(rng.randint(1, 8))
        )
    elif kind == 2:
        name, tool_input = "run_command", {"command": "npm test -- --runInBand"}
        passed = rng.randint(10, 90)
        content = f"PASS src/session/manager.test.ts\nTests: {passed} passed, {passed} total\n"
    else:
        body = rng.choice(_CODE_LINES)
        name, tool_input = "write_file", {"path": path, "content": body}
        content = f"Wrote {len(body.encode())} bytes to {path}"
    ok = rng.random() >= 0.1
    if not ok:
        content = f"ENOENT: no such file or directory, open '{path}'"
    delay = jitter(rng, chunk_delay)
    duration = jitter(rng, chunk_delay * 2)
    return ToolStep(name, tool_input, ok, content, delay, duration)


def _chunk_text(rng: random.Random, first: bool) -> str:
    if first:
        return rng.choice(_OPENERS)
    text = rng.choice(_PHRASES)
    return text + rng.choice((". ", ", ", "\n\n", " "))


def plan_task(
    rng: random.Random,
    *,
    chunks: tuple[int, int] = (3, 12),
    chunk_delay: float = 0.0,
    fail_rate: float = 0.0,
) -> TaskPlan:
    """Decide a task's stream: chunks with tool calls in between, and its outcome."""
    low = max(chunks[0], 0)
    high = max(chunks[1], low)
    count = rng.randint(low, high)
    steps: list[ChunkStep | ToolStep] = []
    for index in range(count):
        steps.append(ChunkStep(_chunk_text(rng, index == 0), jitter(rng, chunk_delay)))
        if index < count - 1 and rng.random() < 0.3:
            steps.append(_tool_step(rng, chunk_delay))
    success = rng.random() >= fail_rate
    error = ""
    if not success:
        error = rng.choice(_ERRORS)
        if steps:
            # A failing task stops part-way through its stream.
            steps = steps[: rng.randint(1, len(steps))]
    return TaskPlan(tuple(steps), success, error)
