"""The ``recorder`` command group: each command is a thin shell around one library call."""

from __future__ import annotations

import click

from recorder import __version__
from recorder.cli.db import db
from recorder.cli.query import frames, sessions, status
from recorder.cli.run import run
from recorder.cli.simulate import simulate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recorder")
def cli() -> None:
    """Record every frame an orchestrator daemon sends and receives.

    Start with `recorder run`; query with `recorder sessions` and `recorder frames`.
    """


for command in (run, db, sessions, frames, status, simulate):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="recorder")
