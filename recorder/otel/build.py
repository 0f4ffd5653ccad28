"""A session's spans, from what its frames said (:mod:`recorder.otel.fold`), its
streams' chunks and its gaps: the mapping of issue 22, in the OpenTelemetry GenAI
semantic conventions (names from ``opentelemetry-semantic-conventions`` where they
have one). Pure.

- One trace per session; the root span ``invoke_agent {orchestrator}``, from the
  session's first recorded frame (the daemon's startedAt where it said one near it)
  to the frame that showed its final status (its endedAt, likewise); open sessions
  end at their last frame.
- A child span per task, per tool call (``execute_tool {toolName}``), per stream.
- Gaps in the recording: events ``recorder.gap`` on the root.
- Content (tool arguments and results, task ids and descriptions, stream text) only
  with ``content``, each cut to ``longest`` bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.attributes.session_attributes import SESSION_ID

from recorder.db.rows import Session
from recorder.otel.fold import (
    Chunks,
    Folded,
    Moment,
    StreamRun,
    TaskRun,
    ToolRun,
    TraceFold,
    end_ns,
)
from recorder.otel.spans import (
    AttrValue,
    SessionTrace,
    Span,
    SpanEvent,
    shortened,
    span_id,
    trace_id,
)
from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.story import Gap
from recorder.protocol.timeline import CLOCK_FLAG_US

INVOKE_AGENT = gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value
EXECUTE_TOOL = gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value
# The daemon reports one number for a session's tokens (metrics.tokensUsed): the
# conventions have no name for a total, so it goes under gen_ai.usage.total_tokens,
# beside the convention's input/output names for daemons that report those.
TOKEN_NAMES = {
    "inputTokens": gen_ai.GEN_AI_USAGE_INPUT_TOKENS,
    "promptTokens": gen_ai.GEN_AI_USAGE_INPUT_TOKENS,
    "outputTokens": gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS,
    "completionTokens": gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS,
    "tokensUsed": "gen_ai.usage.total_tokens",
    "totalTokens": "gen_ai.usage.total_tokens",
}
# A name from the daemon in a span's name: short (span names are indexed).
NAME_BYTES = 128


@dataclass(frozen=True)
class Shape:
    """What a trace may carry: content (cut to ``longest`` bytes) or not."""

    content: bool = False
    longest: int = 4096


def session_trace(
    session: Session,
    folded: Folded,
    chunks: Sequence[Chunks],
    gaps: Sequence[Gap],
    shape: Shape,
) -> SessionTrace:
    """The session's spans, root first (``chunks``: one per ``folded.streams``)."""
    instance, sid = session.instance, session.id
    start_ns, end = root_times(session, folded)
    root_id = span_id(instance, sid, "session", 0)
    children = Children(instance, sid, root_id, end, shape)
    spans = [children.task(t, session, folded, start_ns) for t in _tasks(session, folded)]
    spans += [children.tool(t) for t in folded.tools]
    for run, counted in zip(folded.streams, chunks, strict=True):
        made = children.stream(run, counted)
        if made is not None:
            spans.append(made)
    root = Span(
        root_id,
        None,
        _name(INVOKE_AGENT, session.orchestrator_id),
        start_ns,
        end,
        _root_attributes(session, folded),
        tuple(
            SpanEvent("recorder.gap", g.start_us * 1000, {"recorder.gap.seconds": g.seconds})
            for g in gaps
        ),
        _session_error(session, folded, shape.longest),
    )
    return SessionTrace(sid, instance, trace_id(instance, sid), (root, *spans))


def root_times(session: Session, folded: Folded) -> tuple[int, int]:
    """The root's start and end in epoch ns: the recorder's, or the daemon's
    startedAt/endedAt where it said them within a day of the recorder's (further, it
    is the daemon's clock that is off: ``recorder show`` flags it)."""
    first = session.first_seen_us
    if folded.first is not None:
        first = min(first, folded.first.received_us)
    start = first * 1000
    if session.started_at_us is not None and abs(session.started_at_us - first) <= CLOCK_FLAG_US:
        start = session.started_at_us * 1000
    final = TraceFold.final(folded, session.status)
    if session.status in TERMINAL_STATUSES:
        ours = final.received_us if final is not None else session.finished_us
        ours = ours if ours is not None else session.last_seen_us
        end = ours * 1000
        daemon = session.ended_at_us
        if daemon is not None and abs(daemon - ours) <= CLOCK_FLAG_US:
            end = daemon * 1000
    else:  # not ended: as far as it was recorded
        end = session.last_seen_us * 1000
    return start, max(start, end)


