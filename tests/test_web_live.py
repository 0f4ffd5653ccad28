"""The live page (`/live`) and its event stream (`/api/live`): frames committed while a
page is open appear, pause holds them back and loses none, filters apply, a reader
who scrolled up is not moved, a reconnect resumes by Last-Event-ID, hostile frames
run nothing on any frames page.

Real parts: frames committed by the writer's own code while the real `recorder web`
serves, real HTTP, and the system's Chromium (one launch for the module)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import expect

from tests.cleanup_scripts import SECOND, Script, chunk
from tests.web_console import HOSTILE, chromium, get, served, session_frame, write

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Lines a frame's script would run, each setting the canary the page watches.
CANARY = [
    "<script>window.canary=1</script>",
    '<img src=x onerror="window.canary=1">',
    "javascript:window.canary=1",
    "{{constructor.constructor('window.canary=1')()}}",
    *HOSTILE,
]
WATCH = """
window.__ran = [];
Object.defineProperty(window, 'canary', {set(v) { window.__ran.push(String(v)); }});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


def commit(db: Path, script: Script) -> None:
    """``script`` written by the writer's code, from a thread of its own: Playwright's
    sync API keeps an event loop running on this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(write, db, script).result()


def open_live(browser: Browser, url: str, query: str = "") -> Page:
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda d: pytest.fail(f"a dialog opened: {d.message}"))
    page.add_init_script(WATCH)
    page.goto(url + "/live" + query)
    expect(page.locator("#live-state")).to_have_text("live")
    return page


def rows_of(page: Page, text: str) -> int:
    return page.locator("#rows tr", has_text=text).count()


class Events:
    """An event stream read line by line over a real connection."""

    def __init__(self, url: str, path: str, **headers: str) -> None:
        where = urlsplit(url)
        self.conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=10)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()

    def next(self) -> tuple[str, str, str]:
        """The next event: (type, id, data)."""
        kind, ident, data = "message", "", ""
        while True:
            line = self.response.fp.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if not line:
                if data or ident:
                    return kind, ident, data
                continue
            name, _, value = line.partition(": ")
            if name == "event":
                kind = value
            elif name == "id":
                ident = value
            elif name == "data":
                data = value

    def frames(self, count: int) -> list[dict[str, object]]:
        """The next ``count`` frames (cursor events skipped)."""
        found: list[dict[str, object]] = []
        while len(found) < count:
            kind, ident, data = self.next()
            if kind == "message":
                frame = json.loads(data)
                assert str(frame["id"]) == ident
                found.append(frame)
        return found

    def close(self) -> None:
        self.conn.close()


def test_stream_resumes_by_last_event_id_and_caps_clients(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write(db, [(i * SECOND, "in", chunk("r1", f"c{i}")) for i in range(1, 6)])
    with served(db) as url:
        stream = Events(url, "/api/live?session=r1&last=2")
        assert stream.response.status == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        assert [f["id"] for f in stream.frames(2)] == [4, 5]
        write(db, [(i * SECOND, "in", chunk("r1", f"c{i}")) for i in range(6, 9)])
        assert [f["id"] for f in stream.frames(3)] == [6, 7, 8]
        stream.close()
        again = Events(url, "/api/live?session=r1&last=5", **{"Last-Event-ID": "6"})
        write(db, [(9 * SECOND, "in", chunk("r1", "c9")), (9 * SECOND, "in", chunk("r2", "x"))])
        assert [f["id"] for f in again.frames(3)] == [7, 8, 9]
        write(db, [(10 * SECOND, "in", chunk("r1", "c10"))])
        assert [f["id"] for f in again.frames(1)] == [11]  # 10 is r2's: never r1's stream
        again.close()

        streams = [Events(url, "/api/live") for _ in range(8)]
        assert all(s.response.status == 200 for s in streams)
        code, _, said = get(url + "/api/live")
        assert code == 429 and len(said.splitlines()) == 1
        streams.pop().close()
        deadline = time.monotonic() + 5  # the server sees the client gone on its own time
        while (code := _status(url)) == 429:
            assert time.monotonic() < deadline, "a closed stream kept its slot"
        assert code == 200
        for s in streams:
            s.close()
        assert get(url + "/api/live?direction=up")[0] == 400
        assert get(url + "/api/live", **{"Last-Event-ID": "x"})[0] == 400


def _status(url: str) -> int:
    probe = Events(url, "/api/live")
    status = probe.response.status
    probe.close()
    return status


def test_live_page_shows_new_frames_pauses_without_loss_and_filters(
    tmp_path: Path, browser: Browser
) -> None:
    db = tmp_path / "r.db"
    commit(db, [(SECOND, "in", session_frame("old", "running", "o", "d"))])
    with served(db) as url:
        page = open_live(browser, url)
        watcher = open_live(browser, url)
        committed = time.monotonic()
        commit(db, [(2 * SECOND, "in", chunk("fresh", "hello live"))])
        page.locator("#rows tr", has_text="hello live").wait_for(timeout=2000)
        assert time.monotonic() - committed < 2.5  # the write's own time included
        row = page.locator("#rows tr", has_text="hello live")
        assert "fresh" in row.inner_text() and "←" in row.inner_text()

        page.click("#pause")
        expect(page.locator("#live-state")).to_have_text("paused")
        commit(db, [(3 * SECOND, "out", chunk("fresh", "while paused"))])
        watcher.locator("#rows tr", has_text="while paused").wait_for(timeout=3000)
        # A look later (the watcher has seen one more), the paused page still has none.
        commit(db, [(3 * SECOND, "out", chunk("fresh", "a look later"))])
        watcher.locator("#rows tr", has_text="a look later").wait_for(timeout=3000)
        assert rows_of(page, "while paused") == 0
        page.click("#pause")  # resume: from the last frame shown, none lost
        page.locator("#rows tr", has_text="a look later").wait_for(timeout=3000)
        assert rows_of(page, "while paused") == 1
        assert rows_of(page, "a look later") == 1 and rows_of(page, "hello live") == 1

        page.fill("input[name=session]", "only-me")
        page.fill("input[name=type]", "stream_chunk")
        page.click("button[type=submit]")
        page.wait_for_url("**/live?session=only-me&type=stream_chunk")
        expect(page.locator("#live-state")).to_have_text("live")
        commit(
            db,
            [
                (4 * SECOND, "in", chunk("other", "not mine")),
                (4 * SECOND, "in", session_frame("only-me", "running", "o", "status")),
                (4 * SECOND, "in", chunk("only-me", "mine")),
            ],
        )
        page.locator("#rows tr", has_text="mine").wait_for(timeout=3000)
        watcher.locator("#rows tr", has_text="not mine").wait_for(timeout=3000)
        texts = page.locator("#rows tr").all_inner_texts()
        assert len(texts) == 1 and "only-me" in texts[0] and "stream_chunk" in texts[0]
        assert page.evaluate("window.__ran") == []


def test_a_reader_scrolled_up_stays_put_and_rows_stay_bounded(
    tmp_path: Path, browser: Browser
) -> None:
    db = tmp_path / "r.db"
    commit(db, [(SECOND, "in", chunk("s", "first"))])
    with served(db) as url:
        page = open_live(browser, url)
        commit(db, [(2 * SECOND, "in", chunk("s", f"row {i}")) for i in range(60)])
        page.locator("#rows tr", has_text="row 59").wait_for(timeout=3000)
        at_bottom = "(() => { const f = document.getElementById('feed');"
        at_bottom += " return f.scrollHeight - f.scrollTop - f.clientHeight < 4; })()"
        assert page.evaluate(at_bottom)  # it followed the new rows
        page.evaluate("document.getElementById('feed').scrollTop = 200")
        shown = page.evaluate(
            "(() => { const f = document.getElementById('feed');"
            " return [f.scrollTop, document.elementFromPoint("
            "f.getBoundingClientRect().left + 20, f.getBoundingClientRect().top + 60).textContent]; })()"
        )
        commit(db, [(3 * SECOND, "in", chunk("s", f"more {i}")) for i in range(25)])
        page.locator("#new-rows", has_text="25 new").wait_for(timeout=3000)
        now = page.evaluate(
            "(() => { const f = document.getElementById('feed');"
            " return [f.scrollTop, document.elementFromPoint("
            "f.getBoundingClientRect().left + 20, f.getBoundingClientRect().top + 60).textContent]; })()"
        )
        assert now == shown
        page.click("#new-rows")
        assert page.evaluate(at_bottom) and page.locator("#new-rows").is_hidden()

        commit(db, [(4 * SECOND, "in", chunk("s", f"flood {i}")) for i in range(600)])
        page.locator("#rows tr", has_text="flood 599").wait_for(timeout=10_000)
        assert page.locator("#rows tr").count() == 500 and page.evaluate(at_bottom)


def test_hostile_frames_run_nothing_on_the_frames_pages(tmp_path: Path, browser: Browser) -> None:
    db = tmp_path / "r.db"

    def hostile(at: int) -> list[tuple[int, str, bytes]]:
        script = []
        for i, text in enumerate(CANARY):
            script.append((at + i, "in", session_frame(text, "running", text, text)))
            said = {"type": text, "data": {"sessionId": text, "chunk": text}}
            script.append((at + i, "out", json.dumps(said).encode()))
            script.append((at + i, "in", text.encode()))
        return script

    commit(db, hostile(SECOND))
    with served(db) as url:
        page = open_live(browser, url, "?last=50")
        commit(db, hostile(100 * SECOND))  # some arrive live
        page.locator("#rows tr", has_text=CANARY[-1]).nth(5).wait_for(timeout=3000)
        shown = "\n".join(page.locator("#rows tr").all_inner_texts())
        assert CANARY[0] in shown and CANARY[1] in shown
        hrefs = page.eval_on_selector_all(
            "#rows a", "links => links.map(a => a.getAttribute('href'))"
        )
        assert hrefs and all(h.startswith(("/frames/", "/sessions/")) for h in hrefs)
        pages = [
            "/frames",
            "/frames?type=" + quote(CANARY[1]),
            "/frames/1",
            "/frames/2",
            "/frames/3",
        ]
        pages += ["/frames?session=" + quote(CANARY[0])]
        for path in pages:
            page.goto(url + path)
            assert get(url + path)[0] == 200, path
            text = page.locator("main").inner_text()
            assert "window.canary=1" in text, path
            hrefs = page.eval_on_selector_all(
                "a", "links => links.map(a => a.getAttribute('href'))"
            )
            assert not [h for h in hrefs if "javascript:" in h.lower()], path
        assert page.evaluate("window.__ran") == []
