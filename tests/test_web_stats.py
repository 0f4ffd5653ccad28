"""The console's stats (`/stats`, `/api/stats`): the numbers the commands print for
the same database (stats, status, connections, cleanup history), each recorder's
link uptime from its connections, and hostile recordings shown as text.

Real parts: recordings written by the writer's own code on link connections that
open and close at chosen times, a cleanup run by `recorder cleanup run`, the real
`recorder web` as a subprocess, real HTTP requests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from recorder.cli import cli
from recorder.times import now_us
from tests.cleanup_scripts import DAY, SECOND, chunk, config_file, policy, status
from tests.web_console import CSP, HOSTILE, get, served, session_frame
from tests.web_recordings import Link, write_links


def links(t: int) -> list[Link]:
    """Three days of a link that dropped twice: up 40 s, then 60 s, then open (its
    recorder gone without closing it, no heartbeat: up for no time we know of). Every
    hostile text is a session id, an orchestrator, a task and a frame type."""
    first = [(t + SECOND, "in", session_frame(h, "running", h, f"do {h} now")) for h in HOSTILE]
    first += [(t + 2 * SECOND, "in", json.dumps({"type": h}).encode()) for h in HOSTILE]
    second = [(t + DAY + SECOND, "in", status("done-1", "completed"))]
    second += [(t + DAY + (2 + i) * SECOND, "in", chunk(HOSTILE[0], f"c{i}")) for i in range(5)]
    third = [(t + 2 * DAY + SECOND, "in", chunk(HOSTILE[1], "x"))]
    return [
        Link(t, t + 40 * SECOND, first),
        Link(t + DAY, t + DAY + 60 * SECOND, second),
        Link(t + 2 * DAY, None, third),
    ]


def command(*args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_stats_say_what_the_commands_say_and_hostile_text_stays_text(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    t = now_us() - 3 * DAY
    write_links(db, links(t))
    config = config_file(tmp_path, db, policy("bye", "purge", 'status = ["completed"]'))
    command("cleanup", "run", "-c", str(config), "--policy", "bye")
    where = ("--database", str(db))
    with served(db) as url:
        code, headers, body = get(url + "/api/stats")
        before = now_us()
        assert code == 200 and headers["Content-Type"] == "application/json"
        seen = json.loads(body)
        assert seen["stats"] == command("stats", *where)
        assert seen["status"] == {"default": command("status", *where)}
        assert seen["connections"] == command("connections", *where)
        assert seen["cleanup_runs"] == command("cleanup", "history", *where)
        assert len(seen["stats"]["frames_by_day"]) == 3 and seen["cleanup_runs"][0]["acted"] == 1

        [uptime] = seen["link_uptime"]
        assert uptime["instance"] == "default" and uptime["connections"] == 3
        assert uptime["up_seconds"] == 100.0 and not uptime["connected"]
        assert abs(uptime["covered_seconds"] - (before - t) / 1e6) < 30
        assert uptime["share"] == round(100.0 / uptime["covered_seconds"], 6)

        code, headers, html = get(url + "/stats")
        assert code == 200 and headers["Content-Security-Policy"] == CSP
        assert "<script" not in html and '" onerror="' not in html
        assert 'href="javascript:' not in html and ">49<" not in html
        # Busiest sessions and frame types: each hostile id and type, escaped.
        assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2
        assert html.count("{{7*7}}") >= 2 and "&#34; onerror=&#34;x" in html
        hrefs = re.findall(r'<td class="id"><a href="([^"]*)"', html)
        assert "/sessions/%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in hrefs
        assert all(h.startswith("/sessions/") for h in hrefs)
        # The charts: a bar per day of frames and of bytes, and the uptime.
        assert html.count('<svg class="bars') == 2 and "frames</title>" in html
        assert f"{uptime['share'] * 100:.2f} %" in html
        assert "ws://daemon" in html and "the daemon went away" in html
        assert get(url + "/api/stats", method="POST")[0] == 405


def test_stats_on_postgresql_match_the_commands(pg_url: str) -> None:
    t = now_us() - 3 * DAY
    write_links(pg_url, links(t))
    where = ("--database", pg_url)
    with served(pg_url) as url:
        seen = json.loads(get(url + "/api/stats")[2])
    said = command("stats", *where)
    # PostgreSQL's size moves as it works (its statistics, autovacuum): all but it.
    assert {**seen["stats"], "database_bytes": 0} == {**said, "database_bytes": 0}
    assert seen["connections"] == command("connections", *where)
    assert seen["status"]["default"]["frames"] == command("status", *where)["frames"]
    [uptime] = seen["link_uptime"]
    assert uptime["up_seconds"] == 100.0 and uptime["connections"] == 3
