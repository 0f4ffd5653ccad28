"""The ``recorder`` command group: each command is a thin shell around one library call.

Commands are imported when they are used: a query must not pay for the service's
or the simulator's imports (asyncio, structlog, websockets) before it answers.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from recorder import __version__

# name -> "module:attribute", in the order `--help` lists them.
COMMANDS = {
    "run": "recorder.cli.run:run",
    "status": "recorder.cli.query:status",
    "sessions": "recorder.cli.query:sessions",
    "show": "recorder.cli.postmortem:show",
    "tasks": "recorder.cli.postmortem:tasks",
    "connections": "recorder.cli.postmortem:connections",
    "frames": "recorder.cli.query:frames",
    "tail": "recorder.cli.query:tail",
    "stats": "recorder.cli.postmortem:stats",
    "replay": "recorder.cli.replay:replay",
    "export": "recorder.cli.replay:export",
    "cleanup": "recorder.cli.cleanup:cleanup",
    "pin": "recorder.cli.cleanup:pin",
    "unpin": "recorder.cli.cleanup:unpin",
    "db": "recorder.cli.db:db",
    "simulate": "recorder.cli.simulate:simulate",
}


class Recorder(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, _, name = where.partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `recorder frames | head` is normal use: stop quietly, exit 0 (click
            # would exit 1). Python flushes stdout once more at exit; send that nowhere.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


@click.group(cls=Recorder, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recorder")
def cli() -> None:
    """Record every frame an orchestrator daemon sends and receives.

    Start with `recorder run`. Then `recorder sessions` lists what was recorded,
    `recorder show SESSION` tells what happened in one, `recorder replay SESSION`
    plays it back, `recorder frames` and `recorder tail` print the frames themselves.
    """


def main() -> None:
    cli(prog_name="recorder")
