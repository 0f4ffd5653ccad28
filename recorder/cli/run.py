"""``recorder run``: the service in the foreground."""

from __future__ import annotations

import sys

import click

from recorder.cli.options import UsageFailure, config_option, load
from recorder.config import Config


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
    check_schedules(config)
    logs.configure(config.log.level, config.log.format)
    sys.exit(asyncio.run(lifecycle.main(config)))


def check_schedules(config: Config) -> None:
    """A cron expression APScheduler rejects is a configuration error (exit 2), before
    anything starts; checked here because the query commands never load APScheduler."""
    if not config.cleanup.policies:
        return
    from recorder.cleanup.policy import PolicyError
    from recorder.cleanup.settings import trigger

    for policy in config.cleanup.policies:
        try:
            trigger(policy)
        except PolicyError as exc:
            raise UsageFailure(f"{config.source}: {exc}") from None
