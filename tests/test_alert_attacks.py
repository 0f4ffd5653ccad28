"""Attacks on the alert rules from what a daemon sends: a tool input or an error text
that makes a rule's regex backtrack must not hold the classifier (and so the writer,
and so recording) for more than a moment.

Real parts: the classifier's own batch work with the rules loaded from a configuration
file, in a child process given a deadline (a regex holds the GIL: no thread of this
process could end it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from recorder.alerts.delivery import ThreadReads
from recorder.config import load_config
from recorder.pipeline.alert_ops import RaiseAlerts
from recorder.pipeline.ops import Operation
from recorder.pipeline.writer_metrics import WriterMetrics
from recorder.service.alerting import Alerting
from recorder.service.snapshot import LinkState, Snapshot
from recorder.times import now_us
from tests.alert_hooks import Recorded
from tests.conftest import TIMEOUT
from tests.helpers import writer_database

T = TypeVar("T")

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


class FullDiskWriter(Recorded):
    """The writer's own code, refusing the first alerts it is given as a full disk
    would (and the parts of a writer the alerting reads)."""

    queue = SimpleNamespace(full=False)
    died = None
    on_alerts = None

    def __init__(self, db: Any, store: Any) -> None:
        super().__init__(db, store)
        self.refusals = 1
        self.stored = asyncio.Event()

    async def perform(self, operation: Operation[T]) -> T:
        if isinstance(operation, RaiseAlerts) and self.refusals:
            self.refusals -= 1
            raise OSError(28, "No space left on device")
        answer = await super().perform(operation)
        if isinstance(operation, RaiseAlerts):
            self.stored.set()
        return answer


async def test_a_condition_alert_the_writer_could_not_store_is_stored_later(
    tmp_path: Path,
) -> None:
    """The conditions count an alert as raised when they raise it: one the writer could
    not store then (a full disk) is kept and stored at a later look, not lost."""
    db = tmp_path / "r.db"
    config = load_config(_config(tmp_path, '{ link_down_for = "0.4s" }'), env={})
    down = LinkState("waiting", "ws://daemon", since_us=now_us() - 60_000_000)
    shot = Snapshot(down, None, 0, 0, 0, 0, WriterMetrics(), None)
    wdb, store, _ = await writer_database(f"sqlite+aiosqlite:///{db}")
    writer = FullDiskWriter(wdb, store)
    alerting = Alerting(config, writer, lambda: shot)  # type: ignore[arg-type]
    alerting.start()
    try:
        await asyncio.wait_for(writer.stored.wait(), TIMEOUT)
    finally:
        await alerting.stop()
        await wdb.shutdown()
    assert writer.refusals == 0
    found = await ThreadReads(f"sqlite:///{db}")(lambda r: r.alerts())
    assert [(a.alert.rule, a.alert.subject) for a in found] == [("rule", "link down")]
