"""What a recording built without sockets holds (:mod:`recorder.simulator.database`
writes it): the frames of sessions planned ahead, in time order.

The frames are the simulator's (its frame builders, task plans, session objects and
firehose template) and a UI's requests (:mod:`recorder.simulator.ui`); only the clock
is not: every frame's time is laid out by its :class:`SessionPlan`. A recording has
one link connection (the recorder's), opened before the first session with the
link's opening exchange and closed after the last; each conversation on a proxy
connection of its own; the daemon's session broadcasts on both.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from recorder.protocol.daemon import HEALTH_CHECK_FRAME, dumps
from recorder.protocol.frames import IN, OUT
from recorder.protocol.requests import DAEMON_STATUS, LIST_SESSIONS
from recorder.simulator.daemon import Simulator
from recorder.simulator.frames import (
    firehose_template,
    session_frame,
    stream_chunk_frame,
    stream_end_frame,
    stream_start_frame,
    task_frame,
    tool_call_result_frame,
    tool_call_start_frame,
)
from recorder.simulator.options import SimulatorOptions
from recorder.simulator.plans import ChunkStep, TaskPlan, ToolStep, plan_task
from recorder.simulator.sessions import (
    TASKS,
    SimSession,
    autonomous_request,
    random_base36,
)
from recorder.simulator.ui import execute_request, spawn_request
from recorder.times import iso_from_ms

EPOCH_US: Final = 1_790_812_800_000_000  # 2026-10-01T00:00:00Z
DAY_US: Final = 86_400_000_000
# time.monotonic_ns() at EPOCH_US: about 35 days of uptime.
MONO0_NS: Final = 3_000_000_000_000_000
DAEMON_URL: Final = "ws://127.0.0.1:8787"
# Frames naming no session: the link's opening exchange (the daemon's health check,
# the recorder's two requests and their answers) and, on each proxy connection, the
# daemon's health check.
LINK_OWN: Final = 5
PROXY_OWN: Final = 1
# A conversation's frames besides its tasks' streamed steps: the spawn, the status
# broadcasts (running, then final; on the proxy and on the link), the first task's
# stream_start and stream_end, session_spawned. Each further task adds TASK_FRAMES:
# execute_task, task_executing, stream_start, stream_end, task_completed or task_failed.
SESSION_FRAMES: Final = 8
TASK_FRAMES: Final = 5
# The simulator's firehose as this machine's recorder receives it, frames/s.
FIREHOSE_RATE: Final = 125_000
OPTIONS: Final = SimulatorOptions()
Step = ChunkStep | ToolStep


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session to record, with exactly ``frames`` frames naming it, from
    ``start_us`` over ``minutes``. A conversation: a UI's spawn_session and ``tasks``
    execute_task requests (None: as many as fit beside the spawn's own task) and what
    the daemon streams back, on a proxy connection of its own; the spawn's own task
    streams the frames the others leave (``tasks=0``: one long task). With
    ``firehose``: the simulator's firehose on the link (``frames - 2`` stream_chunk
    frames, stream_end), then the session's end."""

    frames: int
    start_us: int
    minutes: float = 30.0
    tasks: int | None = None
    firehose: bool = False

    @property
    def end_us(self) -> int:
        return self.start_us + int(self.minutes * 60e6)


def spread(
    frames: int,
    sessions: int,
    days: int,
    minutes: float = 30.0,
    tasks: int | None = None,
    start_us: int = EPOCH_US,
) -> list[SessionPlan]:
    """``sessions`` conversations starting at even steps over ``days`` (those of
    ``minutes`` overlap), ``frames`` frames in the database in all: many UIs' recording."""
    per, extra = divmod(frames - LINK_OWN - sessions * PROXY_OWN, max(sessions, 1))
    step = (days * DAY_US - int(minutes * 60e6) - 120_000_000) // max(sessions - 1, 1)
    if per < SESSION_FRAMES or step <= 0:
        raise ValueError(
            f"{sessions} sessions of {minutes} minutes and {frames} frames in all"
            f" do not fit in {days} days"
        )
    first = start_us + 60_000_000
    return [
        SessionPlan(per + (k < extra), first + k * step, minutes, tasks) for k in range(sessions)
    ]


def firehose(chunks: int, start_us: int = EPOCH_US) -> SessionPlan:
    """One session of ``chunks`` firehose frames, as ``recorder simulate --firehose``
    sends them, then finished (``completed``)."""
    return SessionPlan(chunks + 2, start_us, chunks / FIREHOSE_RATE / 60, firehose=True)


