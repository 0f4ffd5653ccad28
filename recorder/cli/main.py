"""The ``recorder`` command group: each command is a thin shell around one library call.

Commands are imported when they are used: a query must not pay for the service's
or the simulator's imports (asyncio, structlog, websockets) before it answers.
"""

from __future__ import annotations

import errno
import importlib
import io
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
    "report": "recorder.cli.report:report",
    "alerts": "recorder.cli.alerts:alerts",
    "replay": "recorder.cli.replay:replay",
    "export": "recorder.cli.replay:export",
    "cleanup": "recorder.cli.cleanup:cleanup",
    "pin": "recorder.cli.cleanup:pin",
    "unpin": "recorder.cli.cleanup:unpin",
    "db": "recorder.cli.db:db",
    "web": "recorder.cli.web:web",
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

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            # What is still buffered must fail here, where it can be reported.
            sys.stdout.flush()
            return result
        except click.UsageError as exc:
            raise one_line(exc) from None
        except BrokenPipeError:
            # `recorder frames | head` is normal use: stop quietly, exit 0 (click
            # would exit 1).
            discard_stdout()
            ctx.exit(0)


def one_line(exc: click.UsageError) -> click.UsageError:
    """A usage error as its message alone: click's usage line and help hint around it
    push the one line that matters out of sight (and out of a log's single line)."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # `recorder db` alone prints the help, as asked
    return click.UsageError(exc.format_message())


class OutputError(OSError):
    """Writing to stdout failed (a full disk, a closed stdout): told apart from an
    OSError the command itself met, which must not be blamed on the output."""


class Output(io.BufferedWriter):
    """stdout's buffer, raising :class:`OutputError` for what it cannot write."""

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from None

    def flush(self) -> None:
        try:
            super().flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc.errno, exc.strerror) from None


def guard_stdout() -> None:
    """Make stdout an :class:`Output`, and hold file descriptor 1 if it was closed."""
    old = sys.stdout
    if old is not None:
        try:
            if old.fileno() != 1:
                return
        except (AttributeError, OSError, ValueError):
            return  # replaced by a caller (a test's capture): theirs to handle
    else:
        # Started with stdout closed: the next file opened (the database!) would get
        # descriptor 1. Hold it with a file that fails every write (EBADF), so the
        # command says it cannot write instead of writing into that file.
        held = os.open(os.devnull, os.O_RDONLY)
        if held != 1:
            os.dup2(held, 1)
            os.close(held)
    raw = io.FileIO(1, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        Output(raw),
        encoding=old.encoding if old else "utf-8",
        errors=old.errors if old else "strict",
        line_buffering=bool(old.line_buffering) if old else False,
    )


def discard_stdout() -> None:
    """Send stdout nowhere: Python flushes it once more at exit, which must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


@click.group(cls=Recorder, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recorder")
def cli() -> None:
    """Record every frame an orchestrator daemon sends and receives.

    Start with `recorder run`. Then `recorder sessions` lists what was recorded,
    `recorder show SESSION` tells what happened in one, `recorder replay SESSION`
    plays it back, `recorder frames` and `recorder tail` print the frames themselves.
    """


def main() -> None:
    for arg in sys.argv[1:]:
        try:
            arg.encode()
        except UnicodeEncodeError:
            # Session ids, task texts and URLs go to the database and the daemon as
            # UTF-8: a byte that is not would fail far from here, with a traceback.
            from recorder.addresses import redact_url

            raw = repr(arg.encode(errors="surrogateescape"))
            click.echo(f"Error: an argument is not valid UTF-8: {redact_url(raw)}", err=True)
            sys.exit(2)
    guard_stdout()
    try:
        cli(prog_name="recorder")
    except OutputError as exc:
        # Here, not in a command: `--help` and `--version` write before any command runs.
        discard_stdout()
        reason = "stdout is closed" if exc.errno == errno.EBADF else exc.strerror
        click.echo(f"Error: cannot write output: {reason}", err=True)
        sys.exit(1)
