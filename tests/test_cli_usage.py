"""The CLI as a whole: help, `db upgrade` and `db current`, the entry points, and usage
errors in one line (database URLs named without their passwords)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.migrations import head_revision
from tests.conversations import S1
from tests.helpers import invoke


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


def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recorder", "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "recorder, version" in proc.stdout


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
