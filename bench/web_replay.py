"""Web replay benchmark: how soon does a long session's replay page start playing in
a browser, and how much does the page hold once it has played it all?

``recorder web`` over a database holding S (``--frames`` frames, built as
bench/replay.py builds it) and the system's Chromium through Playwright. Per run, a
fresh page: the seconds from ``goto`` to the first replayed text on screen (as the
test harness sees it, and as the page's own clock has it since navigation began),
then the whole session played at ``--speed`` and the page's JS heap and DOM nodes
(CDP ``Performance.getMetrics``), the largest seen while it played. Against, in the
same run: ``goto`` of a static file of the console (what the browser and server cost
for any page). Medians of ``--repeat`` after a warm-up; the heap: the largest.

    python bench/web_replay.py                   # 100 000 frames
    python bench/web_replay.py --frames 20000 --json
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import REPO, BenchError, common_options, finish, scratch_dir

# The page's clock when the first replayed text is on screen, kept where the
# benchmark can read it (an init script: CDP-injected, so the CSP allows it).
WATCH = """
new MutationObserver((_, seen) => {
  const screen = document.getElementById("screen");
  if (screen && screen.textContent.length) {
    window.__firstText = performance.now();
    seen.disconnect();
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@contextmanager
def console(db: Path) -> Iterator[str]:
    """`recorder web` over ``db`` on a free port: its URL."""
    command = [sys.executable, "-m", "recorder", "web", "--database", str(db)]
    proc = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://\S+/", line)
        if not found:
            raise BenchError(f"recorder web did not start: {line}")
        yield found.group(0).rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def largest_session(db: Path) -> str:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        sql = "select id from sessions order by frame_count desc, id limit 1"
        return str(con.execute(sql).fetchone()[0])


def metrics(page: Any) -> dict[str, float]:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    found = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    cdp.detach()
    return found


def one_run(browser: Any, url: str, sid: str, speed: float) -> dict[str, float]:
    """A fresh page: to its first text, then played to the end, its heap at its largest."""
    page = browser.new_page()
    page.add_init_script(WATCH)
    t0 = time.monotonic()
    page.goto(f"{url}/sessions/{quote(sid, safe='')}/replay?speed={speed:g}")
    page.locator("#screen span").first.wait_for(timeout=30_000)
    first = time.monotonic() - t0
    in_page = float(page.evaluate("window.__firstText")) / 1000
    heap = nodes = 0.0
    state = page.locator("#state")
    while state.inner_text() != "end":
        if time.monotonic() - t0 > 600:
            raise BenchError("the replay did not end in 10 minutes")
        found = metrics(page)
        heap, nodes = max(heap, found["JSHeapUsedSize"]), max(nodes, found["Nodes"])
        page.wait_for_timeout(500)
    found = metrics(page)
    heap, nodes = max(heap, found["JSHeapUsedSize"]), max(nodes, found["Nodes"])
    played = time.monotonic() - t0
    page.close()
    return dict(
        first_s=first, first_in_page_s=in_page, end_s=played, heap_mb=heap / 1e6, nodes=nodes
    )


def baseline_run(browser: Any, url: str) -> dict[str, float]:
    page = browser.new_page()
    t0 = time.monotonic()
    page.goto(url + "/static/console.css")
    loaded = time.monotonic() - t0
    page.close()
    return dict(first_s=loaded)


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--frames", type=int, default=100_000, help="frames in the replayed session")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--speed", type=float, default=1000.0, help="the replay's speed")
    p.add_argument("--db", type=Path, help="build the database here, or reuse it if it exists")
    common_options(p)
    args = p.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with scratch_dir("web-replay-bench-", args.keep) as root:
        db = args.db or root / "recorder.db"
        if not db.exists():
            build = [sys.executable, str(REPO / "bench" / "replay.py"), "--build"]
            subprocess.run([*build, str(db), str(args.frames)], check=True)
        sid = largest_session(db)
        with console(db) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            baseline_run(browser, url)
            one_run(browser, url, sid, args.speed)  # warm-up
            base = [baseline_run(browser, url) for _ in range(args.repeat)]
            runs = [one_run(browser, url, sid, args.speed) for _ in range(args.repeat)]
            browser.close()
    result = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result["heap_mb"] = max(r["heap_mb"] for r in runs)
    result["nodes"] = max(r["nodes"] for r in runs)
    baseline = statistics.median(r["first_s"] for r in base)
    headline = {
        "first text (goto to screen)": f"{result['first_s']:.3f} s "
        f"(page clock {result['first_in_page_s']:.3f} s; a static file: {baseline:.3f} s)",
        "played to the end": f"{result['end_s']:.1f} s at speed {args.speed:g}",
        "largest JS heap": f"{result['heap_mb']:.1f} MB, {result['nodes']:.0f} DOM nodes",
    }
    targets = {
        "first_text_lt_1s": result["first_s"] < 1.0,
        "heap_lt_200mb": result["heap_mb"] < 200,
    }
    summary = {
        "frames": args.frames,
        "speed": args.speed,
        "results": result,
        "baseline_s": baseline,
    }
    finish("web replay", summary, headline, targets, args)


if __name__ == "__main__":
    main()
