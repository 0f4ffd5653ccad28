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
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from recorder.replay.plan import Cue
from recorder.replay.text import Shown, show
from recorder.replay.timing import on_time

COLOURS = {"asked": "32", "error": "31", "gap": "33", "status": "36", "task": "35", "tool": "34"}


class Keys:
    """Space, ``.`` and Ctrl-C from a terminal in cbreak mode; no keys otherwise."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.paused = False

    def wait(self, seconds: float) -> bool:
        """Let ``seconds`` pass (longer while paused); return early for ``.`` when
        paused. True when a key held it longer or let it go early."""
        deadline = time.monotonic() + seconds
        left_when_paused = seconds
        held = self.paused
        while True:
            left = None if self.paused else deadline - time.monotonic()
            if left is not None and left <= 0:
                return held
            if self.fd is None:
                time.sleep(max(0.0, left or 0.0))
                return held
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            key = os.read(self.fd, 1)
            if key == b" ":
                self.paused = not self.paused
                if self.paused:
                    held = True
                    left_when_paused = max(0.0, deadline - time.monotonic())
                else:
                    # Resume where the wait stood when paused, not after the pause.
                    deadline = time.monotonic() + left_when_paused
            elif key == b"." and self.paused:
                return True


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

    def __init__(
        self, out: TextIO, *, colour: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = out
        self.colour = colour
        self.clock = clock
        self.at_line_start = True

    def play(self, paced: Iterable[tuple[float, Cue]], keys: Keys) -> None:
        """Each cue when it is due; the last line ended however the replay stops."""
        try:
            for cue in on_time(paced, self.clock, keys.wait):
                shown = show(cue)
                if shown is not None:
                    self.write(shown)
        finally:
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

    def finish(self) -> None:
        if not self.at_line_start:
            self.out.write("\n")
            self.at_line_start = True
        self.out.flush()


def on_a_terminal() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()
