"""`recorder report`: its numbers equal those of a hand-built recording (sessions, the
first error of a failed one, tool calls with exact p50/p95, the slowest sessions, the
tokens, a gap between two link connections, a cleanup run, the growth), on SQLite and
PostgreSQL; each format parses, and recorded text cannot attack any of them."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.recordings import Recordings
from recorder.report import build_report, render
from recorder.report.build import Report
from recorder.times import now_us
from tests.hostile_recording import ALL, ATTACKS, SID, hostile_script
from tests.report_recordings import Link, message, write_timed

S = 1_000_000
# Twenty read_file calls taking 1 s to 20 s: nearest-rank p50 is 10 s, p95 19 s.
DURATIONS = range(1, 21)


def status(sid: str, state: str, orchestrator: str, tokens: int | None = None) -> bytes:
    session: dict[str, Any] = {"id": sid, "status": state, "orchestratorId": orchestrator}
    if tokens is not None:
        session["metrics"] = {"tokensUsed": tokens}
    return message("session_status_update", session=session)


def tool(kind: str, sid: str, name: str, **data: Any) -> bytes:
    return message(kind, data={"sessionId": sid, "toolName": name, **data})


def daemon(tokens: int) -> bytes:
    return message("daemon_status_update", status={"metrics": {"totalTokensUsed": tokens}})


def recording(base: int) -> list[Link]:
    """Link 1 (base to base+600 s): s_ok completes after twenty timed tool calls (one
    failed), s_bad fails on a task, leaving a call unanswered. Down 300 s. Link 2 (from
    base+900 s, still up): s_run runs on, s_junk is cancelled (a cleanup purges it)."""
    first: list[tuple[int, str, bytes]] = [
        (base + 5 * S, "in", daemon(1000)),
        (base + 10 * S, "in", status("s_ok", "running", "o1", 100)),
        (base + 30 * S, "in", status("s_bad", "running", "o1")),
        (base + 35 * S, "in", tool("tool_call_start", "s_bad", "run_shell", toolInput={})),
        (base + 40 * S, "in", message("task_failed", sessionId="s_bad", error="first boom")),
        (base + 50 * S, "in", message("task_failed", sessionId="s_bad", error="second boom")),
        (base + 60 * S, "in", status("s_bad", "failed", "o1", 7)),
    ]
    for k in DURATIONS:
        start = base + (100 + 20 * k) * S
        result = "failed" if k == 3 else "completed"
        first.append((start, "in", tool("tool_call_start", "s_ok", "read_file", toolInput={})))
        first.append(
            (
                start + k * S,
                "in",
                tool("tool_call_result", "s_ok", "read_file", status=result, result={}),
            )
        )
    first.append((base + 540 * S, "in", status("s_ok", "running", "o1", 250)))
    first.append((base + 560 * S, "in", status("s_ok", "completed", "o1")))
    second = [
        (base + 1000 * S, "in", status("s_run", "running", "o2")),
        (base + 1010 * S, "in", status("s_junk", "cancelled", "o2")),
        (base + 1020 * S, "in", daemon(1500)),
    ]
    first.sort()
    return [Link(base, base + 600 * S, first), Link(base + 900 * S, None, second)]


def purge_junk(tmp_path: Path, url: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\nurl = "{url}"\n[[cleanup.policies]]\nname = "junk"\n'
        'schedule = "every 1h"\naction = "purge"\nwhen = { status = ["cancelled"] }\n'
    )
    done = CliRunner().invoke(cli, ["cleanup", "run", "--config", str(config), "--json"])
    assert done.exit_code == 0, done.output


def built(tmp_path: Path, target: Path | str) -> tuple[Report, int]:
    base = (now_us() // S - 7200) * S
    write_timed(target, recording(base))
    url = f"sqlite:///{target}" if isinstance(target, Path) else target
    purge_junk(tmp_path, url)
    with Recordings.open(url) as recordings:
        return build_report(recordings, base - 3600 * S, now_us()), base


def check_numbers(report: Report, base: int) -> None:
    assert report.sessions == 3
    assert dict(report.by_status) == {"completed": 1, "failed": 1, "running": 1}
    assert report.by_orchestrator == [("o1", 2, 1), ("o2", 1, 0)]
    (failed,) = report.failed
    assert (failed.id, failed.error, failed.error_source) == ("s_bad", "first boom", "task_failed")
    assert failed.ended_us == base + 60 * S
    lines = {t.name: t for t in report.tools}
    read = lines["read_file"]
    assert (read.calls, read.failed, read.unanswered) == (20, 1, 0)
    assert (read.p50_s, read.p95_s) == (10.0, 19.0)
    shell = lines["run_shell"]
    assert (shell.calls, shell.failed, shell.unanswered, shell.p50_s) == (1, 0, 1, None)
    assert [s.id for s in report.slowest] == ["s_run", "s_ok", "s_bad"]
    assert [s.ended for s in report.slowest] == [False, True, True]
    assert [s.seconds for s in report.slowest[1:]] == [550.0, 30.0]
    tokens = report.tokens
    assert (tokens.sessions_total, tokens.sessions_reporting) == (257, 2)
    assert tokens.top == [("s_ok", 250), ("s_bad", 7)]
    assert tokens.daemon_last is not None and tokens.daemon_last.tokens == 1500
    assert tokens.daemon_in_window == 1500  # nothing said before the window
    (link,) = report.links
    assert (link.connections, link.gap_count, link.connected) == (2, 1, True)
    (gap,) = link.gaps
    assert (gap.start_us, gap.end_us) == (base + 600 * S, base + 900 * S)
    assert link.start_us == base  # the window starts before the recorder first linked
    assert link.up_us == report.now_us - base - 300 * S
    (run,) = report.cleanup
    assert (run.policy, run.action, run.runs, run.matched, run.acted, run.frames) == (
        "junk",
        "purge",
        1,
        1,
        1,
        1,
    )


def test_the_numbers_are_those_of_the_recording(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    report, base = built(tmp_path, db)
    check_numbers(report, base)
    with sqlite3.connect(db) as conn:
        (frames,) = conn.execute("SELECT count(*) FROM frames").fetchone()
    assert report.growth.frames == frames == 52 - 1  # the junk session's frame was purged
    assert report.growth.database_bytes is not None
    assert report.growth.database_bytes >= db.stat().st_size  # with its WAL
    # The command prints the same numbers, and each format parses.
    out = CliRunner().invoke(
        cli, ["report", "--database", str(db), "--since", "3h", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    shown = json.loads(out.stdout)
    assert shown["tool_calls"]["by_tool"][0] == {
        "name": "read_file",
        "calls": 20,
        "failed": 1,
        "unanswered": 0,
        "p50_s": 10.0,
        "p95_s": 19.0,
    }
    assert shown["failed_sessions"]["latest"][0]["error"] == "first boom"
    assert shown["links"][0]["gaps"][0]["seconds"] == 300.0
    for fmt in ("text", "markdown", "html"):
        out = CliRunner().invoke(cli, ["report", "--database", str(db), "--format", fmt])
        assert out.exit_code == 0, out.output
        assert "s\\_bad" in out.stdout if fmt == "markdown" else "s_bad" in out.stdout
    text = CliRunner().invoke(cli, ["report", "--database", str(db), "--since", "3h"]).stdout
    assert re.search(r"read_file +20 +1 +0 +10\.000 s +19\.000 s", text), text


def test_postgresql_gives_the_same_numbers(tmp_path: Path, pg_url: str) -> None:
    report, base = built(tmp_path, pg_url)
    check_numbers(report, base)
    assert report.growth.frames == 51


@pytest.mark.parametrize("since", ["yesterday", "10 parsecs", "", "9999999999d"])
def test_a_bad_since_is_one_line_and_exit_2(tmp_path: Path, since: str) -> None:
    db = tmp_path / "r.db"
    write_timed(db, [])
    out = CliRunner().invoke(cli, ["report", "--database", str(db), "--since", since])
    assert out.exit_code == 2
    assert out.output.count("\n") == 1 and "--since" in out.output, out.output
    assert "Traceback" not in out.output


def test_recorded_text_cannot_attack_any_format(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    base = (now_us() // S - 3600) * S
    script = [(base + at, direction, data) for at, direction, data in hostile_script()]
    write_timed(db, [Link(base, None, script)])
    with Recordings.open(f"sqlite:///{db}") as recordings:
        report = build_report(recordings, base - S, now_us())
    assert report.failed[0].id == SID and report.tools[0].name == ALL
    # JSON: the values whole, as data.
    data = json.loads(render(report, "json"))
    assert data["failed_sessions"]["latest"][0]["id"] == SID
    # HTML: a document without a script, every recorded string escaped.
    page = render(report, "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower() and "<img" not in page and "<svg" not in page
    assert "<iframe" not in page and "&lt;img src=x onerror=" in page
    assert "\x1b" not in page and "\u202e" not in page
    # Markdown: once its escapes are taken out, no character of link, image, HTML,
    # code or emphasis syntax is left, the attacks' included.
    md = render(report, "markdown")
    bare = re.sub(r"\\.", "", md)
    assert not set(bare) & set("[]()<>!`*_~&@"), sorted(set(bare) & set("[]()<>!`*_~&@"))
    assert "\\<script\\>" in md
    assert "\x1b" not in md and "\u202e" not in md
    # Text: no terminal control reaches the screen.
    text = render(report, "text")
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert any(a[:10] in md or a[:10] in text for a in ATTACKS)


def test_markdown_escapes_what_would_be_syntax_and_leaves_numbers_as_they_read() -> None:
    from recorder.report.render import markdown_text

    assert markdown_text("2026-12-05 09:28:11 UTC, 0.026 s, 62.16 %") == (
        "2026-12-05 09:28:11 UTC, 0.026 s, 62.16 %"
    )
    assert markdown_text("[x](javascript:alert(1)) http://1.2.3.4 a@b.c") == (
        r"\[x\]\(javascript\:alert\(1\)\) http\://1.2.3.4 a\@b\.c"
    )
    assert markdown_text("1. item") == r"1\. item" and markdown_text("- 5") == r"\- 5"
