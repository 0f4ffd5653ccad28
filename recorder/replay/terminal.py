"""Playing a replay on a terminal, as ``asciinema play`` does: paced output, marked
lines, and keys (space pauses and resumes, ``.`` steps while paused, Ctrl-C stops).

Without a terminal on stdout there are no keys and no colour; the pacing stays
unless ``--instant``.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterable, Iterator
from typing import TextIO

from recorder.replay.plan import Cue
from recorder.replay.text import Shown, show

COLOURS = {"error": "31", "gap": "33", "status": "36", "task": "35", "tool": "34"}


class Keys:
    """Space, ``.`` and Ctrl-C from a terminal in cbreak mode; no keys otherwise."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.paused = False

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass (longer while paused); return early for ``.`` when paused."""
        deadline = time.monotonic() + seconds
        while True:
            left = None if self.paused else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if self.fd is None:
                time.sleep(max(0.0, left or 0.0))
                return
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            key = os.read(self.fd, 1)
            if key == b" ":
                self.paused = not self.paused
                if not self.paused:
                    # Resume where the wait stood, not after the pause.
                    deadline = time.monotonic() + max(0.0, deadline - time.monotonic())
            elif key == b"." and self.paused:
                return


@contextlib.contextmanager
def keys_from(stdin: TextIO, enabled: bool) -> Iterator[Keys]:
    if not enabled:
        yield Keys(None)
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys arrive one by one; Ctrl-C still interrupts
        yield Keys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Player:
    """Writes shown cues to ``out``, keeping markers on lines of their own."""

    def __init__(self, out: TextIO, *, colour: bool) -> None:
        self.out = out
        self.colour = colour
        self.at_line_start = True
        self.shown = 0

    def play(self, paced: Iterable[tuple[float, Cue]], keys: Keys) -> None:
        for pause, cue in paced:
            if pause > 0:
                keys.wait(pause)
            elif keys.paused:
                keys.wait(0)
            shown = show(cue)
            if shown is not None:
                self.write(shown)
        self.finish()

    def write(self, shown: Shown) -> None:
        out = self.out
        if shown.is_marker:
            if not self.at_line_start:
                out.write("\n")
            line = f"[{shown.kind}] {shown.label}"
            code = COLOURS.get(shown.kind, "2")
            out.write(f"\x1b[{code}m{line}\x1b[0m\n" if self.colour else line + "\n")
            self.at_line_start = True
        else:
            out.write(shown.output)
            if shown.output:
                self.at_line_start = shown.output.endswith("\n")
        out.flush()
        self.shown += 1

    def finish(self) -> None:
        if not self.at_line_start:
            self.out.write("\n")
            self.at_line_start = True
        self.out.flush()


def on_a_terminal() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()