# --- the frames, in time order -------------------------------------------------------

# An event of the recording: (time, the session's index or -1 for the link, its number
# within the session, what happens). Unique before the last item, so never compared.
Open = tuple[str, str, int]  # ("open", role, session) : a proxy connection, or the link
Send = tuple[str, int, str, str]  # ("frame", session or -1 for the link, direction, text)
Close = tuple[str, int]  # ("close", session or -1)
Event = tuple[int, int, int, Open | Send | Close]


class _Session:
    """One plan's frames as they happen; every frame that names the session is timed
    at an even step of its span."""

    def __init__(self, index: int, plan: SessionPlan, rng: random.Random) -> None:
        self.index, self.plan, self.rng = index, plan, rng
        self.n = 0  # events so far
        self.k = 0  # frames that name the session so far: the clock
        self.step_us = (plan.end_us - plan.start_us) / (plan.frames + 1)
        start_ms = plan.start_us // 1000
        base = "session_firehose_" if plan.firehose else "session_"
        self.id = f"{base}{start_ms}_{random_base36(rng)}"
        request = autonomous_request(rng)
        self.session = SimSession.spawned(self.id, request, start_ms, rng)
        self.request = request

    def at(self) -> int:
        return self.plan.start_us + int(self.k * self.step_us)

    def event(self, action: Open | Send | Close, at: int) -> Event:
        self.n += 1
        return (at, self.index, self.n, action)

    def send(self, direction: str, text: str, link: bool = False) -> Event:
        self.k += 1
        return self.event(("frame", -1 if link else self.index, direction, text), self.at())

    def broadcast(self, kind: str) -> Iterator[Event]:
        """A session frame the daemon sends every client: the UI's, then the link."""
        text = session_frame(kind, self.session, self.at() // 1000)
        if not self.plan.firehose:
            yield self.send(IN, text)
        yield self.send(IN, text, link=True)

    def events(self) -> Iterator[Event]:
        if self.plan.firehose:
            yield from self.firehose()
        else:
            yield from self.conversation()

    def firehose(self) -> Iterator[Event]:
        chunks = self.plan.frames - 2
        prefix, suffix = firehose_template(self.id, OPTIONS.firehose_size, chunks)
        for i in range(chunks):
            yield self.send(IN, f"{prefix}{i}{suffix}", link=True)
        yield self.send(IN, stream_end_frame(self.id), link=True)
        self.session.end("completed", self.at() // 1000)
        yield from self.broadcast("session_status_update")

    def conversation(self) -> Iterator[Event]:
        """As the simulator plays it to a UI that asks for its tasks at once: the
        spawn's own task streams meanwhile and its end ends the session
        (``session_spawned`` answers the spawn); the tasks asked for stream after."""
        sid, session = self.id, self.session
        yield self.event(("open", "proxy", self.index), self.plan.start_us)
        # The health check names no session: it is not one of the plan's frames.
        yield self.event(("frame", self.index, IN, HEALTH_CHECK_FRAME), self.plan.start_us)
        yield self.send(OUT, spawn_request(self.request))
        yield from self.broadcast("session_status_update")
        first = self.plan_task()
        left = self.plan.frames - SESSION_FRAMES
        tasks = list(self.tasks(left, _cost(first.steps)))
        for plan, text in tasks:
            left -= TASK_FRAMES + _cost(plan.steps)
            yield self.send(OUT, execute_request(sid, text))
            yield self.send(IN, task_frame("task_executing", sid, text))
        yield self.send(IN, stream_start_frame(sid))
        yield from self.stream(self.longer(first.steps, left))
        yield self.send(IN, stream_end_frame(sid))
        self.record(first, session.description, session.task_id)
        session.end("completed" if first.success else "failed", self.at() // 1000)
        yield from self.broadcast("session_status_update")
        yield self.send(IN, session_frame("session_spawned", session, self.at() // 1000))
        for plan, text in tasks:
            yield from self.task(plan, text)
        yield self.event(("close", self.index), self.at() + 1)

    def plan_task(self) -> TaskPlan:
        rng = self.session.rng
        return plan_task(rng, chunks=OPTIONS.chunks_per_task, fail_rate=OPTIONS.fail_rate)

    def record(self, plan: TaskPlan, description: str, task_id: str) -> None:
        """Into the session's metrics and memory, as the simulator books a task."""
        text = "".join(s.text for s in plan.steps if isinstance(s, ChunkStep))
        tools = sum(1 for s in plan.steps if isinstance(s, ToolStep))
        elapsed = (self.at() - self.plan.start_us) // 1000
        self.session.record_task(
            description,
            task_id,
            text,
            tools,
            success=plan.success,
            elapsed_ms=elapsed,
            at_ms=self.at() // 1000,
        )

    def tasks(self, left: int, first: int) -> Iterator[tuple[TaskPlan, str]]:
        """The execute_task requests, each with its plan: ``plan.tasks`` of them, their
        streams cut to fit ``left`` frames; or as many as fit beside the first task's."""
        count = self.plan.tasks
        if count is not None and left < TASK_FRAMES * count:
            raise ValueError(f"a session of {self.plan.frames} frames cannot hold {count} tasks")
        i = 0
        while count is None or i < count:
            plan = self.plan_task()
            need = TASK_FRAMES + _cost(plan.steps)
            if count is None and left - need < first:
                return
            if count is not None:  # room for the tasks after this one
                room = left - TASK_FRAMES * (count - i)
                plan = TaskPlan(_cut(plan.steps, room), plan.success, plan.error)
            left -= TASK_FRAMES + _cost(plan.steps)
            i += 1
            yield plan, f"Task {i}: {self.rng.choice(TASKS)}"

    def task(self, plan: TaskPlan, text: str) -> Iterator[Event]:
        """A task asked for with execute_task, streamed once the session has ended."""
        sid = self.id
        yield self.send(IN, stream_start_frame(sid))
        yield from self.stream(plan.steps)
        yield self.send(IN, stream_end_frame(sid))
        if plan.success:
            yield self.send(IN, task_frame("task_completed", sid, text))
        else:
            yield self.send(IN, task_frame("task_failed", sid, text, plan.error))

    def longer(self, steps: Sequence[Step], frames: int) -> Iterator[Step]:
        """A stream of exactly ``frames`` frames: ``steps``, then those of further
        plans, as a task that goes on working (or cut short); where a tool call (two
        frames) does not fit, a chunk takes the last frame (every plan starts with one)."""
        while frames:
            for step in steps:
                cost = 1 if isinstance(step, ChunkStep) else 2
                if cost <= frames:
                    frames -= cost
                    yield step
                if not frames:
                    return
            steps = self.plan_task().steps

    def stream(self, steps: Iterable[Step]) -> Iterator[Event]:
        index = 0
        for step in steps:
            if isinstance(step, ChunkStep):
                yield self.send(IN, stream_chunk_frame(self.id, step.text, index))
                index += 1
            else:
                yield self.send(
                    IN, tool_call_start_frame(self.id, step, iso_from_ms(self.at() // 1000))
                )
                yield self.send(
                    IN, tool_call_result_frame(self.id, step, iso_from_ms(self.at() // 1000))
                )


def _cost(steps: Sequence[Step]) -> int:
    """Frames a stream's steps take: a chunk one, a tool call two (start, result)."""
    return sum(1 if isinstance(s, ChunkStep) else 2 for s in steps)


def _cut(steps: Sequence[Step], frames: int) -> tuple[Step, ...]:
    """The steps that fit in ``frames`` frames, from the start."""
    kept: list[Step] = []
    for step in steps:
        frames -= 1 if isinstance(step, ChunkStep) else 2
        if frames < 0:
            break
        kept.append(step)
    return tuple(kept)


def _link(plans: Sequence[SessionPlan]) -> Iterator[Event]:
    """The recorder's link: open before the first session, the opening exchange,
    closed after the last."""
    start = min((p.start_us for p in plans), default=EPOCH_US) - 1_000_000
    status = dumps({"type": "daemon_status_update", "status": Simulator(OPTIONS).daemon_status()})
    yield (start, -1, 0, ("open", "link", -1))
    opening = [(IN, HEALTH_CHECK_FRAME), (OUT, DAEMON_STATUS), (OUT, LIST_SESSIONS)]
    opening += [(IN, status), (IN, dumps({"type": "sessions_list", "sessions": []}))]
    for n, (direction, text) in enumerate(opening, 1):
        yield (start + n * 1000, -1, n, ("frame", -1, direction, text))
    end = max((p.end_us for p in plans), default=start) + 1_000_000
    yield (end, -1, len(opening) + 1, ("close", -1))


def events(plans: Sequence[SessionPlan], seed: int) -> tuple[list[str], Iterator[Event]]:
    """The sessions' ids, and every event of the recording in time order."""
    master = random.Random(seed)
    sessions = [_Session(i, p, random.Random(master.getrandbits(64))) for i, p in enumerate(plans)]
    return [s.id for s in sessions], heapq.merge(_link(plans), *(s.events() for s in sessions))
