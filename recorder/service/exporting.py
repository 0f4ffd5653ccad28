"""The service's OpenTelemetry live export: each session, once it is due (its final
status, or its idleness, ``[otel] export_after`` ago), sent as a trace to the
``[otel] endpoint``.

One round at a time, every few seconds: the due sessions are read from the cursor
(:meth:`~recorder.db.export_reads.ExportReads.due_exports`) and their traces built in
a thread, through the read library (never the writer, never the event loop); the
traces are posted in the export's own thread, bounded by a timeout; then the cursor
records them through the writer (:class:`~recorder.pipeline.export_ops.MarkExported`).
A round that fails is tried again after a backoff that doubles up to a cap, with
jitter; the cursor is in the database, so a restart resumes from it. A crash between
a send and its mark sends those sessions again: their ids are derived from the
recording, the same each time, and the backend can deduplicate (at least once).

Recording never waits for the export: a round holds a read connection and one thread,
and at most :data:`BATCH` sessions; the writer sees one small operation per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import structlog

from recorder.alerts.delivery import Reads, ThreadReads, in_daemon_thread, retry_delay
from recorder.db.export_reads import due_at
from recorder.db.otel_exports import Exported
from recorder.otel.build import Shape
from recorder.otel.settings import OtelConfig, shown_endpoint
from recorder.otel.trace import read_trace, shape_of
from recorder.pipeline.export_ops import MarkExported, StartExports
from recorder.times import now_us

if TYPE_CHECKING:
    from recorder.config import Config
    from recorder.db.recordings import Recordings
    from recorder.db.rows import Session
    from recorder.otel.send import Endpoint
    from recorder.otel.spans import SessionTrace
    from recorder.pipeline.writer import Writer

log = structlog.get_logger("recorder.otel")

# Sessions per round: a round's reads, spans and request stay small, whatever the
# backlog (a full round is followed by the next at once).
BATCH = 20
# Seconds between two looks at the due sessions: half of export_after, within these.
LOOK_AT_MOST = 5.0
LOOK_AT_LEAST = 0.1
# Backoff after failed rounds (seconds): doubling from BASE up to CAP, half of it jitter.
BASE = 1.0
CAP = 300.0
# One send's timeout (its retries included) unless OTEL_EXPORTER_OTLP_TRACES_TIMEOUT
# or OTEL_EXPORTER_OTLP_TIMEOUT say otherwise, as for any OTLP exporter.
SEND_TIMEOUT = 10.0
# Past the send's own timeout, how long the round waits for its thread.
GRACE = 5.0


class RoundFailed(Exception):
    """A round that sent nothing: one line, without headers or credentials."""


def endpoint_key(traces_url: str) -> str:
    """The cursor's name for an endpoint: a hash of its traces URL (never the headers,
    and not the URL itself, whose query may hold a token)."""
    return hashlib.sha256(traces_url.encode()).hexdigest()[:32]


def send_timeout(env: Mapping[str, str] = os.environ) -> float:
    """Seconds a send may take, by the standard OTLP variables, else SEND_TIMEOUT."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        with contextlib.suppress(ValueError):
            if env.get(name):
                return max(0.1, float(env[name]))
    return SEND_TIMEOUT


