"""The busiest session's replay page in the system's Chromium (Playwright, as the tests
launch it): the time from ``goto`` to its first streamed text on the page, and the JS
heap the page holds once it has played on for ``PLAY_S`` (after a garbage collection,
through CDP), and its renderer process's PSS beside it. The page is asked to start at that text's second (``t``) at ``SPEED``,
so the time is the page's, not the session's pacing. A tree whose console has no
replay page yet (404) is said, not failed: its targets are left out."""

from __future__ import annotations

import os
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import quote

import harness as h
from web_common import Served, console, fetch
from web_memory import own_pss_kib

TARGET_START_S = 1.0
TARGET_HEAP_MB = 200.0
SPEED = 16
PLAY_S = 5.0
MIB = 1024 * 1024
# The session's first chunks and when they came, beside its first frame's time.
CHUNKS = (
    "SELECT received_at_us, json_extract(payload, '$.data.chunk') FROM frames"
    " WHERE session_id = ? AND type = 'stream_chunk' ORDER BY id LIMIT 200"
)
FIRST = "SELECT min(received_at_us) FROM frames WHERE session_id = ?"


def first_text(served: Served) -> tuple[str, int]:
    """A first line of a chunk (12 characters or more, to be found on the page and
    nowhere else) and its second in the session, counted from the first frame."""
    with closing(h.ro_connect(served.path)) as con:
        start = con.execute(FIRST, (served.busiest,)).fetchone()[0]
        for at_us, chunk in con.execute(CHUNKS, (served.busiest,)):
            line = str(chunk or "").strip().split("\n")[0].strip()
            if len(line) >= 12:
                return line[:40], (at_us - start) // 1_000_000
    raise h.BenchError("the busiest session has no chunk of 12 characters")


def measure(served: Served, root: Path) -> dict[str, Any]:
    path = "/sessions/" + quote(served.busiest, safe="") + "/replay"
    with console(served.path, root) as (_, base):
        if (status := fetch(base, path)[1]) == 404:
            return {"skipped": "no /sessions/{id}/replay on this tree (branch web-replay)"}
        if status != 200:
            raise h.BenchError(f"{path} answered {status}")
        text, second = first_text(served)
        return in_chromium(f"{base}{path}?speed={SPEED}&t={second}", text) | {"t": second}


def in_chromium(url: str, text: str) -> dict[str, Any]:
    from playwright.sync_api import Error, sync_playwright

    from tests.web_console import CHROMIUM

    if not Path(CHROMIUM).exists():
        raise h.BenchError("no chromium: `apt-get install -y chromium` (.ci/run does)")
    with sync_playwright() as p:
        # As root (CI), Chromium refuses to start without --no-sandbox.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            t0 = time.perf_counter()
            page.goto(url, wait_until="commit")
            page.wait_for_function(
                "t => document.body !== null && document.body.innerText.includes(t)",
                arg=text,
                timeout=30_000,
            )
            first = time.perf_counter() - t0
            page.wait_for_timeout(PLAY_S * 1000)  # it plays on: what it holds meanwhile
            cdp.send("HeapProfiler.collectGarbage")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            renderer = renderer_pss_kib() / 1024
        except Error as exc:
            raise h.BenchError(f"the replay page in Chromium: {exc.message[:300]}") from None
        finally:
            browser.close()
    return {
        "url": url,
        "first_cue_s": first,
        "heap_mb": metrics["JSHeapUsedSize"] / MIB,
        "heap_total_mb": metrics["JSHeapTotalSize"] / MIB,
        "dom_nodes": int(metrics["Nodes"]),
        "renderer_pss_mb": renderer,
    }


def renderer_pss_kib() -> int:
    """The PSS of the page's renderer: the largest of Chromium's renderer processes
    under this one (a spare one may be waiting beside it)."""
    import psutil

    found = [0]
    for proc in psutil.Process().children(recursive=True):
        try:
            if "--type=renderer" in proc.cmdline():
                found.append(own_pss_kib(proc.pid))
        except (psutil.Error, OSError):
            continue  # gone meanwhile
    return max(found)


def headline(replay: dict[str, Any]) -> dict[str, str]:
    if "skipped" in replay:
        return {"replay": f"skipped: {replay['skipped']}"}
    return {
        "replay": (
            f"first text {replay['first_cue_s'] * 1e3:.0f} ms; JS heap {replay['heap_mb']:.1f} MB"
            f" used ({replay['heap_total_mb']:.1f} allocated), {replay['dom_nodes']:,} DOM nodes,"
            f" renderer PSS {replay['renderer_pss_mb']:.0f} MB"
            f" after {PLAY_S:.0f} s at {SPEED}x"
        )
    }


def targets(replay: dict[str, Any]) -> dict[str, bool]:
    if "skipped" in replay:
        return {}
    return {
        f"replay_start_lt_{TARGET_START_S:.0f}s": replay["first_cue_s"] < TARGET_START_S,
        f"replay_heap_lt_{TARGET_HEAP_MB:.0f}MB": replay["heap_mb"] < TARGET_HEAP_MB,
    }
