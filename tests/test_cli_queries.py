"""The query commands over a real SQLite file filled through the real writer: the
frames' JSONL contract, filters, tables, sessions, status, and numbers they refuse."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from tests.conversations import S1, S2, fill
from tests.conversations import TWO_SESSIONS as FRAMES
from tests.helpers import invoke


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database filled once per module through the real writer; tests only read it."""
    db_path = tmp_path_factory.mktemp("filled") / "recorder.db"
    fill(db_path, FRAMES)
    return db_path


def jsonl(db: Path, *args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(cli, ["frames", "--database", str(db), "--format", "jsonl", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_jsonl_contract(filled_db: Path) -> None:
    lines = jsonl(filled_db, "--limit", "0")
    assert len(lines) == len(FRAMES)
    keys = [
        "id",
        "connection_id",
        "seq",
        "direction",
        "received_at",
        "type",
        "session_id",
        "task_id",
        "opcode",
        "size",
    ]
    for line, (direction, data, is_text) in zip(lines, FRAMES, strict=True):
        assert list(line)[:10] == keys
        assert line["direction"] == direction and line["size"] == len(data)
        assert line["opcode"] == ("text" if is_text else "binary")
        if "payload" in line:
            assert str(line["payload"]).encode() == data
        else:
            assert base64.b64decode(str(line["payload_b64"])) == data
    assert lines[0]["received_at"] == "2026-11-26T11:29:57.000000Z"
    assert "payload_b64" in lines[7] and "payload_b64" in lines[8]  # binary; invalid UTF-8 text
    assert lines[1]["task_id"] == "Analyze" and lines[1]["session_id"] == S1


@pytest.mark.parametrize(
    ("args", "expected_seqs"),
    [
        (["--session", S1], [2, 3, 4, 5, 6]),
        (["--task", "Analyze"], [2, 4, 6]),
        (["--type", "session_status_update"], [3, 7]),
        (["--direction", "out"], [2]),
        (["--since", "2026-11-26T11:33:57Z"], [5, 6, 7, 8, 9]),
        (["--until", "2026-11-26T11:31:00Z"], [1, 2]),
        (["--session", S1, "--limit", "2"], [2, 3]),
        (["--connection", "1", "--limit", "1"], [1]),
        (["--session", "nope"], []),
    ],
)
def test_frame_filters(filled_db: Path, args: list[str], expected_seqs: list[int]) -> None:
    assert [line["seq"] for line in jsonl(filled_db, *args)] == expected_seqs


def test_frames_table(filled_db: Path) -> None:
    code, out = invoke("frames", "--database", str(filled_db))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "TIME", "CONN", "DIR"]
    assert len(lines) == len(FRAMES) + 1  # newlines inside frames are escaped
    assert "stream_chunk" in lines[5] and S1 in lines[5]
    assert "<9 bytes binary>" in lines[8] and "<2 bytes invalid UTF-8>" in lines[9]
    assert "->" in lines[2] and "<-" in lines[1]


def test_sessions_list_and_filters(filled_db: Path) -> None:
    code, out = invoke("sessions", "--database", str(filled_db), "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [S2, S1]  # newest first
    s1 = rows[1]
    assert (
        s1["status"] == "running"
        and s1["frame_count"] == 5
        and s1["task_description"] == "Implement feature X"
    )
    code, out = invoke("sessions", "--database", str(filled_db), "--status", "failed")
    assert code == 0 and S2 in out and S1 not in out
    code, out = invoke(
        "sessions", "--database", str(filled_db), "--since", "2026-11-26T11:35:00Z", "--json"
    )
    assert [json.loads(line)["id"] for line in out.splitlines()] == [S2]


def test_status(filled_db: Path) -> None:
    code, out = invoke("status", "--database", str(filled_db), "--json")
    assert code == 0
    info = json.loads(out)
    # The fixture never closed its connection row, but no recorder runs: not connected.
    assert info["connected"] is False and info["running"] is False
    assert info["frames"] == len(FRAMES) and info["sessions"] == 2 and info["active_sessions"] == 1
    assert info["last_frame_at"] == "2026-11-26T11:37:57.000000Z"
    assert info["database_bytes"] > 0
    code, out = invoke("status", "--database", str(filled_db))
    assert "left open by a recorder that stopped" in out and "frames      9" in out
    assert out.startswith("recorder    not running, and has never run on this database")


def test_bad_input_is_one_line(tmp_path: Path, filled_db: Path) -> None:
    code, out = invoke("frames", "--database", str(tmp_path / "missing.db"))
    assert code == 1 and out.startswith("Error: no database at") and out.count("\n") == 1
    code, out = invoke("frames", "--database", str(filled_db), "--since", "last tuesday")
    assert code == 2 and "not a time: 'last tuesday'" in out
    empty = tmp_path / "empty.db"
    empty.touch()
    code, out = invoke("sessions", "--database", str(empty))
    assert code == 1 and "has no recorder tables; run `recorder db upgrade`" in out
    code, out = invoke("frames", "--database", str(filled_db), "--direction", "sideways")
    assert code == 2


@pytest.mark.parametrize("command", [["status"], ["sessions"], ["show", S1], ["stats"]])
def test_query_commands_load_nothing_of_the_service(filled_db: Path, command: list[str]) -> None:
    """A query answers at once: it must not import websockets, SQLAlchemy or the
    service (the recorder.service package once pulled them all in for `status`)."""
    probe = (
        "import sys\n"
        "from recorder.cli import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('websockets', 'sqlalchemy', 'apscheduler', 'asyncpg', 'recorder.capture',\n"
        "         'recorder.pipeline', 'recorder.service.lifecycle')\n"
        "print(' '.join(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command, "--database", str(filled_db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@pytest.mark.parametrize(
    "args",
    [
        ["frames", "--since", "99999999999d"],
        ["frames", "--until", "99999999999d"],
        ["frames", "--since", "9" * 400 + "d"],
        ["sessions", "--since", "99999999999d"],
        ["tail", "--since", "99999999999d"],
        ["frames", "--connection", "99999999999999999999999"],
        ["frames", "--connection", "-99999999999999999999999"],
        ["frames", "--limit", "99999999999999999999999"],
        ["frames", "--last", "99999999999999999999999"],
        ["tail", "--last", "99999999999999999999999"],
        ["sessions", "--limit", "99999999999999999999999"],
        ["tasks", "--limit", "99999999999999999999999"],
        ["connections", "--limit", "99999999999999999999999"],
        ["cleanup", "history", "--limit", "99999999999999999999999"],
    ],
)
def test_numbers_beyond_64_bits_are_usage_errors(filled_db: Path, args: list[str]) -> None:
    code, out = invoke(*args, "--database", str(filled_db))
    option = next(a for a in args if a.startswith("--"))
    assert code == 2 and out.count("\n") == 1, out
    assert out.startswith(f"Error: Invalid value for '{option}': ")
    assert str(filled_db) not in out  # the option is wrong, not the database


def test_the_largest_64_bit_numbers_are_taken(filled_db: Path) -> None:
    top = str(2**63 - 1)
    assert len(jsonl(filled_db, "--limit", top)) == len(FRAMES)
    assert len(jsonl(filled_db, "--last", top)) == len(FRAMES)
    assert jsonl(filled_db, "--connection", top) == []
    assert len(jsonl(filled_db, "--since", "100000w")) == len(FRAMES)


def test_an_argument_that_is_not_utf8_is_one_line(filled_db: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recorder", "show", b"\xff", "--database", str(filled_db)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == b"Error: an argument is not valid UTF-8: b'\\xff'\n"
