"""The CLI over a real SQLite file filled through the real writer."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.migrations import head_revision
from recorder.pipeline.writer import Writer
from recorder.protocol.frames import IN, OUT, Frame

T0 = 1_795_692_537_000_000  # 2026-11-26T11:28:57Z
S1 = "session_1795692537464_eeayv91i6"
S2 = "session_1795692599999_zzzzzzzzz"

FRAMES: list[tuple[str, bytes, bool]] = [
    (IN, b'{"type":"health_check_response","healthy":true}', True),
    (
        OUT,
        json.dumps(
            {"type": "execute_task", "payload": {"sessionId": S1, "task": "Analyze"}}
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps(
            {
                "type": "session_status_update",
                "session": {
                    "id": S1,
                    "status": "running",
                    "type": "claude-code",
                    "task": {"id": "task_1", "description": "Implement feature X"},
                },
            }
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps({"type": "task_executing", "sessionId": S1, "taskId": "Analyze"}).encode(),
        True,
    ),
    (
        IN,
        json.dumps(
            {"type": "stream_chunk", "data": {"sessionId": S1, "chunk": "Here\nis"}}
        ).encode(),
        True,
    ),
    (
        IN,
        json.dumps({"type": "task_completed", "sessionId": S1, "taskId": "Analyze"}).encode(),
        True,
    ),
    (
        IN,
        json.dumps(
            {"type": "session_status_update", "session": {"id": S2, "status": "failed"}}
        ).encode(),
        True,
    ),
    (IN, b"\x00\x01\x02binary", False),
    (IN, b"\xff\xfe", True),
]


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database filled once per module through the real writer; tests only read it."""
    db_path = tmp_path_factory.mktemp("filled") / "recorder.db"

    async def fill() -> None:
        writer = Writer(f"sqlite+aiosqlite:///{db_path}")
        await writer.start()
        task = asyncio.create_task(writer.run())
        cid = await writer.open_connection("link", "ws://127.0.0.1:8787")
        for i, (direction, data, is_text) in enumerate(FRAMES, 1):
            await writer.put(Frame(cid, i, direction, T0 + i * 60_000_000, i, is_text, data))
        writer.stop()
        await task
        await writer.close()

    asyncio.run(fill())
    return db_path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def jsonl(db: Path, *args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(cli, ["frames", "--database", str(db), "--format", "jsonl", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_command_has_help_with_an_example() -> None:
    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        found = []
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                found += walk(command, [*prefix, name])
            else:
                found.append([*prefix, name])
        return found

    commands = walk(cli, [])
    assert {" ".join(c) for c in commands} >= {
        "run",
        "db upgrade",
        "db current",
        "sessions",
        "frames",
        "status",
        "simulate",
    }
    for command in commands:
        code, out = invoke(*command, "--help")
        assert code == 0 and "Usage:" in out
        assert "Example: recorder " in out, f"{' '.join(command)} --help has no example"


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


def test_db_commands(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "dir" / "new.db"
    code, out = invoke("db", "upgrade", "--database", str(db))
    head = head_revision()
    assert code == 0 and f"-> {head}" in out
    assert (
        oct(db.parent.stat().st_mode & 0o777) == "0o700"
        and oct(db.stat().st_mode & 0o777) == "0o600"
    )
    code, out = invoke("db", "upgrade", "--database", str(db))
    assert code == 0 and f"already at {head}" in out
    code, out = invoke("db", "current", "--database", str(db))
    assert code == 0 and out.startswith(f"{head} (head: {head}; up to date)")


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


def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recorder", "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "recorder, version" in proc.stdout


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


PG_URL = "postgresql://u:PGPASS44@127.0.0.1:9/x?password=QPASS55"  # port 9 refuses


@pytest.mark.parametrize(
    "command",
    [["sessions"], ["frames"], ["status"], ["show", S1], ["db", "current"], ["db", "upgrade"]],
)
def test_a_database_url_is_named_without_its_password(command: list[str]) -> None:
    code, out = invoke(*command, "--database", PG_URL)
    assert code == 1 and out.count("\n") == 1, out
    assert "PGPASS44" not in out and "QPASS55" not in out
    assert "postgresql://u:***@127.0.0.1:9/x?password=***" in out


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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://root@127.0.0.1/x", "unsupported database 'mysql' (use sqlite or postgresql)"),
        ("sqlite://", "SQLite needs a file path (sqlite:///path/recorder.db)"),
    ],
)
def test_a_bad_database_url_names_the_option(url: str, expected: str) -> None:
    code, out = invoke("sessions", "--database", url)
    assert (code, out) == (2, f"Error: --database: {expected}\n")


def test_a_database_url_the_driver_rejects_is_one_line() -> None:
    code, out = invoke("sessions", "--database", "postgresql://u:PGPASS44@127.0.0.1:99999/x")
    assert code == 2 and out.count("\n") == 1 and "PGPASS44" not in out
    assert out == (
        "Error: --database: the port is not a number 0-65535:"
        " 'postgresql://u:***@127.0.0.1:99999/x'\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frames", "--since", "garbage"], "Error: Invalid value for '--since': not a time:"),
        (["connections", "--role", "nope"], "Error: Invalid value for '--role': 'nope' is not"),
        (["frames", "--config", "."], "Error: Invalid value for '--config' / '-c': "),
        (["frames", "--bogus"], "Error: No such option '--bogus'"),
        (["show"], "Error: Missing argument 'SESSION'."),
        (["nosuch"], "Error: No such command 'nosuch'."),
        (["db", "nosuch"], "Error: No such command 'nosuch'."),
        (["--bogus"], "Error: No such option '--bogus'"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    code, out = invoke(*args)
    assert code == 2 and out.startswith(expected) and out.count("\n") == 1, out


def test_a_group_alone_still_prints_its_help() -> None:
    code, out = invoke("db")
    assert code == 2 and out.startswith("Usage: ") and "upgrade" in out


def test_listing_the_commands_does_not_import_asyncio() -> None:
    probe = (
        "import sys\n"
        "from recorder.cli import cli\n"
        "try:\n"
        "    cli.main(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('asyncio' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert "cleanup" in result.stdout and result.stderr.strip() == "False"


def test_an_argument_that_is_not_utf8_is_one_line(filled_db: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recorder", "show", b"\xff", "--database", str(filled_db)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == b"Error: an argument is not valid UTF-8: b'\\xff'\n"


@pytest.mark.parametrize(
    ("database", "message"),
    [
        # A slash short: a mistyped URL, not a file to create (db upgrade made the
        # directory tree postgresql:/u:PW@h/ and the file x, and showed the password).
        (
            "postgresql:/u:PW77@h/x",
            "Error: --database: not a database URL: 'postgresql:/u:***@h/x'",
        ),
        (
            "postgres ql://u:PW77@h/x",
            "Error: --database: not a database URL: 'postgres ql://u:***@h/x'",
        ),
        ("u:PW77@h/x", "Error: no database at u:***@h/x"),
    ],
)
def test_a_mistyped_database_url_is_refused_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    # (A path with a colon and an @ is still a path: db upgrade may create it.)
    url_like = not database.startswith("u:")
    for command in (["sessions"], ["db", "upgrade"]) if url_like else (["sessions"],):
        result = CliRunner().invoke(cli, [*command, "--database", database])
        assert result.exit_code == (2 if url_like else 1), result.output
        assert result.stderr.startswith(message) and "PW77" not in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Empty values were taken as the option left out (found probing bad input).
        (["sessions", "--database", ""], "--database: expected a database URL or a file path"),
        (["replay", "s1", "--database", "x.db", "--from", ""], "--from"),
        (["replay", "s1", "--database", "x.db", "--until", ""], "--until"),
        (["replay", "s1", "--database", "x.db", "--serve", ""], "--serve: expected HOST:PORT"),
        # Options of a mode not chosen were ignored.
        (["replay", "s1", "--database", "x.db", "--loop"], "--loop needs --serve HOST:PORT"),
        (["replay", "s1", "--database", "x.db", "--json"], "--json needs --against ws://..."),
        (
            ["replay", "s1", "--database", "x.db", "--wait-for-client"],
            "--wait-for-client needs --serve HOST:PORT",
        ),
        (
            ["simulate", "--journal", "/nonexistent/dir/j.jsonl"],
            "--journal: cannot write /nonexistent/dir/j.jsonl: No such file or directory",
        ),
        # NaN made every simulated session fail, or finish at once.
        (["simulate", "--fail-rate", "nan"], "'nan' is not a finite number"),
        (["simulate", "--chunk-delay", "inf"], "'inf' is not a finite number"),
    ],
)
def test_empty_values_stray_flags_and_not_finite_numbers_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