class Exporting:
    """Started with the service when ``[otel] endpoint`` is set; stopped with it.
    ``rounds``, ``exported`` and ``failures`` (in a row) say what it did."""

    def __init__(
        self,
        config: Config,
        writer: Writer,
        reads: Reads | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.writer = writer
        self.instance = config.storage.instance
        self._reads = reads or ThreadReads(config.storage.url)
        self._rng = rng or random.Random()
        # The send in flight, in a daemon thread of its own (a send still waiting for
        # an answer at the stop must not hold the process's exit): at most one, a send
        # that outlived its timeout included (a round meanwhile fails, and waits).
        self._task: asyncio.Task[None] | None = None
        self._sending: asyncio.Future[int] | None = None
        self._known = False  # the cursor has the endpoint's row
        self._wake = asyncio.Event()
        self._rounded = asyncio.Condition()
        self.rounds = self.exported = self.failures = 0
        self.settings(config.otel)

    def settings(self, otel: OtelConfig) -> None:
        """Where and what to export (at start, and on SIGHUP)."""
        from recorder.otel.send import Endpoint  # OpenTelemetry: only when exporting

        self.timeout = send_timeout()
        self.endpoint: Endpoint = Endpoint(otel.endpoint, otel.headers, self.timeout)
        self.key = endpoint_key(otel.traces_url)
        self.shown = shown_endpoint(otel.traces_url)
        self.after_us = int(otel.export_after_s * 1e6)
        self.shape = shape_of(otel)
        self.every = min(LOOK_AT_MOST, max(LOOK_AT_LEAST, otel.export_after_s / 2))

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="otel export")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reload(self, otel: OtelConfig) -> None:
        """SIGHUP: the endpoint, headers, delay and content as the file says now. A new
        endpoint starts its own cursor; the round under way finishes as it began."""
        key = self.key
        self.settings(otel)
        self._known = self._known and self.key == key
        self.failures = 0
        self._wake.set()

    async def run(self) -> None:
        """Export until cancelled."""
        log.info("exporting sessions as traces", endpoint=self.shown, after_us=self.after_us)
        while True:
            self._wake.clear()
            wait = self.every
            try:
                if await self._round():
                    wait = 0.0
                if self.failures:
                    log.info("trace export resumed", endpoint=self.shown)
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                wait = retry_delay(self.failures, BASE, CAP, self._rng.random())
                log.warning(
                    "sessions not exported; trying again later",
                    endpoint=self.shown,
                    error=_one_line(exc),
                    attempt=self.failures,
                    retry_in_s=round(wait, 1),
                )
            async with self._rounded:
                self.rounds += 1
                self._rounded.notify_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def rounds_after(self, rounds: int) -> int:
        """Once ``rounds`` rounds have ended (``rounds`` from now: ``self.rounds + n``);
        how many have."""
        async with self._rounded:
            await self._rounded.wait_for(lambda: self.rounds >= rounds)
            return self.rounds

    async def _round(self) -> bool:
        """Export the sessions due now, up to BATCH; whether more may be due."""
        if not self._known:  # the cursor knows the endpoint from now on, or from before
            await self.writer.perform(StartExports(self.key, now_us()))
            self._known = True
        if self._sending is not None and not self._sending.done():
            raise RoundFailed(f"{self.shown}: the last send is still waiting for an answer")
        # As they are now: a reload during the round changes the next one.
        now, key, shape = now_us(), self.key, self.shape
        after, endpoint = self.after_us, self.endpoint

        def read(r: Recordings) -> list[tuple[Session, SessionTrace | None]]:
            due = r.due_exports(key, now, after, BATCH, self.instance)
            return [(s, _built(r, s, shape)) for s in due]

        built = await self._reads(read)
        if not built:
            return False
        traces = [t for _, t in built if t is not None]
        if not traces:
            raise RoundFailed(f"no trace could be read of {len(built)} sessions due")
        from recorder.otel.send import ExportFailed  # the SDK: only when exporting

        refused: set[str] = set()
        try:
            await self._send(endpoint, traces)
        except ExportFailed as exc:
            if not exc.permanent:
                raise
            # Refused for good (a 400: OTLP says not to send it again): one by one, so
            # that one session the endpoint will never take holds back no other.
            refused = await self._each(endpoint, traces)
            log.warning(
                "sessions refused by the trace endpoint; not sent again",
                endpoint=self.shown,
                sessions=len(refused),
                error=str(exc),
            )
        marks = tuple(_mark(s, None if s.id in refused else t) for s, t in built)
        await self.writer.perform(MarkExported(key, marks, now_us()))
        self.exported += len(traces) - len(refused)  # refused for good: not exported
        return len(built) == BATCH

    async def _send(self, endpoint: Endpoint, traces: list[SessionTrace]) -> None:
        """Post ``traces`` in a thread of their own, waiting for it the send's timeout."""
        self._sending = sending = in_daemon_thread(partial(endpoint.send, traces))
        try:
            async with asyncio.timeout(self.timeout + GRACE):
                await asyncio.shield(sending)
        except TimeoutError:
            raise RoundFailed(f"{self.shown} gave no answer within {self.timeout:g} s") from None

    async def _each(self, endpoint: Endpoint, traces: list[SessionTrace]) -> set[str]:
        """Each trace in a request of its own; the sessions refused for good. A
        failure that is not a refusal ends the round (all is tried again later)."""
        from recorder.otel.send import ExportFailed

        refused = set()
        for trace in traces:
            try:
                await self._send(endpoint, [trace])
            except ExportFailed as exc:
                if not exc.permanent:
                    raise
                refused.add(trace.session_id)
        return refused


def _built(recordings: Recordings, session: Session, shape: Shape) -> SessionTrace | None:
    """The session's trace; None (said) if it cannot be read: one session that
    cannot be read must not hold back those after it. The round fails if none can."""
    try:
        return read_trace(recordings, session, shape)
    except Exception as exc:
        log.error(
            "session not exported: its trace cannot be read",
            session=session.id,
            error=_one_line(exc),
        )
        return None


def _mark(session: Session, trace: SessionTrace | None) -> Exported:
    """The cursor's row for a session done with: its trace's spans and id, or none
    (a trace that could not be read, or that the endpoint refused for good)."""
    if trace is None:
        return Exported(session.id, due_at(session), 0, "")
    return Exported(session.id, due_at(session), len(trace.spans), trace.trace_id.hex())


def _one_line(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


def exporting(config: Config, writer: Writer) -> Exporting | None:
    """The service's live export, started; None without ``[otel] endpoint``."""
    if not config.otel.endpoint:
        return None
    started = Exporting(config, writer)
    started.start()
    return started


async def reexport(current: Exporting | None, config: Config, writer: Writer) -> Exporting | None:
    """SIGHUP: the live export as the file says now (started, reloaded or stopped)."""
    if current is not None and not config.otel.endpoint:
        await current.stop()
        return None
    if current is not None:
        await current.reload(config.otel)
        return current
    return exporting(config, writer)
