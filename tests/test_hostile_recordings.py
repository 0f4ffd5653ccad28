"""What a hostile daemon got recorded cannot break the read side (found by fuzzing
the query, show, stats, replay and export commands): no traceback, output that
parses, and nothing a terminal would obey."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.protocol.frames import IN

DEEP = "[" * 1000 + "1" + "]" * 1000  # orjson takes it (its limit is 1024); json recurses
ESC = "\\u001b"  # as JSON spells it: the frames' text holds no control character itself

HOSTILE = [
    '{"type":"session_status_update","session":{"id":"s1","status":"running",'
    '"startedAt":"9999-12-31T23:59:59-23:59","task":{"id":"t1","description":"d"}}}',
    f'{{"type":"tool_call_start","data":{{"sessionId":"s1","toolName":"deep","toolInput":{DEEP}}}}}',
    '{"type":"tool_call_start","data":{"sessionId":"s1","toolName":[],"toolInput":NaN}}',
    '{"type":"tool_call_result","data":{"sessionId":"s1","toolName":{},"result":{"error":1e400}}}',
    '{"type":"stream_chunk","data":{"sessionId":"s1","chunk":"lone \\ud800 surrogate"}}',
    f'{{"type":"stream_chunk","data":{{"sessionId":"s1","chunk":"{ESC}]52;c;cHduZWQ=\\u0007{ESC}[2J"}}}}',
    f'{{"type":"x{ESC}[2J","sessionId":"s1"}}',
    '{"type":"session_status_update","session":{"id":"s1","status":"\\ud800",'
    '"endedAt":"0001-01-01T00:00:00+23:59"}}',
    f'{{"type":"error","sessionId":"s1","error":"\\ud800 {ESC}[31m"}}',
    # The last status is what `stats` shows. NaN sends it down the json module's path,
    # where a thousand levels would not parse at all: 100 here.
    '{"type":"daemon_status_update","status":{"status":"ok\\u001b[2J","cpu":NaN,"mem":1e400,'
    '"deep":' + "[" * 100 + "]" * 100 + "}}",
]


def record(path: Path, texts: list[str]) -> Path:
    """A recording of ``texts`` (frames from the daemon), by the writer's own code."""
    from recorder.db.connection import WriterDatabase
    from recorder.db.migrations import upgrade_sync
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier

    async def write() -> None:
        db = await WriterDatabase.open(f"sqlite+aiosqlite:///{path}")
        await db.run(upgrade_sync)
        store = Store(db.dialect)
        cid = await db.run(store.open_connection, "proxy", "ws://daemon/", 1_795_692_537_000_000)
        frames = [
            (cid, seq, IN, 1_795_692_537_000_000 + seq * 1000, seq * 1_000_000, True, t.encode())
            for seq, t in enumerate(texts, 1)
        ]
        await db.run(store.write_batch, *Classifier().rows_and_index(frames))
        await db.shutdown()

    asyncio.run(write())
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("hostile") / "recorder.db", HOSTILE)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """json.loads, refusing the NaN and Infinity that json.dumps writes."""
    return json.loads(text, parse_constant=_no_constant)


COMMANDS = {
    "show": (["show", "s1"], None),
    "show --json": (["show", "s1", "--json"], "json"),
    "stats": (["stats"], None),
    "stats --json": (["stats", "--json"], "json"),
    "sessions --json": (["sessions", "--json"], "json"),
    "sessions jsonl": (["sessions", "--format", "jsonl"], "jsonl"),
    "tasks jsonl": (["tasks", "--format", "jsonl"], "jsonl"),
    "tasks": (["tasks"], None),
    "frames": (["frames"], None),
    "frames jsonl": (["frames", "--format", "jsonl"], "jsonl"),
    "replay": (["replay", "s1", "--instant"], None),
    "replay jsonl": (["replay", "s1", "--instant", "--format", "jsonl"], "jsonl"),
    "export": (["export", "s1"], "asciicast"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_read_command_takes_a_hostile_recording(hostile: Path, name: str) -> None:
    args, shape = COMMANDS[name]
    # color: as on a terminal, where click leaves escape sequences in (it strips them
    # only from a pipe).
    result = CliRunner().invoke(
        cli, [*args, "--database", str(hostile)], catch_exceptions=False, color=True
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out and "Traceback" not in result.output
    # Nothing for a terminal to obey: no raw ESC, BEL or carriage return.
    assert not re.search("[\x1b\x07\r]", out)
    if shape == "json":
        strict_json(out)
    elif shape == "jsonl":
        for line in out.splitlines():
            strict_json(line)
    elif shape == "asciicast":
        header, *events = out.splitlines()
        assert strict_json(header)["version"] == 2
        times = [strict_json(line)[0] for line in events]
        assert times == sorted(times) and events


def test_what_was_tamed_is_still_shown(hostile: Path) -> None:
    """Escaped, not dropped: the chunk's escape sequence is written out, the lone
    surrogate kept as its escape, and a date past year 9999 left out."""
    replay = CliRunner().invoke(
        cli, ["replay", "s1", "--instant", "--database", str(hostile)], catch_exceptions=False
    )
    assert "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J" in replay.stdout
    assert "lone \\ud800 surrogate" in replay.stdout
    shown = strict_json(
        CliRunner()
        .invoke(cli, ["show", "s1", "--json", "--database", str(hostile)], catch_exceptions=False)
        .stdout
    )
    assert shown["session"]["started_at"] is None  # 9999-12-31T23:59:59-23:59 is year 10000


# A session id that is an escape sequence (OSC set-title, a C1 CSI, a bidi override).
CONTROLLING = "e\\u001b]0;PWN\\u0007\\u009b2J\\u202e"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["show", "e"], 1),  # two sessions match "e": the error names them
        (["pin", "e\x1b"], 0),
        (["export", "e\x1b"], 0),
    ],
)
def test_a_session_id_that_is_an_escape_sequence_is_written_out(
    tmp_path: Path, args: list[str], code: int
) -> None:
    path = record(
        tmp_path / "recorder.db",
        [
            f'{{"type":"session_status_update","session":{{"id":"{CONTROLLING}","status":"running"}}}}',
            '{"type":"session_status_update","session":{"id":"e1","status":"running"}}',
        ],
    )
    result = CliRunner().invoke(cli, [*args, "--database", str(path)], color=True)
    assert result.exit_code == code, result.output
    assert not re.search("[\x1b\x07\x9b\u202e\r]", result.output)
    assert "x1b]0;PWN" in result.output  # written out, not dropped
