"""``recorder report``: a window of time summed up (:mod:`recorder.report`)."""

from __future__ import annotations

import click

from recorder.cli.options import load, parse_moment, reading, target_options
from recorder.report.render import FORMATS
from recorder.times import now_us


@click.command()
@target_options
@click.option(
    "--since",
    callback=parse_moment,
    default="1d",
    show_default=True,
    help="From this time: ISO-8601, or 30s, 15m, 2h, 7d ago.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text for people, markdown for a notification, json, or a standalone html page.",
)
def report(config_path: str | None, database: str | None, since: int, fmt: str) -> None:
    """Sessions by status and orchestrator, failed sessions with their first error,
    tool calls with their p50/p95 durations, the slowest sessions, tokens, link
    uptime and gaps, cleanup runs and database growth, over a window up to now.

    Example: recorder report --since 7d --format markdown
    """
    from recorder.report import build_report, render

    target = load(config_path, database)
    now = now_us()
    if since > now:
        raise click.BadParameter("is later than now", param_hint="'--since'")
    with reading(target) as recordings:
        built = build_report(recordings, since, now)
    click.echo(render(built, fmt), nl=False)
