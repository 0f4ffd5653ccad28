"""The simulated daemon's behaviour: sessions, tasks, streams and the replies to requests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import time
from collections.abc import Awaitable, Callable

from websockets.exceptions import ConnectionClosed

from recorder.protocol.daemon import INVALID_FORMAT, PONG_FRAME, dumps, error_frame
from recorder.simulator.frames import (
    SUBSYSTEMS,
    JSONObject,
    js_number,
    parse_message,
    session_frame,
    stream_chunk_frame,
    stream_end_frame,
    stream_start_frame,
    task_frame,
    tool_call_result_frame,
    tool_call_start_frame,
)
from recorder.simulator.options import SimulatorOptions
from recorder.simulator.plans import ChunkStep, plan_task
from recorder.simulator.server import DaemonServer, _Conn, logger
from recorder.simulator.sessions import (
    SimSession,
    SpawnRequest,
    TaskOutcome,
    _session_id_of,
    autonomous_request,
    parse_execute_payload,
    parse_spawn_payload,
    random_base36,
)
from recorder.times import iso_from_ms, now_ms

# The error of a task in SimulatorOptions.fail_tasks (whose draw succeeded).
FAILED_ON_PURPOSE = "LLM request failed: 500 Internal Server Error"


class Simulator(DaemonServer):
    """A daemon on a real socket. ``async with Simulator(opts) as sim:`` in tests."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        options = options or SimulatorOptions()
        master = random.Random(options.seed)
        # Separate streams, so client activity cannot shift what autonomous sessions do.
        self._auto_rng = random.Random(master.getrandbits(64))
        self._client_rng = random.Random(master.getrandbits(64))
        super().__init__(options, f"session_firehose_{now_ms()}_{random_base36(master)}")
        self.sessions: dict[str, SimSession] = {}
        self._sessions_done = asyncio.Event()
        self._auto_finished = 0
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

    async def start(self) -> None:
        if self._server is not None:
            return
        await super().start()
        opts = self.options
        if opts.sessions > 0:
            self._spawn(self._autonomous_sessions())
        else:
            self._sessions_done.set()
        if opts.status_interval > 0:
            self._spawn(self._status_ticker())

    def health(self) -> JSONObject:
        active = sum(1 for session in self.sessions.values() if session.status == "running")
        return {"status": "healthy", "uptime": self.uptime_ms, "activeSessions": active}

    async def wait_sessions_done(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109
        """Wait until every autonomous session reached a terminal status."""
        async with asyncio.timeout(timeout):
            await self._sessions_done.wait()

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
        if self.options.spawn_broadcast:
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

    def _new_session(
        self, request: SpawnRequest, rng: random.Random, *, autonomous: bool
    ) -> SimSession:
        created = now_ms()
        session_id = f"session_{created}_{random_base36(rng)}"
        while session_id in self.sessions:
            session_id = f"session_{created}_{random_base36(rng)}"
        session = SimSession.spawned(session_id, request, created, rng, autonomous=autonomous)
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
        if description in opts.fail_tasks:
            plan = dataclasses.replace(plan, success=False, error=plan.error or FAILED_ON_PURPOSE)
        begun = time.monotonic()
        sid = session.id
        out = target if stream and opts.streams else None
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
