"""``recorder export --format otlp``: recorded sessions as OpenTelemetry traces, sent
to an OTLP/HTTP endpoint or written as OTLP JSON lines (the backfill of issue 22).

Light at import: the OpenTelemetry libraries load only when a trace is exported."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from recorder.cli.options import Target, UsageFailure, nothing, parse_moment, reading

if TYPE_CHECKING:
    from recorder.db.recordings import Recordings
    from recorder.otel.build import Shape
    from recorder.otel.settings import OtelConfig
    from recorder.otel.spans import SessionTrace

F = TypeVar("F", bound=Callable[..., Any])


def otlp_options(fn: F) -> F:
    """The options only --format otlp takes."""
    decorators = (
        click.option(
            "--content/--no-content",
            default=None,
            help="Tool arguments and results, task descriptions and stream text in the "
            "spans (default: [otel] content).",
        ),
        click.option(
            "--endpoint",
            metavar="URL",
            help="OTLP/HTTP endpoint (default: [otel] endpoint, OTEL_EXPORTER_OTLP_ENDPOINT).",
        ),
        click.option(
            "--session",
            "session_id",
            metavar="SESSION",
            help="This session only (its id, or the start of it).",
        ),
        click.option(
            "--since",
            callback=parse_moment,
            help="Sessions seen from this time: ISO-8601, or 30s, 15m, 2h, 7d ago.",
        ),
    )
    for decorate in decorators:
        fn = decorate(fn)
    return fn


def export_otlp(
    target: Target,
    session: str | None,
    output: str | None,
    *,
    content: bool | None,
    endpoint: str | None,
    session_id: str | None,
    since: int | None,
) -> None:
    """The sessions asked for, as traces, to the endpoint or the file."""
    wanted = _wanted(session, session_id, since)
    settings = target.config.otel
    url = _endpoint(endpoint, output, settings)
    from recorder.otel.trace import shape_of

    with reading(target) as recordings:
        traces = Traces(recordings, wanted, since, shape_of(settings, content))
        if output is not None:
            spans, where = _write(traces, output, target.url), output
        else:
            assert url is not None
            spans, where = _send(traces, url, settings.headers)
    if not traces.count:
        nothing("sessions")
        return
    sessions = f"{traces.count} session{'s' if traces.count != 1 else ''}"
    click.echo(f"exported {sessions} ({spans} spans) to {where}", err=True)


def _wanted(session: str | None, session_id: str | None, since: int | None) -> str | None:
    """The one session asked for, as SESSION or --session; None: all (since --since)."""
    if session is not None and session_id is not None and session != session_id:
        raise UsageFailure("give the session once: SESSION or --session")
    wanted = session if session is not None else session_id
    if wanted is not None and not wanted.strip():
        raise UsageFailure(f"--session: expected a session id or the start of one, got {wanted!r}")
    if wanted is not None and since is not None:
        raise UsageFailure("--session and --since: give one")
    return wanted


def _endpoint(given: str | None, output: str | None, settings: OtelConfig) -> str | None:
    """The endpoint to send to (--endpoint, else [otel] endpoint), checked; None with
    --output."""
    if given is not None and output is not None:
        raise UsageFailure("--endpoint and --output: give one")
    if output is not None:
        return None
    if given is None and not settings.endpoint:
        raise UsageFailure(
            "--format otlp: give --endpoint URL or --output FILE (or set [otel] endpoint)"
        )
    url = (given if given is not None else settings.endpoint).strip()
    from recorder.config import ConfigError
    from recorder.config.otel import check_endpoint

    try:
        check_endpoint("--endpoint", url)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    return url


def _write(traces: Traces, output: str, database: str) -> int:
    """The traces as OTLP JSON lines in ``output`` ("-": stdout); the spans written."""
    from recorder.cli.replay import output_file
    from recorder.otel.send import write_lines

    with output_file(output, database) as stream:
        return write_lines(traces, stream)


def _send(traces: Traces, url: str, headers: Mapping[str, str]) -> tuple[int, str]:
    """The traces posted to ``url``; the spans sent, and the URL as it may be shown."""
    from recorder.otel.send import Endpoint, ExportFailed
    from recorder.otel.settings import shown_endpoint, traces_url

    try:
        spans = Endpoint(url, headers).send(traces)
    except ExportFailed as exc:
        raise click.ClickException(str(exc)) from None
    return spans, shown_endpoint(traces_url(url))


class Traces:
    """The sessions' traces, read one at a time as the sink takes them, counted."""

    def __init__(
        self, recordings: Recordings, session: str | None, since: int | None, shape: Shape
    ) -> None:
        self.recordings, self.session, self.since, self.shape = recordings, session, since, shape
        self.count = 0

    def __iter__(self) -> Iterator[SessionTrace]:
        from recorder.otel.trace import read_trace

        for row in self._sessions():
            self.count += 1
            yield read_trace(self.recordings, row, self.shape)

    def _sessions(self) -> Iterator[Any]:
        from recorder.db.otel_reads import SESSIONS_PAGE

        if self.session is not None:
            yield self.recordings.session(self.session)
            return
        after: str | None = None
        while True:
            page = self.recordings.sessions_since(self.since, after)
            yield from page
            if len(page) < SESSIONS_PAGE:
                return
            after = page[-1].id
