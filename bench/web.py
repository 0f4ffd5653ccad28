"""Web console benchmark: how fast does ``recorder web`` serve its pages on a big
database, and what does the console add to the idle service's memory?

Latency: ``recorder web`` as a subprocess on 127.0.0.1:0 over a database of 1 000 000
frames in 4 096 sessions (``web_common``), each page requested through real HTTP (a
new connection each, the body read to the end), ``--repeat`` times after a first
request; the baseline, in the same run and alternating with it, is stdlib ``sqlite3``
in this process running the minimal query of the same answer (the 50 newest sessions;
a session's row and its frames counted by type). Memory (``web_memory``): ``recorder
run`` idle without and with ``[web] listen``, PSS from /proc/PID/smaps_rollup; and
``recorder web`` alone. Replay in Chromium (``web_replay_page``). Method, numbers,
targets: docs/BENCHMARKS.md, "Web console".

    python bench/web.py                   # 1 000 000 frames, 4 096 sessions
    python bench/web.py --frames 100000 --sessions 400 --busiest 10000 --json

Exits 1 if a page answered wrongly, 2 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import harness as h
import web_memory
import web_replay_page
from web_common import Served, console, database, fetch

TARGET_PAGE_S = 0.3
NEWEST = "SELECT * FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 51"
SESSION = "SELECT * FROM sessions WHERE id = ?"
BY_TYPE = "SELECT type, count(*) FROM frames WHERE session_id = ? GROUP BY type"


class WrongAnswer(Exception):
    """A page answered something other than the page asked for."""


@dataclass
class Page:
    """One URL measured, the text its answer must hold, and its baseline's query."""

    name: str
    path: str
    expect: str
    baseline: Callable[[sqlite3.Connection], int]
    ours_s: list[float] = field(default_factory=list)
    base_s: list[float] = field(default_factory=list)
    first_s: float = float("nan")
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = asdict(self) | {"median_s": h.median(self.ours_s), "max_s": max(self.ours_s)}
        out |= {"base_median_s": h.median(self.base_s), "base_max_s": max(self.base_s)}
        del out["baseline"]
        return out


def newest(con: sqlite3.Connection) -> int:
    return len(con.execute(NEWEST).fetchall())


def by_type(sid: str) -> Callable[[sqlite3.Connection], int]:
    def query(con: sqlite3.Connection) -> int:
        con.execute(SESSION, (sid,)).fetchall()
        return sum(n for _, n in con.execute(BY_TYPE, (sid,)).fetchall())

    return query


def pages(served: Served) -> list[Page]:
    """The pages of the target: the list (HTML and JSON), and a typical and the busiest
    session's story (HTML and JSON)."""
    with closing(h.ro_connect(served.path)) as con:
        top = str(con.execute(NEWEST).fetchone()[0])
    out = [Page("/", "/", top, newest), Page("/api/sessions", "/api/sessions", top, newest)]
    for kind, sid in (("typical", served.typical), ("busiest", served.busiest)):
        for prefix in ("/sessions/", "/api/sessions/"):
            name = f"{prefix}{{{kind}}}"
            out.append(Page(name, prefix + quote(sid, safe=""), sid, by_type(sid)))
    return out


def timed_base(db: Path, query: Callable[[sqlite3.Connection], int]) -> float:
    """The baseline as the console reads: a read-only connection opened, one answer, closed."""
    t0 = time.perf_counter()
    with closing(h.ro_connect(db)) as con:
        if query(con) <= 0:
            raise WrongAnswer("the baseline found nothing")
    return time.perf_counter() - t0


def measure(page: Page, base: str, db: Path, repeat: int) -> None:
    def ours() -> float:
        seconds, status, body = fetch(base, page.path)
        if status != 200 or page.expect not in body:
            raise WrongAnswer(f"{page.name}: {status}, {len(body)} bytes: {body[:120]!r}")
        page.bytes = len(body.encode())
        return seconds

    try:
        page.first_s = ours()
        timed_base(db, page.baseline)  # its first run too, not measured
        for _ in range(repeat):
            page.ours_s.append(ours())
            page.base_s.append(timed_base(db, page.baseline))
    except WrongAnswer as exc:
        page.problems.append(str(exc))


def latency(served: Served, args: argparse.Namespace, root: Path) -> tuple[list[Page], float]:
    """Every page measured on one ``recorder web``; then its PSS once idle."""
    with console(served.path, root) as (web, base):
        measured = pages(served)
        for page in measured:
            print(f"  {page.name} ...", file=sys.stderr, flush=True)
            measure(page, base, served.path, args.repeat)
        web.check_alive()
        time.sleep(args.idle)
        pss = web_memory.pss_kib(web.pid) / 1024
    return measured, pss


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.0095 else f"{seconds * 1e3:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = p.add_argument
    add("--frames", type=int, default=1_000_000, help="frames in the database")
    add("--sessions", type=int, default=4096, help="sessions in the database")
    add("--busiest", type=int, default=100_000, help="frames of its busiest session")
    add("--repeat", type=int, default=9, help="requests of each page (median, max)")
    add("--memory-repeat", type=int, default=3, help="idle services of each kind")
    add("--idle", type=float, default=3.0, help="seconds idle before PSS is read")
    add("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recorder-bench-web")
    add("--rebuild", action="store_true", help="build the database again")
    h.common_options(p)
    args = p.parse_args()
    if min(args.frames, args.sessions, args.busiest, args.repeat, args.memory_repeat) < 1:
        p.error("--frames, --sessions, --busiest and the repeats must be at least 1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    served = database(args.workdir, args.frames, args.sessions, args.busiest, args.rebuild)
    with h.scratch_dir("bench-web-", args.keep) as root:
        measured, web_pss = latency(served, args, root)
        memory = web_memory.measure(root, args.memory_repeat, args.idle, args.json)
        replay = web_replay_page.measure(served, root)
    headline, targets = {}, {}
    for page in measured:
        for problem in page.problems:
            print(f"FAILED {problem}", file=sys.stderr)
        if page.problems:
            headline[page.name] = "FAILED"
            targets[f"{page.name}<0.3s"] = False
            continue
        mid, top = h.median(page.ours_s), max(page.ours_s)
        headline[page.name] = (
            f"median {ms(mid)} ms, max {ms(top)} (base {ms(h.median(page.base_s))},"
            f" {ms(max(page.base_s))}); first {ms(page.first_s)}"
        )
        targets[f"{page.name}<0.3s"] = mid < TARGET_PAGE_S
    headline |= web_memory.headline(memory) | {"recorder web PSS": f"{web_pss:.1f} MB"}
    targets |= web_memory.targets(memory)
    headline |= web_replay_page.headline(replay)
    targets |= web_replay_page.targets(replay)
    summary = {
        "database": {k: str(v) for k, v in asdict(served).items()},
        "pages": [page.summary() for page in measured],
        "recorder_web_pss_mb": web_pss,
        "memory": memory,
        "replay": replay,
    }
    h.finish("web", summary, headline, targets, args)
    return 1 if any(page.problems for page in measured) else 0


if __name__ == "__main__":
    raise SystemExit(h.run(main))
