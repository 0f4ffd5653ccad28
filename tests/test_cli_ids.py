"""One rule for a session, whichever command takes it: its id, or a unique start of
it; an ambiguous start lists what it matches. Over a real SQLite file filled through
the real writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.protocol.frames import IN
from tests.conversations import S1, S2, fill
from tests.conversations import TWO_SESSIONS as FRAMES

# S1 and S2 share this start; S1 alone starts with UNIQUE.
SHARED = "session_17956925"
UNIQUE = S1[:20]
assert S2.startswith(SHARED) and not S2.startswith(UNIQUE)


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ids") / "recorder.db"
    fill(path, FRAMES)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_frames_session_takes_a_prefix(filled_db: Path) -> None:
    """`frames --session PREFIX` said "no frames match" where `show` took the prefix."""
    code, out, _ = run("frames", "--database", str(filled_db), "--session", UNIQUE, "--json")
    assert code == 0
    by_prefix = [json.loads(line) for line in out.splitlines()]
    code, out, _ = run("frames", "--database", str(filled_db), "--session", S1, "--json")
    assert by_prefix == [json.loads(line) for line in out.splitlines()]
    assert [f["seq"] for f in by_prefix] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "command",
    [
        ["frames", "--session", "{}"],
        ["tasks", "--session", "{}"],
        ["show", "{}"],
        ["replay", "{}", "--instant"],
        ["export", "{}"],
    ],
)
def test_every_reading_command_takes_a_prefix(filled_db: Path, command: list[str]) -> None:
    args = [a.format(UNIQUE) for a in command]
    code, out, err = run(*args, "--database", str(filled_db))
    assert code == 0, err
    assert out  # something of S1 was printed
    # And the same start, shared with S2, is refused with both named: not a guess.
    code, out, err = run(*[a.format(SHARED) for a in command], "--database", str(filled_db))
    assert code == 1 and out == ""
    assert err == f"Error: '{SHARED}' matches more than one session: {S1}, {S2}\n"


def test_pin_and_unpin_take_a_prefix(tmp_path: Path) -> None:
    db = tmp_path / "recorder.db"
    fill(db, FRAMES)
    code, out, _ = run("pin", "--database", str(db), UNIQUE)
    assert (code, out) == (0, f"{S1} pinned\n")
    code, out, _ = run("unpin", "--database", str(db), UNIQUE)
    assert (code, out) == (0, f"{S1} unpinned\n")
    code, _, err = run("pin", "--database", str(db), SHARED)
    assert code == 1 and "matches more than one session" in err


def test_tail_session_takes_a_prefix(filled_db: Path) -> None:
    """`tail` follows until Ctrl-C: its first look (the newest frames) is what it printed
    before the stop the runner's closed stdin does not send; so read it from a process."""
    import subprocess
    import sys

    command = ["tail", "--database", str(filled_db), "--session", UNIQUE, "--format", "jsonl"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recorder", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seqs = [json.loads(proc.stdout.readline())["seq"] for _ in range(5)]
    finally:
        proc.kill()
        proc.wait()
    assert seqs == [2, 3, 4, 5, 6]


def test_an_ambiguous_prefix_says_more_only_when_there_are_more(tmp_path: Path) -> None:
    """Every match listed ended in ", ..." too, sending people looking for more."""
    db = tmp_path / "recorder.db"
    ids = [f"session_many_{i}" for i in range(7)]
    fill(
        db,
        [
            (IN, json.dumps({"type": "session_status_update", "session": {"id": s}}).encode(), True)
            for s in ids
        ],
    )
    code, _, err = run("show", "--database", str(db), "session_many")
    listed = ", ".join(ids[:5])
    assert (
        code == 1 and err == f"Error: 'session_many' matches more than one session: {listed}, ...\n"
    )
    code, _, err = run("show", "--database", str(db), "session_many_")
    assert code == 1 and err.endswith(", ...\n")
    exactly_five = tmp_path / "five.db"
    fill(
        exactly_five,
        [
            (IN, json.dumps({"type": "session_status_update", "session": {"id": s}}).encode(), True)
            for s in ids[:5]
        ],
    )
    code, _, err = run("frames", "--database", str(exactly_five), "--session", "session_many")
    assert code == 1 and err == f"Error: 'session_many' matches more than one session: {listed}\n"
    code, _, err = run("show", "--database", str(db), "nope")
    assert (code, err) == (
        1,
        "Error: no recorded session matches 'nope' (see `recorder sessions`)\n",
    )
    # frames and tail take an id no session has as it is: frames can name a session the
    # daemon never had (a request about a missing one), and tail one not yet recorded.
    code, _, err = run("frames", "--database", str(db), "--session", "nope")
    assert (code, err) == (0, "no frames match\n")


@pytest.mark.parametrize(
    "command",
    [["sessions"], ["frames"], ["tasks"], ["connections"], ["show", S1], ["stats"], ["status"]],
)
def test_every_query_command_takes_each_format(filled_db: Path, command: list[str]) -> None:
    """One shape of --format everywhere: show and stats refused jsonl."""
    shapes = {}
    for fmt in ("table", "json", "jsonl"):
        code, out, err = run(*command, "--database", str(filled_db), "--format", fmt)
        assert code == 0, err
        shapes[fmt] = out
    json.loads(shapes["json"])  # one document
    lines = shapes["jsonl"].splitlines()
    assert lines and all(json.loads(line) is not None for line in lines)
    assert shapes["table"] not in (shapes["json"], shapes["jsonl"])


@pytest.mark.parametrize(
    "command", [["show", ""], ["replay", " "], ["pin", ""], ["frames", "--session", ""]]
)
def test_an_empty_session_is_bad_input(filled_db: Path, command: list[str]) -> None:
    """Empty starts every id: it named the one session of a database with one."""
    code, out, err = run(*command, "--database", str(filled_db))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "expected a session id or the start of one" in err
