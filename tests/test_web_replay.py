"""The replay in the browser (`/sessions/{id}/replay`) and what its player reads:
pages of cues after a cursor whose times go on as one pass of the replay's timeline,
markers and checkpoints, search; in Chromium, the text played in order at the asked
speed, seeking by marker, key and search, a running session followed, and a hostile
recording shown as text, running nothing.

Real parts: recordings written by the writer's own code, the real `recorder web` as a
subprocess, real HTTP requests, the system's Chromium through Playwright."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from recorder.web.render import session_href
from tests.cleanup_scripts import SECOND, chunk, status
from tests.replay_recordings import (
    MS,
    T0,
    error,
    record_links,
    talk,
    task_failed,
    tool,
    tool_failed,
    whole_pass,
)
from tests.web_console import CSP, HOSTILE, chromium, get, served

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# The page's clock each time the replayed text changed, and the text then: kept by an
# init script (injected by the browser's protocol: the page's CSP does not apply).
WATCH = """
window.__seen = [];
new MutationObserver(() => {
  const screen = document.getElementById("screen");
  if (screen) window.__seen.push([performance.now(), screen.textContent]);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def api(url: str, sid: str, what: str, query: str = "") -> Any:
    code, headers, body = get(f"{url}/api{session_href(sid, what)}{query}")
    assert code == 200 and headers["Content-Type"] == "application/json", body
    return json.loads(body)


def all_pages(url: str, sid: str, query: str = "") -> tuple[list[Any], int, dict[str, Any]]:
    """Every cue from the start (or ``query``'s cursor), page by page: the cues as
    (t, kind, text), how many pages, the last page."""
    cues: list[Any] = []
    pages = 0
    while True:
        page = api(url, sid, "replay", query)
        pages += 1
        cues += [(c["t"], c["kind"], c["text"]) for c in page["cues"]]
        if not page["more"]:
            return cues, pages, page
        query = "?cursor=" + page["cursor"]


def gapped(sid: str) -> list[tuple[int, int | None, Any]]:
    """``sid`` on two link connections with 40 s unrecorded between them: 2400 words
    and 24 tool calls before, 600 words after, a search target split over three chunks."""
    first = talk(sid, 2400)[:-1]  # not completed yet
    later = T0 + 60 * SECOND
    second = [
        (later + k * MS, "in", chunk(sid, text))
        for k, text in enumerate(["HaY", "sta", "ck! ", *(f"v{k:04d} " for k in range(600))])
    ]
    second.append((later + 700 * MS, "in", status(sid, "completed")))
    return [(1, T0 + 20 * SECOND, first), (later - SECOND, None, second)]


def test_pages_go_on_as_one_pass_with_markers_search_and_bad_cursors(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    record_links(f"sqlite:///{db}", gapped("s/1"))
    expected = whole_pass(f"sqlite:///{db}", "s/1")
    with served(db) as url:
        cues, pages, last = all_pages(url, "s/1")
        # Pages of a few hundred cues, their times one pass of the timeline, exactly.
        assert pages >= 4 and cues == [tuple(c) for c in json.loads(json.dumps(expected))]
        assert last["done"] and last["ended"] and not last["more"]
        assert [k for _, k, _ in cues].count("gap") == 1
        gap_t = next(t for t, k, _ in cues if k == "gap")
        assert gap_t == pytest.approx(20.0, abs=0.01)  # the first link's close
        # A seek to a time: every cue from it on, nothing before.
        page = api(url, "s/1", "replay", "?from=30")
        assert page["cues"][0]["text"] == "HaY" and page["cues"][0]["t"] >= 30
        assert (page["cues"][0]["t"], "", "HaY") == next(c for c in cues if c[0] >= 30)

        found = api(url, "s/1", "markers")
        kinds = [m["kind"] for m in found["markers"]]
        assert kinds.count("tool") == 24 and kinds.count("gap") == 1 and "status" in kinds
        assert found["total"] == len(found["markers"]) and found["ended"]
        assert found["duration"] == cues[-1][0]
        # Each marker's cursor plays from that marker.
        for marker in found["markers"][3:5] + found["markers"][-2:]:
            first = api(url, "s/1", "replay", "?cursor=" + marker["cursor"])["cues"][0]
            assert (first["t"], first["kind"], first["text"]) == (
                marker["t"],
                marker["kind"],
                marker["text"],
            )
        # A checkpoint and a time: the same cues as from the start.
        point = found["checkpoints"][1]
        assert point["t"] > 0
        query = f"?cursor={point['cursor']}&from={point['t'] + 0.1}"
        from_point = api(url, "s/1", "replay", query)["cues"]
        after = [c for c in cues if c[0] >= point["t"] + 0.1]
        assert [(c["t"], c["kind"], c["text"]) for c in from_point] == after[: len(from_point)]

        hits = api(url, "s/1", "search", "?q=haystack")
        hit = hits["matches"][0]
        assert hit["match"] == "HaYstack" and not hits["truncated"]
        assert hit["after"].startswith("! v0000 v0001") and hit["before"].endswith("\n")
        first = api(url, "s/1", "replay", "?cursor=" + hit["cursor"])["cues"][0]
        assert first["text"] == "HaY" and first["t"] == hit["t"]
        tools = api(url, "s/1", "search", "?q=%5Btool%5D+TOOL10")["matches"]
        assert [m["match"] for m in tools] == ["[tool] tool10"]  # tool1099's marker line
        many = api(url, "s/1", "search", "?q=w0")
        assert len(many["matches"]) == 100 and many["truncated"]

        replay = session_href("s/1", "replay")
        for bad in ("zz", "AAAA", "MTo5Ojk", "MTppbmY6MDowOjowOg", "%00", "x" * 300):
            code, _, said = get(f"{url}/api{replay}?cursor={bad}")
            assert code == 400 and said == '{"error":"cursor: not one of ours"}', (bad, said)
        for bad in ("-1", "nan", "inf", "x"):
            code, _, said = get(f"{url}/api{replay}?from={bad}")
            assert code == 400 and "from" in said
        assert get(f"{url}/api{session_href('s/1', 'search')}")[0] == 400
        assert get(f"{url}/api{session_href('s/1', 'search')}?q={'x' * 201}")[0] == 400
        assert get(f"{url}/api{session_href('nobody', 'replay')}")[0] == 404
        assert get(f"{url}/api{session_href('nobody', 'markers')}")[0] == 404
        for bad in ("speed=0", "speed=x", "t=-3", "idle=nan", "speed=5000"):
            code, headers, _ = get(f"{url}{replay}?{bad}")
            assert code == 400 and headers["Content-Security-Policy"] == CSP
        assert get(f"{url}{session_href('nobody', 'replay')}")[0] == 404


def test_pages_over_postgresql(pg_url: str) -> None:
    writer_url = pg_url.replace("postgresql://", "postgresql+asyncpg://")
    record_links(writer_url, gapped("pg-1"))
    expected = whole_pass(pg_url, "pg-1")
    with served(pg_url) as url:
        cues, pages, last = all_pages(url, "pg-1")
        assert pages >= 4 and last["done"]
        assert cues == [tuple(c) for c in json.loads(json.dumps(expected))]
        found = api(url, "pg-1", "markers")
        assert [m["kind"] for m in found["markers"]].count("tool") == 24
        hit = api(url, "pg-1", "search", "?q=HAYSTACK")["matches"]
        assert [m["match"] for m in hit] == ["HaYstack"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


def watched(browser: Browser) -> tuple[Page, list[str]]:
    page = browser.new_page()
    page.add_init_script(WATCH)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def first_seen(seen: list[tuple[float, str]], word: str) -> float:
    return next(at for at, text in seen if word in text) / 1000


def test_plays_in_order_at_speed_and_seeks(tmp_path: Path, browser: Browser) -> None:
    """Two seconds of recorded words at speed 4 take about half a second; a marker, a
    key and a search result each seek to their point."""
    db = tmp_path / "r.db"
    sid = "s 1"
    words = [(T0 + (k + 1) * 100 * MS, "in", chunk(sid, f"a{k:02d} ")) for k in range(21)]
    later = [
        (T0 + 2600 * MS, "in", tool(sid, "find_needle", {"in": "hay"})),
        (T0 + 2700 * MS, "in", chunk(sid, "after the tool. ")),
        *((T0 + (2800 + k) * MS, "in", chunk(sid, part)) for k, part in enumerate(["ne", "edle"])),
        (T0 + 3000 * MS, "in", status(sid, "completed")),
    ]
    record_links(
        f"sqlite:///{db}", [(1, None, [(T0, "in", status(sid, "running")), *words, *later])]
    )
    with served(db) as url:
        page, errors = watched(browser)
        page.goto(f"{url}{session_href(sid, 'replay')}?speed=4")
        page.locator("#state", has_text="end").wait_for(timeout=10_000)
        seen = page.evaluate("window.__seen")
        text = page.locator("#screen").inner_text()
        assert text.index("[status] running") < text.index("a00 a01 a02") < text.index("a20 ")
        assert text.index("a20") < text.index("[tool] find_needle") < text.index("after the tool")
        times = [first_seen(seen, f"a{k:02d}") for k in range(21)]
        assert times == sorted(times)
        took = times[-1] - times[0]
        assert 0.3 < took < 1.6, took  # 2 s recorded at speed 4: 0.5 s (1: 2 s)
        assert 0.12 < times[10] - times[0] < 1.0
        assert "speed=4" in page.url

        marker = page.locator("#markers button", has_text="find_needle")
        marker.click()
        screen = page.locator("#screen")
        screen.locator(".marker").first.wait_for()
        page.locator("#state", has_text="end").wait_for(timeout=10_000)
        assert screen.inner_text().startswith("[tool] find_needle")
        assert "a00" not in screen.inner_text() and "after the tool" in screen.inner_text()
        assert float(page.locator("#clock").inner_text()) >= 2.6

        # Slowly now, so that each key's effect stays on screen a while.
        page.fill("#speed", "0.05")
        page.keyboard.press("Enter")
        screen.focus()
        page.keyboard.press("[")  # from the end: the tool call's marker
        page.locator("#clock", has_text="2.6").wait_for(timeout=5_000)
        page.keyboard.press("[")  # the running status, at the start
        page.locator("#screen", has_text="[status] running").wait_for(timeout=5_000)
        assert screen.inner_text() == "[status] running"  # the next cue is 2 s away
        page.keyboard.press("]")
        page.locator("#screen", has_text="find_needle").wait_for(timeout=5_000)
        page.keyboard.press(" ")  # paused: "." plays the next cue at once
        assert page.locator("#play").inner_text() == "play"
        page.keyboard.press(".")
        page.locator("#screen", has_text="after the tool").wait_for(timeout=5_000)
        assert screen.inner_text() == '[tool] find_needle {"in": "hay"}\nafter the tool. '
        assert "speed=0.05" in page.url and "t=2.7" in page.url

        page.fill("#q", "NEEDLE")
        page.keyboard.press("Enter")
        results = page.locator("#matches button")
        results.first.wait_for()
        assert results.count() == 2  # the tool's name, and the text split in two chunks
        results.nth(1).click()
        page.locator("#screen", has_text="needle").wait_for(timeout=10_000)
        assert (
            screen.inner_text().startswith("needle") and "after the tool" not in screen.inner_text()
        )
        page.keyboard.press(" ")
        assert page.locator("#play").inner_text() == "play"
        assert errors == []


def test_follows_a_running_session(tmp_path: Path, browser: Browser) -> None:
    db = tmp_path / "r.db"
    sid = "live-1"
    record_links(f"sqlite:///{db}", [(1, None, [(T0, "in", status(sid, "running"))])])
    with served(db) as url:
        page, errors = watched(browser)
        page.goto(f"{url}{session_href(sid, 'replay')}")
        page.locator("#state", has_text="following").wait_for(timeout=10_000)
        record_links(
            f"sqlite:///{db}", [(1, None, [(T0 + SECOND, "in", chunk(sid, "late words"))])]
        )
        page.locator("#screen", has_text="late words").wait_for(timeout=5_000)
        assert errors == []


CANARY = [
    "<img src=x onerror=\"window.canary='img'\">",
    "<script>window.canary='script'</script>",
    "javascript:window.canary='url'",
    *HOSTILE,
]


def test_hostile_recording_shows_as_text_and_runs_nothing(tmp_path: Path, browser: Browser) -> None:
    db = tmp_path / "r.db"
    sid = CANARY[0]
    script = [(T0, "in", status(sid, "running"))]
    for k, payload in enumerate(CANARY):
        at = T0 + (k + 1) * 10 * MS
        script += [
            (at + 1, "in", chunk(sid, payload + " ")),
            (at + 2, "in", tool(sid, payload, {"path": payload})),
            (at + 3, "in", tool_failed(sid, payload, payload)),
            (at + 4, "in", task_failed(sid, payload)),
            (at + 5, "in", error(sid, payload)),
        ]
    script.append((T0 + SECOND, "in", status(sid, "completed")))
    record_links(f"sqlite:///{db}", [(1, None, script)])
    with served(db) as url:
        code, headers, html = get(f"{url}{session_href(sid, 'replay')}")
        assert code == 200 and headers["Content-Security-Policy"] == CSP
        assert "<img src=x" not in html and "&lt;img src=x onerror=" in html
        assert f'data-api="/api/sessions/{quote(sid, safe="")}"' in html
        page, errors = watched(browser)
        page.goto(f"{url}{session_href(sid, 'replay')}?speed=20")
        page.locator("#state", has_text="end").wait_for(timeout=10_000)
        page.locator("#markers li").first.wait_for()
        page.fill("#q", "<script>")
        page.keyboard.press("Enter")
        page.locator("#matches button").first.wait_for()
        text = page.locator("#screen").inner_text()
        for payload in CANARY:
            assert payload + " " in text  # the chunk, as it came
            assert f"[tool] {payload}" in text
        assert page.locator("#screen img, #screen script, #markers img, #matches img").count() == 0
        assert "onerror" in page.locator("#markers").inner_text()
        assert page.evaluate("() => window.canary") is None
        assert errors == []
