"""The ``recorder`` command line: the click group, one module per family of commands,
and the renderers they share."""

from recorder.cli.main import cli, main

__all__ = ["cli", "main"]
