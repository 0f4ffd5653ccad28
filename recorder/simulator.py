"""A simulated orchestrator daemon, for tests, benchmarks and demos.

It speaks the daemon's WebSocket protocol, as the Neolith daemon-integration
document describes it, and reproduces what a real daemon (1.0.39) was observed to send:
the health check on connect, broadcasts of ``session_status_update`` to every
client, ``session_spawned`` only after the first task finished, the task
frames whose ``taskId`` is the task text, the error texts, HTTP rejections with
JSON bodies and the close codes. The streaming frames (``stream_*`` and
``tool_call_*``), which that daemon version did not wire in, follow the seed
document.

On top of that it can misbehave on purpose (forced disconnects, a firehose of
frames, garbage injected by tests) and it keeps a journal of every frame it
sent or received, so tests can compare what a recorder stored with what was
actually on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import hmac
import http
import json
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Final, NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio import server as ws_server
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from recorder.wire import json_response

__all__ = [
    "HEALTH_CHECK_FRAME",
    "JournalEntry",
    "SimSession",
    "Simulator",
    "SimulatorOptions",
    "TaskPlan",
    "authenticate",
    "dumps",
    "firehose_template",
    "iso_from_ms",
    "plan_task",
    "serve",
]

logger = logging.getLogger(__name__)

JSONObject = dict[str, Any]

HEALTH_CHECK_FRAME: Final = '{"type":"health_check_response","healthy":true}'
PONG_FRAME: Final = '{"type":"pong"}'
INVALID_FORMAT: Final = "Invalid message format"
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

_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(slots=True)
class SimulatorOptions:
    """Everything that shapes one simulator; defaults match a plain local daemon."""

    host: str = "127.0.0.1"
    port: int = 8787  # 0 picks a free port
    sessions: int = 0
    session_interval: float = 0.5
    # Autonomous sessions start only once a first client is connected, so that a
    # recorder started after the simulator still sees every broadcast.
    wait_for_client: bool = False
    chunk_delay: float = 0.05
    chunks_per_task: tuple[int, int] = (3, 12)
    fail_rate: float = 0.2
    seed: int | None = None
    status_interval: float = 0.0
    token: str | None = None
    api_key: str | None = None
    max_connections: int = 0
    expire_token_after: float = 0.0
    disconnect_after: int = 0
    disconnects: int = 0
    firehose: int = 0
    firehose_size: int = 180
    max_size: int = 64 * 1024 * 1024
    # Node's ws server, which the real daemon uses, does not negotiate compression.
    compression: bool = False
    journal: bool = True  # keep the in-memory journal; benchmarks may turn it off
    journal_path: str | None = None


class JournalEntry(NamedTuple):
    """One frame as it was on the wire; ``conn`` is 1-based per simulator."""

    conn: int
    direction: str  # "sent" or "received"
    data: str | bytes


# --------------------------------------------------------------------------- helpers


def dumps(obj: Any) -> str:
    """Compact JSON like JSON.stringify: raw UTF-8, no spaces, keys in insertion order."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A client can smuggle lone surrogates in through \ud800 escapes; they
            # cannot go on the wire as UTF-8, so fall back to escaping everything.
            text = json.dumps(obj, separators=(",", ":"))
    return text


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_from_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as JavaScript's toISOString()."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def random_base36(rng: random.Random, length: int = 9) -> str:
    return "".join(rng.choice(_BASE36) for _ in range(length))


def js_number(value: float) -> int | float:
    """Integral floats serialise as ``1`` in JavaScript, not ``1.0``."""
    return int(value) if float(value).is_integer() else value


def jitter(rng: random.Random, mean: float) -> float:
    # Always draw, so that a seed yields the same texts whatever the pacing.
    factor = rng.uniform(0.5, 1.5)
    return mean * factor if mean > 0 else 0.0


