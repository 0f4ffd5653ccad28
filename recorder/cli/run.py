"""``recorder run``: the service in the foreground."""

from __future__ import annotations

import sys

import click

from recorder.cleanup.settings import check_schedules
from recorder.cli.options import UsageFailure, config_option, load
from recorder.protocol.policy import PolicyError


@click.command()
@config_option
def run(config_path: str | None) -> None:
    """Run the recorder service in the foreground until SIGTERM or Ctrl-C.

    Example: recorder run --config /etc/orchestrator-recorder/config.toml
    """
    import asyncio

    from recorder import logs
    from recorder.service import lifecycle

    config = load(config_path).config
    try:
        check_schedules(config.cleanup.policies)
    except PolicyError as exc:
        raise UsageFailure(f"{config.source}: {exc}") from None
    logs.configure(config.log.level, config.log.format)
    sys.exit(asyncio.run(lifecycle.main(config)))
