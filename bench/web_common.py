"""What the web benchmark's parts share: the HTTP request they time (:func:`fetch`), and
the database it serves: 1 000 000 frames in 4 096 sessions, one of
them the busiest (100 000 frames, the replay's session), the rest as
``bench/query.py`` spreads them; built by ``recorder.simulator.database.build`` once
and kept under the work directory until the writer's code changes (query.py's rule)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import harness as h
from query import QUERY_SIDE, SESSION_MINUTES, TASKS, WRITER_SOURCES

SERVING = re.compile(r"web console on (http://127\.0\.0\.1:\d+)/")
BUILD_VERSION = 1  # bump when the database built changes
DAYS_PER_10K_SESSIONS = 30  # query.py's density: about 7 sessions at once
BUSIEST_MINUTES = 180.0
BUSIEST_TASKS = 200


@dataclass(frozen=True)
class Served:
    """The built file, and the sessions measured on it: one of the spread (its
    middle: a typical session) and the busiest."""

    path: Path
    frames: int
    sessions: int
    typical: str
    busiest: str
    busiest_frames: int


def writer_digest(*parameters: object) -> str:
    """What decides the rows: the parameters and the writer's code (not the reads)."""
    code = hashlib.sha256(" ".join(map(str, (BUILD_VERSION, *parameters))).encode())
    for path in sorted(p for top in ("recorder", "alembic") for p in (h.REPO / top).rglob("*.py")):
        rel = path.relative_to(h.REPO).as_posix()
        if rel.startswith(WRITER_SOURCES) and not rel.startswith(QUERY_SIDE):
            code.update(rel.encode() + b"\0" + path.read_bytes())
    return code.hexdigest()


def database(
    workdir: Path, frames: int, sessions: int, busiest_frames: int, rebuild: bool
) -> Served:
    """The database under ``workdir``: built unless one of the same parameters and
    writer code is there (``rebuild``: built again)."""
    from recorder.simulator.database import EPOCH_US, SessionPlan, build, spread
    from recorder.simulator.recording import DAY_US, PROXY_OWN

    if sessions < 2 or busiest_frames >= frames // 2:
        raise h.BenchError("need 2 sessions or more, the busiest under half the frames")
    days = -(-sessions * DAYS_PER_10K_SESSIONS // 10_000)
    digest = writer_digest(frames, sessions, busiest_frames, days)
    db, stamp = workdir / f"web-{frames}.db", workdir / f"web-{frames}.json"
    if not rebuild and db.exists() and stamp.exists():
        known = json.loads(stamp.read_text())
        if known.get("digest") == digest:
            return Served(db, frames, sessions, known["typical"], known["busiest"], busiest_frames)
    print(f"building {db} ...", file=sys.stderr, flush=True)
    rest = frames - busiest_frames - PROXY_OWN
    plans = spread(rest, sessions - 1, days, SESSION_MINUTES, tasks=TASKS)
    middle = EPOCH_US + days * DAY_US // 2
    busiest = SessionPlan(busiest_frames, middle, BUSIEST_MINUTES, tasks=BUSIEST_TASKS)
    tmp = db.with_name(db.name + ".building")
    for p in (db, stamp, tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    try:
        built = build(tmp, [*plans, busiest])
    except ValueError as exc:  # the sizes do not fit: say which
        raise h.BenchError(f"cannot build {frames:,} frames: {exc}") from None
    if built.frames != frames or len(built.sessions) != sessions:
        raise h.BenchError(f"built {built.frames} frames and {len(built.sessions)} sessions")
    os.replace(tmp, db)
    typical, busiest_id = built.sessions[(sessions - 1) // 2], built.sessions[-1]
    stamp.write_text(json.dumps({"digest": digest, "typical": typical, "busiest": busiest_id}))
    print(f"built in {built.seconds:.0f} s", file=sys.stderr, flush=True)
    return Served(db, frames, sessions, typical, busiest_id, busiest_frames)


def fetch(base: str, path: str) -> tuple[float, int, str]:
    """GET over a new connection: seconds to the body's last byte, status, body."""
    host, port = base.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return time.perf_counter() - t0, response.status, body.decode(errors="replace")


@contextmanager
def console(db: Path, workdir: Path) -> Iterator[tuple[h.Child, str]]:
    """``recorder web`` over ``db`` on 127.0.0.1 port 0: the child and its URL."""
    argv = [sys.executable, "-m", "recorder", "web", "--database", str(db)]
    web = h.Child("web", [*argv, "--listen", "127.0.0.1:0"], workdir, die_with_parent=True)
    try:
        yield web, h.wait_for_log(web, SERVING, 30).group(1)
    finally:
        web.stop()