def _first_header(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if values else None


def _is_upgrade(headers: Headers) -> bool:
    return any("websocket" in value.lower() for value in headers.get_all("Upgrade"))


def authenticate(
    token: str | None,
    api_key: str | None,
    headers: Headers,
    query: dict[str, list[str]],
) -> str | None:
    """Return the daemon's error code for a rejected handshake, or None to accept.

    When both a token and an API key are configured, either credential suffices.
    """
    if not token and not api_key:
        return None
    presented_token: str | None = None
    authorization = _first_header(headers, "Authorization")
    if authorization is not None and authorization[:7].lower() == "bearer ":
        presented_token = authorization[7:].strip()
    elif query.get("token"):
        presented_token = query["token"][0]
    presented_key = _first_header(headers, "x-api-key")
    if presented_key is None and query.get("apiKey"):
        presented_key = query["apiKey"][0]

    if token and presented_token is not None and _same(presented_token, token):
        return None
    if api_key and presented_key is not None and _same(presented_key, api_key):
        return None
    if (not token or presented_token is None) and (not api_key or presented_key is None):
        return "credentials_missing"
    if token and presented_token is not None:
        return "jwt_invalid"
    return "api_key_invalid"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


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


# --------------------------------------------------------------------------- frames


def error_frame(error: str) -> str:
    return dumps({"type": "error", "error": error})


def session_frame(kind: str, session: SimSession) -> str:
    return dumps({"type": kind, "session": session.to_json()})


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


# --------------------------------------------------------------------------- task plans

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
_TASKS: Final = (
    "Implement feature X",
    "Refactor the session manager",
    "Write unit tests for the memory manager",
    "Investigate flaky reconnect test",
    "Review pull request #128",
    "Summarise yesterday's incidents",
    "Add rate limiting to the API gateway",
    "Migrate the settings page to the new design system",
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


# --------------------------------------------------------------------------- sessions


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
        description=rng.choice(_TASKS),
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

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def end(self, status: str) -> None:
        self.status = status
        if self.ended_ms is None:
            self.ended_ms = now_ms()

    def record_task(
        self,
        description: str,
        task_id: str,
        text: str,
        tool_calls: int,
        *,
        success: bool,
        elapsed_ms: int,
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
        stamp = now_ms()
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

    def to_json(self) -> JSONObject:
        """The session object exactly as the real daemon's session frames carry it."""
        created = iso_from_ms(self.created_ms)
        end = self.ended_ms if self.ended_ms is not None else now_ms()
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


# --------------------------------------------------------------------------- connections


@dataclass(eq=False, slots=True)
class _Conn:
    id: int
    ws: ServerConnection
    authenticated: bool
    attempts: int = 0  # frames we tried to send, for disconnect_after
    doomed: bool = False  # a forced close is under way: send nothing more
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


# --------------------------------------------------------------------------- simulator


class Simulator:
    """A daemon on a real socket. ``async with Simulator(opts) as sim:`` in tests."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        self.journal: list[JournalEntry] = []
        self.sessions: dict[str, SimSession] = {}
        master = random.Random(self.options.seed)
        # Separate streams, so client activity cannot shift what autonomous sessions do.
        self._auto_rng = random.Random(master.getrandbits(64))
        self._client_rng = random.Random(master.getrandbits(64))
        self._firehose_id = f"session_firehose_{now_ms()}_{random_base36(master)}"
        self._server: ws_server.Server | None = None
        self._started = time.monotonic()
        self._conns: dict[ServerConnection, _Conn] = {}
        self._handshake_auth: dict[ServerConnection, bool] = {}
        self._admitted: dict[ServerConnection, bool] = {}
        self._total_connections = 0
        self.frames_sent = 0
        self._sent_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._connection_event = asyncio.Event()
        self._sessions_done = asyncio.Event()
        self._auto_finished = 0
        self._forced_disconnects = 0
        self._background: set[asyncio.Task[None]] = set()
        self._journal_file: IO[str] | None = None
        self._spawned_total = 0
        self._tasks_processed = 0
        self._tasks_succeeded = 0
        self._tokens_total = 0
        self._routes: dict[str, Callable[[_Conn, JSONObject], Awaitable[None]]] = {
            "ping": self._on_ping,
            "daemon_status": self._on_daemon_status,
            "list_sessions": self._on_list_sessions,
            "spawn_session": self._on_spawn_session,
            "execute_task": self._on_execute_task,
            "session_status": self._on_session_status,
            "stop_session": self._on_stop_session,
        }

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        opts = self.options
        if opts.journal_path:
            self._journal_file = _open_journal(opts.journal_path)
        self._started = time.monotonic()
        self._server = await ws_server.serve(
            self._handler,
            opts.host,
            opts.port,
            process_request=self._process_request,
            process_response=self._process_response,
            max_size=opts.max_size,
            compression="deflate" if opts.compression else None,
        )
        if opts.sessions > 0:
            self._spawn(self._autonomous_sessions())
        else:
            self._sessions_done.set()
        if opts.status_interval > 0:
            self._spawn(self._status_ticker())

    async def stop(self) -> None:
        """Close every connection with 1000 "Server shutting down", as on SIGTERM."""
        server, self._server = self._server, None
        if server is None:
            return
        # Quiet the sessions first so nothing races the close frames.
        await _cancel_all(self._background)
        server.close(code=SHUTDOWN_CODE, reason=SHUTDOWN_REASON)
        await server.wait_closed()
        await _cancel_all(self._background)
        if self._journal_file is not None:
            self._journal_file.close()
            self._journal_file = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---------------------------------------------------------------- public helpers

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.options.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._conns)

    @property
    def total_connections(self) -> int:
        """Connections accepted since start (the last journal ``conn`` number)."""
        return self._total_connections

    @property
    def forced_disconnects(self) -> int:
        return self._forced_disconnects

    @property
    def uptime_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    # The timeout parameters are part of the API tests were promised; they only
    # wrap asyncio.timeout.
    async def wait_connections(self, n: int, timeout: float | None = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``n`` connections in total have been accepted (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self._total_connections < n:
                await self._connection_event.wait()

    async def wait_frames_sent(self, n: int, timeout: float | None = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``n`` frames in total have been sent to clients."""
        if self.frames_sent >= n:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sent_waiters, (n, id(waiter), waiter))
        async with asyncio.timeout(timeout):
            await waiter

    async def wait_sessions_done(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Wait until every autonomous session reached a terminal status."""
        async with asyncio.timeout(timeout):
            await self._sessions_done.wait()

    async def broadcast_raw(self, data: str | bytes, *, text: bool | None = None) -> None:
        """Send ``data`` as is to every client (``text=True`` sends bytes as a TEXT frame)."""
        for conn in list(self._conns.values()):
            await self._send(conn, data, text=text)

    async def broadcast(self, frame: str) -> None:
        for conn in list(self._conns.values()):
            await self._send(conn, frame)

    async def disconnect_all(self, code: int = RESTART_CODE, reason: str = RESTART_REASON) -> None:
        closing = [conn.ws.close(code, reason) for conn in list(self._conns.values())]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    def daemon_status(self) -> JSONObject:
        """The ``status`` object of ``daemon_status_update``."""
        active = sum(1 for session in self.sessions.values() if session.status == "running")
        ended = [s.ended_ms - s.created_ms for s in self.sessions.values() if s.ended_ms]
        processed = self._tasks_processed
        checked = iso_from_ms(now_ms())
        return {
            "status": "running",
            "uptime": self.uptime_ms,
            "activeSessions": active,
            "queuedTasks": 0,
            "metrics": {
                "totalSessionsSpawned": self._spawned_total,
                "totalTasksProcessed": processed,
                "totalTokensUsed": self._tokens_total,
                "averageSessionDuration": js_number(sum(ended) / len(ended)) if ended else 0,
                "activeSessions": active,
                "successRate": js_number(self._tasks_succeeded / processed) if processed else 1,
            },
            "subsystems": {
                name: {"status": "running", "lastCheck": checked} for name in SUBSYSTEMS
            },
        }

    # ---------------------------------------------------------------- handshake

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        if target.path == "/health":
            active = sum(1 for session in self.sessions.values() if session.status == "running")
            health = {"status": "healthy", "uptime": self.uptime_ms, "activeSessions": active}
            return json_response(200, health)
        if not _is_upgrade(request.headers):
            return None  # websockets answers 426 Upgrade Required
        opts = self.options
        error = authenticate(opts.token, opts.api_key, request.headers, parse_qs(target.query))
        if error is not None:
            return json_response(401, {"error": error})
        self._handshake_auth[ws] = bool(opts.token or opts.api_key)
        return None

    def _process_response(
        self, ws: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        authenticated = self._handshake_auth.pop(ws, False)
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        limit = self.options.max_connections
        if limit > 0 and self._live_connections() >= limit:
            return json_response(429, {"error": "connection_limit_exceeded"})
        # Counted from here, not from the handler, so concurrent handshakes can't
        # both slip under the limit.
        self._admitted[ws] = authenticated
        return None

    def _live_connections(self) -> int:
        for ws in [ws for ws in self._admitted if ws.state is State.CLOSED]:
            del self._admitted[ws]
        return len(self._conns) + len(self._admitted)

    # ---------------------------------------------------------------- connection

    async def _handler(self, ws: ServerConnection) -> None:
        self._total_connections += 1
        conn = _Conn(self._total_connections, ws, self._admitted.pop(ws, False))
        self._conns[ws] = conn
        self._connection_event.set()
        self._connection_event = asyncio.Event()
        try:
            if not await self._send(conn, HEALTH_CHECK_FRAME):
                return
            opts = self.options
            if opts.firehose > 0:
                _start(conn.tasks, self._firehose(conn))
            if opts.expire_token_after > 0 and conn.authenticated:
                _start(conn.tasks, self._expire(conn, opts.expire_token_after))
            async for message in ws:
                self._record(conn.id, "received", message)
                await self._dispatch(conn, message)
        except ConnectionClosed:
            pass
        finally:
            del self._conns[ws]
            await _cancel_all(conn.tasks)

    async def _dispatch(self, conn: _Conn, data: str | bytes) -> None:
        parsed = parse_message(data)
        if parsed is None:
            await self._send(conn, error_frame(INVALID_FORMAT))
            return
        kind, message = parsed
        route = self._routes.get(kind)
        if route is None:
            await self._send(conn, error_frame(f"Unknown message type: {kind}"))
            return
        try:
            await route(conn, message)
        except ConnectionClosed:
            raise
        except Exception:
            # A bug here must not take the connection down with it.
            logger.exception("simulator failed to handle %s", kind)
            await self._send(conn, error_frame(INVALID_FORMAT))

    async def _send(self, conn: _Conn, data: str | bytes, *, text: bool | None = None) -> bool:
        """Send one frame, journal it, and apply the forced-disconnect policy."""
        ws = conn.ws
        # Sending on a closing connection would block until the close completes.
        if conn.doomed or ws.state is not State.OPEN:
            return False
        conn.attempts += 1
        final = self._claim_disconnect(conn)
        try:
            await ws.send(data, text=text)
        except ConnectionClosed:
            return False
        finally:
            if final:
                self._spawn(self._force_close(conn))
        self._record(conn.id, "sent", data)
        return True

    def _claim_disconnect(self, conn: _Conn) -> bool:
        # Decided before the send so that exactly ``disconnect_after`` frames go out,
        # even when several tasks send to this connection at once.
        opts = self.options
        if opts.disconnect_after <= 0 or conn.attempts < opts.disconnect_after:
            return False
        if opts.disconnects > 0 and self._forced_disconnects >= opts.disconnects:
            return False
        self._forced_disconnects += 1
        conn.doomed = True
        return True

    async def _force_close(self, conn: _Conn) -> None:
        await conn.ws.close(RESTART_CODE, RESTART_REASON)

    async def _expire(self, conn: _Conn, after: float) -> None:
        await asyncio.sleep(after)
        await conn.ws.close(TOKEN_EXPIRED_CODE, TOKEN_EXPIRED_REASON)

    async def _firehose(self, conn: _Conn) -> None:
        count = self.options.firehose
        prefix, suffix = firehose_template(self._firehose_id, self.options.firehose_size, count)
        index = 0
        while index < count:
            if self._disconnect_policy_active():
                # Frame by frame, so the forced close lands after exactly N frames.
                if not await self._send(conn, f"{prefix}{index}{suffix}"):
                    return
                index += 1
                continue
            end = min(index + FIREHOSE_BATCH, count)
            if not self._write_batch(conn, [f"{prefix}{i}{suffix}" for i in range(index, end)]):
                return
            index = end
            # Same flow control as ws.send(): wait only while the write buffer is full.
            await conn.ws.drain()
            # A reader that keeps up never fills the buffer; let other clients run.
            await asyncio.sleep(0)
        await self._send(conn, stream_end_frame(self._firehose_id))

    def _disconnect_policy_active(self) -> bool:
        opts = self.options
        budget_left = opts.disconnects <= 0 or self._forced_disconnects < opts.disconnects
        return opts.disconnect_after > 0 and budget_left

    def _write_batch(self, conn: _Conn, texts: list[str]) -> bool:
        """Frame several messages and hand them to the socket in one write.

        ``ws.send()`` costs one syscall per frame, which caps a firehose near
        100k frames/s; the Sans-I/O protocol frames them the same way, and one
        write per batch more than doubles that. Nothing awaits in between, so no
        other send can interleave inside the batch.
        """
        ws = conn.ws
        if conn.doomed or ws.state is not State.OPEN or ws.transport.is_closing():
            return False
        protocol = ws.protocol
        for text in texts:
            protocol.send_text(text.encode())
        ws.transport.write(b"".join(protocol.data_to_send()))
        conn.attempts += len(texts)
        for text in texts:
            self._record(conn.id, "sent", text)
        return True

    def _record(self, conn_id: int, direction: str, data: str | bytes) -> None:
        entry = JournalEntry(conn_id, direction, data)
        if direction == "sent":
            self.frames_sent += 1
            while self._sent_waiters and self._sent_waiters[0][0] <= self.frames_sent:
                _, _, waiter = heapq.heappop(self._sent_waiters)
                if not waiter.done():
                    waiter.set_result(None)
        if self.options.journal:
            self.journal.append(entry)
        if self._journal_file is not None:
            line: JSONObject = {"conn": conn_id, "direction": direction}
            if isinstance(data, str):
                line["text"] = data
            else:
                line["b64"] = base64.b64encode(data).decode("ascii")
            self._journal_file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._journal_file.flush()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        _start(self._background, coro)

    # ---------------------------------------------------------------- message handlers

    async def _on_ping(self, conn: _Conn, message: JSONObject) -> None:
        await self._send(conn, PONG_FRAME)

    async def _on_daemon_status(self, conn: _Conn, message: JSONObject) -> None:
        await self._send(
            conn, dumps({"type": "daemon_status_update", "status": self.daemon_status()})
        )

    async def _on_list_sessions(self, conn: _Conn, message: JSONObject) -> None:
        sessions = [session.to_json() for session in self.sessions.values()]
        await self._send(conn, dumps({"type": "sessions_list", "sessions": sessions}))

    async def _on_spawn_session(self, conn: _Conn, message: JSONObject) -> None:
        request = parse_spawn_payload(message.get("payload"))
        if request is None:
            await self._send(conn, error_frame(INVALID_FORMAT))
            return
        session = self._new_session(request, self._client_rng, autonomous=False)
        await self.broadcast(session_frame("session_status_update", session))
        self._spawn(self._first_task(session, conn))

    async def _on_execute_task(self, conn: _Conn, message: JSONObject) -> None:
        parsed = parse_execute_payload(message.get("payload"))
        if parsed is None:
            await self._send(conn, error_frame(INVALID_FORMAT))
            return
        session_id, task, stream = parsed
        await self._send(conn, task_frame("task_executing", session_id, task))
        session = self.sessions.get(session_id)
        if session is None:
            error = f"Session not found: {session_id}"
        elif session.status != "running":
            error = f"Session {session_id} is not running (status: {session.status})"
        else:
            self._spawn(self._extra_task(session, task, conn, stream))
            return
        await self._send(conn, task_frame("task_failed", session_id, task, error))

    async def _requested_session(self, conn: _Conn, message: JSONObject) -> SimSession | None:
        """The session a request names, or None after answering with the daemon's error."""
        session_id = _session_id_of(message.get("payload"))
        if session_id is None:
            await self._send(conn, error_frame(INVALID_FORMAT))
            return None
        session = self.sessions.get(session_id)
        if session is None:
            await self._send(conn, error_frame(f"Session not found: {session_id}"))
        return session

    async def _on_session_status(self, conn: _Conn, message: JSONObject) -> None:
        session = await self._requested_session(conn, message)
        if session is not None:
            await self._send(conn, session_frame("session_status_update", session))

    async def _on_stop_session(self, conn: _Conn, message: JSONObject) -> None:
        session = await self._requested_session(conn, message)
        if session is None:
            return
        session.end("stopped")
        await self.broadcast(session_frame("session_status_update", session))

    # ---------------------------------------------------------------- sessions

    def _new_session(
        self, request: SpawnRequest, rng: random.Random, *, autonomous: bool
    ) -> SimSession:
        created = now_ms()
        session_id = f"session_{created}_{random_base36(rng)}"
        while session_id in self.sessions:
            session_id = f"session_{created}_{random_base36(rng)}"
        session = SimSession(
            id=session_id,
            orchestrator_id=request.orchestrator_id,
            task_id=f"task_{created}",
            description=request.description,
            task_type=request.task_type,
            priority=request.priority,
            task_status=request.task_status,
            session_type=request.session_type,
            memory_profile=request.memory_profile,
            created_ms=created,
            rng=random.Random(rng.getrandbits(64)),
            autonomous=autonomous,
        )
        self.sessions[session_id] = session
        self._spawned_total += 1
        return session

    async def _autonomous_sessions(self) -> None:
        opts = self.options
        if opts.wait_for_client:
            await self.wait_connections(1, timeout=None)
        for index in range(opts.sessions):
            if index and opts.session_interval > 0:
                await asyncio.sleep(opts.session_interval)
            request = autonomous_request(self._auto_rng)
            session = self._new_session(request, self._auto_rng, autonomous=True)
            await self.broadcast(session_frame("session_status_update", session))
            self._spawn(self._first_task(session, None))

    async def _status_ticker(self) -> None:
        interval = self.options.status_interval
        while True:
            await asyncio.sleep(interval)
            await self.broadcast(
                dumps({"type": "daemon_status_update", "status": self.daemon_status()})
            )

    async def _first_task(self, session: SimSession, requester: _Conn | None) -> None:
        try:
            # Only the requester sees the stream; passive clients get status broadcasts.
            outcome = await self._run_task(
                session, session.description, session.task_id, requester, stream=True
            )
            if session.status == "running":
                session.end("completed" if outcome.success else "failed")
                await self.broadcast(session_frame("session_status_update", session))
            if requester is not None:
                # The real daemon answers the spawn only now, with the final status.
                await self._send(requester, session_frame("session_spawned", session))
        finally:
            # A runner cancelled by stop() leaves its session running: not done.
            if session.autonomous and session.terminal:
                self._auto_finished += 1
                if self._auto_finished >= self.options.sessions:
                    self._sessions_done.set()

    async def _extra_task(self, session: SimSession, task: str, conn: _Conn, stream: bool) -> None:
        outcome = await self._run_task(session, task, f"task_{now_ms()}", conn, stream=stream)
        if outcome.success:
            await self._send(conn, task_frame("task_completed", session.id, task))
        else:
            await self._send(conn, task_frame("task_failed", session.id, task, outcome.error))

    async def _run_task(
        self,
        session: SimSession,
        description: str,
        task_id: str,
        target: _Conn | None,
        *,
        stream: bool,
    ) -> TaskOutcome:
        opts = self.options
        plan = plan_task(
            session.rng,
            chunks=opts.chunks_per_task,
            chunk_delay=opts.chunk_delay,
            fail_rate=opts.fail_rate,
        )
        begun = time.monotonic()
        sid = session.id
        out = target if stream else None
        if out is not None:
            await self._send(out, stream_start_frame(sid))
        index = 0
        tool_calls = 0
        texts: list[str] = []
        stopped = False
        for step in plan.steps:
            if step.delay > 0:
                await asyncio.sleep(step.delay)
            if session.status == "stopped":
                stopped = True
                break
            if isinstance(step, ChunkStep):
                texts.append(step.text)
                if out is not None:
                    await self._send(out, stream_chunk_frame(sid, step.text, index))
                index += 1
            else:
                tool_calls += 1
                if out is not None:
                    await self._send(out, tool_call_start_frame(sid, step, iso_from_ms(now_ms())))
                if step.duration > 0:
                    await asyncio.sleep(step.duration)
                if out is not None:
                    await self._send(out, tool_call_result_frame(sid, step, iso_from_ms(now_ms())))
        if out is not None:
            await self._send(out, stream_end_frame(sid))

        success = plan.success and not stopped
        error = plan.error
        if stopped:
            error = f"Session {sid} is not running (status: {session.status})"
        elapsed = int((time.monotonic() - begun) * 1000)
        tokens = session.record_task(
            description, task_id, "".join(texts), tool_calls, success=success, elapsed_ms=elapsed
        )
        self._tasks_processed += 1
        self._tasks_succeeded += success
        self._tokens_total += tokens
        return TaskOutcome(success, error)


def _open_journal(path: str) -> IO[str]:
    # Closed in Simulator.stop(); _record flushes every line, so a crash loses nothing.
    return open(path, "a", encoding="utf-8")


def _start(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(_finished(tasks))


def _finished(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if not isinstance(exc, ConnectionClosed):
                logger.error("simulator task failed", exc_info=exc)

    return done


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def serve(options: SimulatorOptions, *, ready: Callable[[int], None] | None = None) -> None:
    """Run a simulator until SIGINT or SIGTERM, then close connections like a daemon would."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available off the main thread or on Windows; then only cancellation stops us.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        async with Simulator(options) as sim:
            if ready is not None:
                ready(sim.port)
            await stop.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
