"""`make demo` as make would run it (a dry run: the demo itself takes a minute): its
ports are ones the OS says are free, never a real daemon's 8787 and 8788, and the
processes a Ctrl-C must stop once are in process groups of their own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def recipe(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    done = subprocess.run(
        ["make", "--dry-run", "--always-make", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.partition("rm -f demo.db")[2]  # the demo's own commands


def test_the_demo_takes_free_ports() -> None:
    text = recipe()
    assert "8787" not in text and "8788" not in text
    assert 'bind(("127.0.0.1", 0))' in text  # the OS chooses
    assert "${DEMO_PORT:-$1}" in text  # unless DEMO_PORT says


def test_the_demo_stops_each_process_with_one_signal() -> None:
    text = recipe()
    assert text.count("os.setpgid(0, 0)") >= 2  # daemon and recorder: not the terminal's group
    assert "trap 'stop; exit 0' INT TERM" in text and '[ -n "$stopped" ] && return 0' in text
