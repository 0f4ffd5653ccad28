"""The ``recorder`` command group: each command is a thin shell around one library call."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from recorder import __version__
from recorder.cli.db import db
from recorder.cli.postmortem import connections, show, stats, tasks
from recorder.cli.query import frames, sessions, status, tail
from recorder.cli.run import run
from recorder.cli.simulate import simulate


class Recorder(click.Group):
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
    `recorder show SESSION` tells what happened in one, `recorder frames` and
    `recorder tail` print the frames themselves.
    """


for command in (
    run,
    db,
    status,
    sessions,
    show,
    tasks,
    connections,
    frames,
    tail,
    stats,
    simulate,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="recorder")