def _root_attributes(session: Session, folded: Folded) -> dict[str, AttrValue]:
    attributes: dict[str, AttrValue] = {
        gen_ai.GEN_AI_OPERATION_NAME: INVOKE_AGENT,
        gen_ai.GEN_AI_CONVERSATION_ID: session.id,
        SESSION_ID: session.id,
        "recorder.instance": session.instance,
        "recorder.session.frames": session.frame_count,
    }
    if session.orchestrator_id is not None:
        attributes[gen_ai.GEN_AI_AGENT_ID] = session.orchestrator_id
        attributes[gen_ai.GEN_AI_AGENT_NAME] = session.orchestrator_id
    if session.session_type is not None:
        attributes["recorder.session.type"] = session.session_type
    if session.status is not None:
        attributes["recorder.session.status"] = session.status
    for key, value in folded.metrics.items():
        name = TOKEN_NAMES.get(key)
        if name is None and "token" in key.lower():
            name = "gen_ai.usage." + _snake(key)
        if name is not None and isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = value
    if folded.tasks_left_out:
        attributes["recorder.tasks_left_out"] = folded.tasks_left_out
    return attributes


def _session_error(session: Session, folded: Folded, longest: int) -> str | None:
    if session.status != "failed":
        return None
    return shortened(folded.own_error or session.last_error or "failed", longest)


def _tasks(session: Session, folded: Folded) -> list[TaskRun]:
    """The tasks, the session's own first one included: it gets no frames of its own
    (it runs from the spawn to the session's final status)."""
    tasks = list(folded.tasks.values())
    if session.task_id is not None and session.task_id not in folded.tasks:
        first = folded.first or Moment(0, 0, session.first_seen_us, 0)
        run = TaskRun(session.task_id, first, description=session.task_description)
        tasks.insert(0, run)
    return tasks


class Children:
    """The root's child spans, each with its derived id."""

    def __init__(self, instance: str, sid: str, root: bytes, root_end: int, shape: Shape) -> None:
        self.instance, self.sid, self.root = instance, sid, root
        self.root_end, self.shape = root_end, shape

    def text(self, value: Any) -> str:
        raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return shortened(raw, self.shape.longest)

    def task(self, run: TaskRun, session: Session, folded: Folded, root_start: int) -> Span:
        status, end, error = run.status, run.end, run.error
        own = run.task_id == session.task_id and run.end is None
        start = run.first.ns
        stop = end_ns(run.first, end) if end is not None else self.root_end
        if own:  # the spawn's task: it runs as long as the session does
            start, stop, status = root_start, self.root_end, session.status or status
            if session.status == "failed":
                error = folded.own_error or session.last_error
        attributes: dict[str, AttrValue] = {"recorder.task.status": status or "unknown"}
        if self.shape.content:
            attributes["recorder.task.id"] = self.text(run.task_id)
            if run.description is not None:
                attributes["recorder.task.description"] = self.text(run.description)
        failed = status == "failed"
        return Span(
            span_id(self.instance, self.sid, "task", run.task_id),
            self.root,
            "task",
            start,
            max(start, stop),
            attributes,
            error=shortened(error or "failed", self.shape.longest) if failed else None,
        )

    def tool(self, run: ToolRun) -> Span:
        opened = run.start or run.end
        assert opened is not None  # a run has a start, or is a result
        attributes: dict[str, AttrValue] = {
            gen_ai.GEN_AI_OPERATION_NAME: EXECUTE_TOOL,
            "recorder.tool.status": run.status or "unanswered",
        }
        if run.name is not None:
            attributes[gen_ai.GEN_AI_TOOL_NAME] = shortened(run.name, self.shape.longest)
        if self.shape.content:
            if run.start is not None and run.arguments is not None:
                attributes[gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS] = self.text(run.arguments)
            if run.end is not None and run.result is not None:
                attributes[gen_ai.GEN_AI_TOOL_CALL_RESULT] = self.text(run.result)
        start = opened.ns
        stop = end_ns(opened, run.end) if run.end is not None else max(start, self.root_end)
        error = None
        if run.status == "failed":
            said = run.result.get("error") if isinstance(run.result, dict) else None
            error = self.text(said) if self.shape.content and said is not None else "failed"
        return Span(
            span_id(self.instance, self.sid, "tool", opened.id),
            self.root,
            _name(EXECUTE_TOOL, run.name),
            start,
            stop,
            attributes,
            error=error,
        )

    def stream(self, run: StreamRun, chunks: Chunks) -> Span | None:
        opened = run.start or chunks.first
        if opened is None:
            return None  # an end alone, with no chunk before it: nothing streamed
        closed = run.end or chunks.last or opened
        attributes: dict[str, AttrValue] = {"recorder.stream.chunks": chunks.total}
        if run.start is not None and chunks.first is not None:
            seconds = (end_ns(run.start, chunks.first) - run.start.ns) / 1e9
            attributes[gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = seconds
        if run.end is None:
            attributes["recorder.stream.ended"] = False
        if self.shape.content and chunks.text is not None:
            attributes["recorder.stream.text"] = shortened(chunks.text, self.shape.longest)
        key = run.start.id if run.start is not None else (run.end or opened).id
        return Span(
            span_id(self.instance, self.sid, "stream", key),
            self.root,
            "stream",
            opened.ns,
            max(opened.ns, end_ns(opened, closed)),
            attributes,
        )


def _name(operation: str, name: str | None) -> str:
    """``{operation} {name}`` as the conventions name spans; the operation alone
    without a name."""
    return operation if not name else f"{operation} {shortened(name, NAME_BYTES)}"


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key).lstrip("_")
