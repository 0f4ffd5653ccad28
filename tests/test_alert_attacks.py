"""Attacks on the alert rules from what a daemon sends: a tool input or an error text
that makes a rule's regex backtrack must not hold the classifier (and so the writer,
and so recording) for more than a moment.

Real parts: the classifier's own batch work with the rules loaded from a configuration
file, in a child process given a deadline (a regex holds the GIL: no thread of this
process could end it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The classifier with one rule (as loaded from [alerts]), fed one frame from the daemon
# (on stdin: it is longer than an argument may be).
CLASSIFY = """
import json, sys, time
from recorder.alerts.rules import Rules
from recorder.config import load_config
from recorder.pipeline.classifier import Classifier
from recorder.protocol.frames import IN

config = load_config(sys.argv[1], env={})
classifier = Classifier(Rules.from_config(config.alerts))
frame = json.dumps(json.loads(sys.stdin.read())).encode()
start = time.perf_counter()
rows, index = classifier.rows_and_index([(1, 1, IN, 1_790_000_000_000_000, 0, True, frame)])
print(len(index.alerts), round(time.perf_counter() - start, 3))
"""
# Seconds the classifier may spend on one frame (it does tens of thousands a second).
DEADLINE = 3.0
SPACES = " " * 200_000


def _config(tmp_path: Path, when: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\n'
        '[alerts.targets]\nops = "json://127.0.0.1:9/hook"\n'
        f'[[alerts.rules]]\nname = "rule"\nwhen = {when}\nnotify = ["ops"]\n'
    )
    return path


@pytest.mark.parametrize(
    ("when", "frame"),
    [
        (
            '{ tool = "*", input_matches = "\\\\s+-rf" }',
            '{"type": "tool_call_start", "data": {"sessionId": "s1", "toolName": "bash",'
            f' "toolInput": {{"cmd": "{SPACES}"}}}}}}',
        ),
        (
            '{ error_reply = { matches = ".*refused" } }',
            f'{{"type": "error", "sessionId": "s1", "error": "{"x" * 200_000}"}}',
        ),
    ],
    ids=["tool-input", "error-reply"],
)
def test_a_backtracking_regex_does_not_hold_the_classifier(
    tmp_path: Path, when: str, frame: str
) -> None:
    config = _config(tmp_path, when)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLASSIFY, str(config)],
            input=frame,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"one frame held the classifier for more than {DEADLINE:g} s")
    assert done.returncode == 0, done.stderr
