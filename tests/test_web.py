"""The web console (`recorder web`): the sessions list and its JSON, a session's
story, escaping of hostile recordings, the headers, GET only, the token.

Real parts: recordings written by the writer's own code, the real `recorder web` as a
subprocess on 127.0.0.1 port 0, real HTTP requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from recorder.cli import cli
from tests.cleanup_scripts import SECOND, Script
from tests.web_console import CSP, HOSTILE, chromium, get, ids_in, served, session_frame, write
from tests.web_recordings import write_beside

# The live list's scripts, files of ours: the only script elements a page may have.
OWN_SCRIPTS = re.compile(r'<script src="/static/[a-z]+\.js" defer></script>')


def test_sessions_newest_first_paged_by_key_with_json_and_get_only(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    states = ["completed", "failed", "running"]
    write(
        db,
        [
            (i * SECOND, "in", session_frame(f"s{i:03d}", states[i % 3], f"o{i % 2}", f"job {i}"))
            for i in range(1, 61)
        ],
    )
    with served(db) as url:
        code, headers, first = get(url + "/")
        assert code == 200 and headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert ids_in(first) == [f"s{i:03d}" for i in range(60, 10, -1)]
        assert "job 60" in first and "chat" in first and "o0" in first
        after = re.search(r'rel="next" href="([^"]*)"', first)
        assert after is not None and "before=s011" in after.group(1)
        _, _, second = get(url + after.group(1).replace("&amp;", "&"))
        assert ids_in(second) == [f"s{i:03d}" for i in range(10, 0, -1)]
        assert 'rel="next"' not in second

        _, _, failed = get(url + "/?status=failed&orchestrator=o1&q=job+1")
        assert ids_in(failed) == ["s019", "s013", "s001"]

        code, headers, body = get(url + "/api/sessions?before=s011")
        assert code == 200 and headers["Content-Type"] == "application/json"
        page = json.loads(body)
        args = ["sessions", "--database", str(db), "--format", "json", "--limit", "0"]
        cli_rows = json.loads(CliRunner().invoke(cli, args).output)
        assert page["sessions"] == cli_rows[50:] and page["next_before"] is None
        assert json.loads(get(url + "/api/sessions")[2])["next_before"] == "s011"

        code, _, said = get(url + "/?since=nonsense")
        assert code == 400 and "since" in said
        assert get(url + "/sessions/nobody")[0] == 404
        db.unlink()  # a database gone while the console serves: one line, not a traceback
        code, _, said = get(url + "/api/sessions")
        assert code == 503 and len(said.splitlines()) == 1
        for method in ("POST", "PUT", "DELETE"):
            code, headers, _ = get(url + "/", method=method)
            assert code == 405 and headers["Content-Security-Policy"] == CSP
        assert get(url + "/api/sessions", method="POST")[0] == 405
        code, headers, css = get(url + "/static/console.css")
        assert code == 200 and "table.sessions" in css


def test_hostile_recording_is_shown_as_text(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    script: Script = [
        (i * SECOND, "in", session_frame(payload, "running", payload, f"do {payload} now"))
        for i, payload in enumerate(HOSTILE, 1)
    ]
    write(db, script)
    with served(db) as url:
        pages = [get(url + "/")]
        for href in re.findall(r'<td class="id"><a href="([^"]*)"', pages[0][2]):
            assert href.startswith("/sessions/")
            pages.append(get(url + href))
        assert len(pages) == 1 + len(HOSTILE)
        for code, headers, page in pages:
            assert code == 200 and headers["Content-Security-Policy"] == CSP
            html = OWN_SCRIPTS.sub("", page)
            assert "<script" not in html and '" onerror="' not in html
            assert 'href="javascript:' not in html and "do 49 now" not in html
        listing = pages[0][2]
        # The row's data-id and link, the orchestrator, the task.
        assert listing.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4
        assert (
            listing.count("{{7*7}}") == 4
            and ">49<" not in listing
            and "&#34; onerror=&#34;x" in listing
        )
        stories = "".join(html for _, _, html in pages[1:])
        assert "do &lt;script&gt;alert(1)&lt;/script&gt; now" in stories
        assert "do {{7*7}} now" in stories


def test_non_loopback_listen_without_token_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write(db, [(SECOND, "in", session_frame("s1", "running", "o", "d"))])
    env = {k: v for k, v in os.environ.items() if k != "RECORDER_WEB_TOKEN"}
    command = [sys.executable, "-m", "recorder", "web", "--database", str(db)]
    config = tmp_path / "c.toml"
    config.write_text('[web]\nlisten = "0.0.0.0:0"\n')
    for args in (["--listen", "0.0.0.0:0"], ["--listen", "[::]:0"], ["-c", str(config)]):
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, env=env, timeout=30
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.splitlines()) == 1 and "web.token" in done.stderr
    config.write_text('[web]\ntoken = "t\u00f6ken"\n')
    done = subprocess.run(
        [*command, "-c", str(config)], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 2 and "web.token: must be printable ASCII" in done.stderr
    assert "t\u00f6ken" not in done.stderr  # a secret is not repeated


def test_token_bearer_query_and_cookie(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write(db, [(SECOND, "in", session_frame("s1", "running", "o", "d"))])
    token = "s3cret-token"
    with served(db, env={"RECORDER_WEB_TOKEN": token}, secret=token) as url:
        code, headers, _ = get(url + "/")
        assert code == 401 and headers["Content-Security-Policy"] == CSP
        assert get(url + "/api/sessions")[0] == 401
        assert get(url + "/", Authorization="Bearer wrong")[0] == 401
        assert get(url + "/?token=wrong")[0] == 401
        assert get(url + "/", Authorization=f"Bearer {token}")[0] == 200

        code, headers, _ = get(url + f"/?status=running&token={token}")
        assert code == 303 and headers["Location"] == "/?status=running"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert token not in cookie
        pair = cookie.split(";")[0]
        code, _, html = get(url + "/?status=running", Cookie=pair)
        assert code == 200 and ids_in(html) == ["s1"]
        forged = pair[:-1] + ("1" if pair.endswith("0") else "0")
        assert get(url + "/", Cookie=forged)[0] == 401


def test_postgresql_filters_and_pages_ties_by_id(pg_url: str) -> None:
    """The same list over PostgreSQL; sessions first seen at the same microsecond page
    by id, none repeated or skipped at a page's edge."""
    script: Script = [
        (SECOND * (1 + i // 20), "in", session_frame(f"p{i:03d}", "running", "o", f"Job {i}"))
        for i in range(70)
    ]
    write(pg_url, script)
    seen: list[str] = []
    with served(pg_url) as url:
        after: str | None = ""
        while after is not None:
            page = json.loads(get(url + "/api/sessions" + (f"?before={after}" if after else ""))[2])
            seen += [row["id"] for row in page["sessions"]]
            after = page["next_before"]
        _, _, found = get(url + "/?q=Job+6&status=running&orchestrator=o")
    newest_first = sorted(range(70), key=lambda i: (-(i // 20), -i))
    assert seen == [f"p{i:03d}" for i in newest_first]
    assert ids_in(found) == [
        "p069",
        "p068",
        "p067",
        "p066",
        "p065",
        "p064",
        "p063",
        "p062",
        "p061",
        "p060",
        "p006",
    ]


def test_in_a_browser_the_list_leads_to_a_story(tmp_path: Path) -> None:
    """Chromium shows the recorded sessions; clicking one opens its story."""
    db = tmp_path / "r.db"
    write(
        db,
        [
            (SECOND, "in", session_frame("s-old", "completed", "o", "first job")),
            (2 * SECOND, "in", session_frame("s/new", "failed", "o", "second job")),
        ],
    )
    with served(db) as url, chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        rows = page.locator("table.sessions tbody tr")
        assert rows.count() == 2 and "s/new" in rows.nth(0).inner_text()
        page.get_by_role("link", name="s/new").click()
        page.wait_for_url("**/sessions/s%2Fnew")
        story = page.locator("pre.story").inner_text()
        assert "second job" in story and "failed" in story
        assert errors == []


def test_in_a_browser_the_token_once_then_the_cookie(tmp_path: Path) -> None:
    """Chromium without the token gets 401; with ?token= once, the address bar loses it
    and the cookie carries the browser on, to every page and to the API."""
    db = tmp_path / "r.db"
    write(db, [(SECOND, "in", session_frame("s1", "running", "o", "a job"))])
    token = "br0wser-token"
    with served(db, env={"RECORDER_WEB_TOKEN": token}, secret=token) as url, chromium() as b:
        page = b.new_page()
        response = page.goto(url + "/?status=running")
        assert response is not None and response.status == 401
        response = page.goto(url + f"/?status=running&token={token}")
        assert response is not None and response.status == 200
        assert page.url == url + "/?status=running" and token not in page.url
        page.get_by_role("link", name="s1").click()
        page.wait_for_url("**/sessions/s1")
        assert "a job" in page.locator("pre.story").inner_text()
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        api = page.request.get(url + "/api/sessions")
        assert api.status == 200 and api.json()["sessions"][0]["id"] == "s1"


def test_newer_than_gives_the_sessions_above_a_row_nearest_first_by_key(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write(
        db,
        [
            (i * SECOND, "in", session_frame(f"s{i:03d}", "running", "o", f"job {i}"))
            for i in range(1, 61)
        ],
    )
    with served(db) as url:
        page = json.loads(get(url + "/api/sessions?newer_than=s005")[2])
        assert [s["id"] for s in page["sessions"]] == [f"s{i:03d}" for i in range(55, 5, -1)]
        assert page["more"] is True and page["rows"][0]["task"] == "job 55"
        assert page["rows"][0]["status"] == "running" and page["rows"][0]["frames"] == 1
        rest = json.loads(get(url + "/api/sessions?newer_than=s055")[2])
        assert [s["id"] for s in rest["sessions"]] == ["s060", "s059", "s058", "s057", "s056"]
        assert rest["more"] is False
        assert json.loads(get(url + "/api/sessions?newer_than=s060")[2])["sessions"] == []
        filtered = json.loads(get(url + "/api/sessions?newer_than=s050&q=job+5")[2])
        assert [s["id"] for s in filtered["sessions"]] == [f"s{i:03d}" for i in range(59, 50, -1)]
        code, _, said = get(url + "/api/sessions?newer_than=s050&before=s010")
        assert code == 400 and "newer_than" in said
        assert get(url + "/?newer_than=s050&before=s010")[0] == 400


def test_in_a_browser_new_sessions_appear_on_top_and_what_the_reader_reads_stays(
    tmp_path: Path,
) -> None:
    """A session recorded after the list opened appears at its top within a few
    seconds; scrolled down, the row the reader looks at does not move."""
    db = tmp_path / "r.db"
    write(
        db,
        [
            (i * SECOND, "in", session_frame(f"s{i:03d}", "running", "o", f"job {i}"))
            for i in range(1, 61)
        ],
    )
    hostile = "<b>new</b>/" + HOSTILE[0]
    with served(db) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 500})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        rows = page.locator("table.sessions tbody tr")
        assert rows.count() == 50
        watched = page.locator('tr[data-id="s030"]')
        watched.scroll_into_view_if_needed()
        # At once, not smoothly as a wheel does: a smooth scroll still under way when the
        # row's place is read would move it after.
        page.evaluate("window.scrollBy({top: 120, behavior: 'instant'})")
        assert page.evaluate("window.scrollY") > 0
        top = watched.evaluate("row => row.getBoundingClientRect().top")
        write_beside(
            db, [(100 * SECOND, "in", session_frame(hostile, "failed", "o", "new <i>job</i>"))]
        )
        page.wait_for_function(
            "() => document.querySelectorAll('table.sessions tbody tr').length === 51",
            timeout=10_000,
        )
        # Scrolling is by whole pixels, rows are not: within one.
        assert abs(watched.evaluate("row => row.getBoundingClientRect().top") - top) < 1
        first = rows.nth(0)
        assert first.locator("td.id a").inner_text() == hostile
        assert first.locator("td.task").inner_text() == "new <i>job</i>"
        assert first.locator("b, i, script").count() == 0
        href = first.locator("td.id a").get_attribute("href")
        assert href == "/sessions/%3Cb%3Enew%3C%2Fb%3E%2F%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        assert "1 new session" in page.locator("#live-note").inner_text()

        # At the top, the reader is watching for new sessions: they appear in view.
        page.evaluate("window.scrollTo(0, 0)")
        write_beside(
            db, [(101 * SECOND, "in", session_frame("s-newest", "running", "o", "newest"))]
        )
        page.wait_for_function(
            "() => document.querySelector('table.sessions tbody tr').dataset.id === 's-newest'",
            timeout=10_000,
        )
        assert page.evaluate("window.scrollY") == 0
        assert rows.nth(0).is_visible() and rows.nth(1).get_attribute("data-id") == hostile
        rows.nth(1).locator("td.id a").click()
        page.wait_for_url("**/sessions/%3Cb%3Enew*")
        assert "new <i>job</i>" in page.locator("pre.story").inner_text()
        assert errors == []
