"""Query benchmark: how fast do the query commands answer on a big database, next to sqlite3?

Method:

1. **Template, by the real writer.** ``python -m recorder simulate --port 0 --seed 1
   --status-interval 0 --chunk-delay 0.05`` and ``python -m recorder run`` with a config
   pointing at it (``proxy.listen`` on a free port, a fresh SQLite file). A UI-like client
   (in this process, ``websockets``) connects through the recorder's proxy, sends
   ``spawn_session`` and, as soon as the session's first ``session_status_update``
   names it, ``--template-tasks`` ``execute_task`` requests with ``streamResponse``, all
   at once: the simulated session ends with its first task, so later requests would be
   refused. It waits for every ``task_completed``/``task_failed`` and for
   ``session_spawned``, closes, and the recorder is stopped with SIGTERM (it must exit 0
   and log ``recorder stopped``). The template thus holds what the recorder writes for
   one session: a link connection (its opening exchange and the session's status
   broadcasts) and a proxy connection (the requests, ``stream_*``, ``tool_call_*`` and
   ``task_*`` frames), with their ``sessions``, ``tasks`` and ``frame_days`` rows. The
   chunk delay is 0.05 s (not 0.001) so that the first task is still running when the
   requests arrive.
2. **Replication, by SQL.** ``recorder db upgrade`` creates the database (the real
   migrations), the frames table's secondary indexes are dropped, and one ``sqlite3``
   connection (``journal_mode=OFF`` and ``synchronous=OFF`` while building; the file is
   switched back to WAL, as the recorder leaves it, at the end) copies the template
   session N times: ``--sessions`` (default frames / 500) sessions over ``--days``
   (default: 30 days per 10 000 sessions, so 6 for 1 000 000 frames and 30 for
   5 000 000: the same recording, for longer), session k starting at an even step after
   2026-10-01T00:00Z. A session's frame times are the template's, stretched so that it
   lasts ``--session-minutes`` (30): about 7 sessions run at once, so a session's frames
   are interleaved with others' in the table, as in a real recording. Each copy gets a new session id of the same
   shape and length (``session_<ms>_<9 base36>``; its first task ``task_<ms>``), which
   ``replace()`` puts into the payloads, and its own proxy connection; the link is one
   connection per day (opened at 00:00 UTC with the template link's opening frames,
   closed as the template's was at the next midnight), and a session's status
   broadcasts go to the link of their day. ``monotonic_ns`` follows ``received_at_us``
   (one clock). Extra ``stream_chunk`` frames (copies of the template's chunks, 1 µs
   after the one copied) pad each session so that the total is exactly ``--frames``.
   Frames are inserted in time order (ids in recording order), ``seq`` numbered per
   connection in that order; ``sessions`` and ``tasks`` rows are the template's with the
   ids and times mapped the same way, ``frame_count`` including the padding;
   ``connections.frame_count`` and ``frame_days`` are recomputed from the frames at the
   end. The indexes are then recreated from the migrations' own SQL. Checked: the
   schema (``sqlite_master``) equals a freshly migrated database's, ``recorder db
   current`` says up to date, the frame count, ids in ``received_at_us`` order, ``seq``
   1..n per connection, the rollups against the frames. The database and its template
   are kept under ``--workdir`` and reused while the parameters, the migrations and the
   code that decides what is written (the writer's, the simulator's: ``WRITER_SOURCES``)
   are the same (``--rebuild`` forces both).
3. **Commands**, each a real process: the ``recorder`` console script of this
   interpreter's environment (``python -m recorder`` if it has none), stdout a pipe read
   to the end, stderr captured; wall time from before the process starts to after it
   exits. The environment is the caller's without ``RECORDER_*``, ``PYTHONUNBUFFERED``
   and ``PYTHONDONTWRITEBYTECODE``: as with an installed recorder, modules load from
   bytecode, kept under ``<workdir>/pycache`` (``PYTHONPYCACHEPREFIX``), not in the
   tree. S is the session in the middle of the database (about 500 frames)::

       frames --session S --limit 0 --format jsonl   show S   sessions   frames --last 100
       tasks --session S   connections   status   stats

   Each run must exit 0 and print what it should (the number of JSON lines and their
   ids and session for ``frames``, the session and its frame count for ``show``, the
   newest rows for the lists, the totals for ``status`` and ``stats``).
4. **Baseline**: ``python -c`` with the same interpreter: stdlib ``sqlite3`` with
   ``mode=ro`` runs the same SQL as the command (the statements of
   ``recorder/db/read.py``; where the command reads frames in pages,
   ``recorder/db/pages.py``, one statement for them all) and prints every row with
   ``repr``; it must print the expected number of rows. Overhead = ours - baseline.
5. For each command: one warm-up run of ours and of the baseline (which also writes
   their bytecode), one cold run of each, then ``--repeat`` (5) warm runs alternating
   ours and the baseline; **warm** is their median. **Cold**: before each cold run the
   page cache is emptied: as root, ``sync`` and ``echo 1 > /proc/sys/vm/drop_caches``
   (the whole cache: the interpreter and the libraries start from disk too); else
   ``posix_fadvise(DONTNEED)`` on the database files only. The share of the database
   file still cached (``mincore``) is reported; if more than 1 % is, the first run on a
   fresh copy of the file is timed instead (which may itself still be cached: the
   report says so).

Targets: ``frames --session``, ``show``, ``tasks --session`` and ``status`` under 0.3 s
warm, at every size measured (by default 1 000 000 frames over 2 000 sessions and
5 000 000 over 10 000: the same sessions, five times as many of them), and ``stats``
under 1 s warm.

Usage::

    python bench/query.py                        # 1 000 000 and 5 000 000 frames
    python bench/query.py --frames 5000000 --json
    python bench/query.py --workdir /var/tmp/qb --rebuild

Exits 1 if a command failed or printed the wrong thing, 2 if the benchmark itself failed
(building included), else 0; a missed target is printed, not an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    REPO,
    BenchError,
    Child,
    Deadline,
    drop_page_cache,
    free_port,
    log_outcome,
    poll_row,
    resident_fraction,
    ro_connect,
    targets_line,
    wait_for_log,
    yes,
)

from recorder.protocol.statuses import TERMINAL_STATUSES
from recorder.protocol.story import READ_TYPES

TARGET_SCOPED_S = 0.3
TARGET_STATS_S = 1.0
DEFAULT_SIZES = (1_000_000, 5_000_000)
FRAMES_PER_SESSION = 500
DEFAULT_DAYS = 30
DEFAULT_SESSION_MINUTES = 30.0
DEFAULT_TEMPLATE_TASKS = 27
SEED = 1
CHUNK_DELAY = 0.05
EPOCH_US = 1_790_812_800_000_000  # 2026-10-01T00:00:00Z
DAY_US = 86_400_000_000
# time.monotonic_ns() at EPOCH_US: about 35 days of uptime.
MONO0_NS = 3_000_000_000_000_000
# Bump when the database built changes: cached databases of another version are rebuilt.
BUILD_VERSION = 1
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")
STARTED = re.compile(r'"event": "recorder started"')
B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
TASK_TEXTS = (
    "Write unit tests for the memory manager",
    "Fix the reconnect backoff",
    "Review the diff of the session manager",
    "Update the README for the new CLI",
    "Investigate the flaky websocket test",
    "Add rate limiting to the API gateway",
)

TEMPLATE_CONFIG = """\
[daemon]
url = "ws://127.0.0.1:{port}"

[storage]
url = "sqlite:///{db}"
shutdown_timeout = 60.0

[proxy]
listen = "127.0.0.1:{proxy}"

[log]
level = "info"
format = "json"
"""


# --- running the CLI ---------------------------------------------------------------------


def cli_prefix() -> list[str]:
    """The ``recorder`` console script next to this interpreter, if it runs this
    interpreter; else ``python -m recorder``."""
    script = Path(sys.executable).parent / "recorder"
    try:
        first = script.read_text(errors="replace").splitlines()[0]
        if first.startswith("#!") and os.path.samefile(first[2:].strip(), sys.executable):
            return [str(script)]
    except (OSError, IndexError):
        pass
    return [sys.executable, "-m", "recorder"]


# Where the measured processes keep their bytecode (set by main()).
PYCACHE: list[Path] = []


def cli_env() -> dict[str, str]:
    """The caller's environment, minus anything that redirects the recorder,
    PYTHONUNBUFFERED (which would make every printed line a system call) and
    PYTHONDONTWRITEBYTECODE: an installed recorder has its bytecode, so the processes
    write theirs under the work directory (PYTHONPYCACHEPREFIX), not into the tree."""
    drop = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_") and k not in drop}
    if PYCACHE:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE[0])
    # A plain checkout: `python -m recorder` must find the package.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    return env


@dataclass
class Run:
    seconds: float
    code: int
    stdout: str
    stderr: str


def run_process(args: list[str], cwd: Path, timeout: float = 300.0) -> Run:
    """Start, read stdout and stderr to the end, wait; wall time around all of it."""
    env = cli_env()
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(args[:4])} ... took over {timeout:.0f} s") from exc
    seconds = time.perf_counter() - start
    return Run(
        seconds,
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def recorder_cli(args: list[str], cwd: Path) -> str:
    """A recorder command that must succeed (building); its stdout."""
    run = run_process([*cli_prefix(), *args], cwd)
    if run.code != 0:
        raise BenchError(f"recorder {' '.join(args)} exited {run.code}: {run.stderr[-1000:]}")
    return run.stdout


# --- 1. the template: one session recorded by the real writer ----------------------------


def js(obj: Any) -> str:
    """JSON as a browser's JSON.stringify writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


async def drive_ui(port: int, tasks: int, seconds: float) -> dict[str, Any]:
    """A UI through the proxy: spawn a session, ask for ``tasks`` more tasks at once,
    read until every task and the spawn are answered."""
    from websockets.asyncio.client import connect

    spawn = {
        "type": "spawn_session",
        "payload": {
            "orchestratorId": "vp_1",
            "task": {
                "type": "code",
                "description": "Implement feature X",
                "priority": "high",
                "status": "pending",
            },
            "sessionType": "claude-code",
            "memoryProfile": "default",
        },
    }
    sid: str | None = None
    sent = received = answered = refused = 0
    spawned = False
    async with asyncio.timeout(seconds):
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None, ping_interval=None) as ws:
            await ws.send(js(spawn))
            sent += 1
            while not (spawned and answered >= tasks):
                msg = json.loads(await ws.recv())
                received += 1
                kind = msg.get("type")
                if sid is None and kind == "session_status_update":
                    sid = str(msg["session"]["id"])
                    for i in range(tasks):
                        text = f"Task {i + 1}: {TASK_TEXTS[i % len(TASK_TEXTS)]}"
                        payload = {"sessionId": sid, "task": text, "streamResponse": True}
                        await ws.send(js({"type": "execute_task", "payload": payload}))
                        sent += 1
                elif kind in ("task_completed", "task_failed"):
                    answered += 1
                    refused += "is not running" in str(msg.get("error", ""))
                elif kind == "session_spawned":
                    spawned = True
    return {"session": sid, "sent": sent, "received": received, "refused": refused}


def make_template(path: Path, tasks: int, deadline: Deadline) -> dict[str, Any]:
    """Record one session with the real recorder into ``path`` (see the module doc)."""
    work = Path(tempfile.mkdtemp(prefix="template-", dir=path.parent))
    db = work / "template.db"
    py = sys.executable
    sim_args = [py, "-m", "recorder", "simulate", "--port", "0", "--seed", str(SEED)]
    sim_args += ["--status-interval", "0", "--chunk-delay", str(CHUNK_DELAY)]
    sim = Child("simulator", sim_args, work, die_with_parent=True)
    rec: Child | None = None
    try:
        port = int(wait_for_log(sim, LISTENING, deadline.left()).group(1))
        proxy = free_port()
        config = work / "config.toml"
        config.write_text(TEMPLATE_CONFIG.format(port=port, db=db, proxy=proxy))
        rec_args = [py, "-m", "recorder", "run", "--config", str(config)]
        rec = Child("recorder", rec_args, work, die_with_parent=True)
        wait_for_log(rec, STARTED, deadline.left())
        ui = asyncio.run(drive_ui(proxy, tasks, min(120.0, max(deadline.left(), 1.0))))
        # The proxy connection's close, and every frame of it, committed.
        total = ui["sent"] + ui["received"]
        until = time.monotonic() + 30
        while poll_row(
            db,
            "SELECT count(*) FROM connections WHERE role = 'proxy'"
            f" AND closed_at_us IS NOT NULL AND frame_count = {total}",
        ) != (1,):
            if time.monotonic() > until or not rec.alive():
                raise BenchError(f"the template's {total} proxy frames were not all recorded")
            time.sleep(0.1)
        code = rec.terminate(60)
        stopped, warnings = log_outcome(rec.log())
        if code != 0 or not stopped:
            raise BenchError(f"template recorder exited {code}, stopped={stopped}: {warnings}")
    finally:
        if rec is not None:
            rec.kill()
        sim.stop()
    if ui["refused"]:
        raise BenchError(
            f"{ui['refused']} template tasks were refused (the session had ended): "
            "use fewer --template-tasks"
        )
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", f"{path}{suffix}")
    # Fold the WAL in, so that the template is one file.
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return ui


@dataclass
class Template:
    path: Path
    link: dict[str, Any]
    proxy: dict[str, Any]
    session: dict[str, Any]
    tasks: list[dict[str, Any]]
    frames: list[dict[str, Any]]
    digest: str

    @property
    def sid(self) -> str:
        return str(self.session["id"])

    @property
    def first_task(self) -> str:
        return str(self.session["task_id"])

    def count(self, where: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for f in self.frames if where(f))


def load_template(path: Path) -> Template:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        conns = [dict(r) for r in con.execute("SELECT * FROM connections ORDER BY id")]
        sessions = [dict(r) for r in con.execute("SELECT * FROM sessions")]
        tasks = [dict(r) for r in con.execute("SELECT * FROM tasks ORDER BY id")]
        frames = [dict(r) for r in con.execute("SELECT * FROM frames ORDER BY id")]
    finally:
        con.close()
    links = [c for c in conns if c["role"] == "link"]
    proxies = [c for c in conns if c["role"] == "proxy"]
    if len(links) != 1 or len(proxies) != 1 or len(sessions) != 1:
        raise BenchError(
            f"template: {len(links)} link, {len(proxies)} proxy connections and "
            f"{len(sessions)} sessions; expected 1 each"
        )
    sid = sessions[0]["id"]
    if any(f["session_id"] not in (None, sid) for f in frames):
        raise BenchError("template: frames of another session")
    if sessions[0]["frame_count"] != sum(1 for f in frames if f["session_id"] == sid):
        raise BenchError("template: sessions.frame_count differs from its frames")
    if not re.fullmatch(r"session_\d{13}_[0-9a-z]{9}", sid) or not re.fullmatch(
        r"task_\d{13}", sessions[0]["task_id"] or ""
    ):
        raise BenchError(f"template: unexpected ids {sid}, {sessions[0]['task_id']}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return Template(path, links[0], proxies[0], sessions[0], tasks, frames, digest)


# --- 2. the database: the template replicated by SQL -------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a cached database was built from: it is rebuilt when any of it changes."""

    frames: int
    sessions: int
    days: int
    session_minutes: float
    template: str  # digest of the template file
    schema: str  # digest of a freshly migrated database's sqlite_master
    version: int = BUILD_VERSION


# What decides the rows a recording holds (the query side, which the benchmark
# measures, is left out: changing it must not cost a rebuild).
WRITER_SOURCES = (
    "alembic/",
    "recorder/capture/",
    "recorder/config.py",
    "recorder/db/",
    "recorder/pipeline/",
    "recorder/protocol/",
    "recorder/service/",
    "recorder/simulator/",
    "recorder/times.py",
)
QUERY_SIDE = ("recorder/db/read.py", "recorder/db/reader.py")


def writer_digest() -> str:
    """SHA-256 (12 hex digits) over the code that decides what a recording holds
    (:data:`WRITER_SOURCES`). A cached template recorded by other code is recorded again."""
    h = hashlib.sha256()
    for top in ("recorder", "alembic"):
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(WRITER_SOURCES) and not rel.startswith(QUERY_SIDE):
                h.update(rel.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def reference_schema(workdir: Path) -> list[tuple[str, str, str, str | None]]:
    """``sqlite_master`` of a database that ``recorder db upgrade`` just created."""
    path = workdir / "reference.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    recorder_cli(["db", "upgrade", "--database", str(path)], workdir)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return schema_of(con)
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def schema_of(con: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    return sorted(
        con.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name != 'sqlite_stat1'"
        ).fetchall()
    )


def digest(schema: list[tuple[str, str, str, str | None]]) -> str:
    return hashlib.sha256(repr(schema).encode()).hexdigest()[:12]


def session_ids(n: int) -> list[str]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    out = []
    for _ in range(n):
        suffix = "".join(rng.choice(B36) for _ in range(9))
        while suffix in seen:
            suffix = "".join(rng.choice(B36) for _ in range(9))
        seen.add(suffix)
        out.append(suffix)
    return out


def build_database(tmpl: Template, spec: Spec, path: Path, cwd: Path) -> dict[str, Any]:
    """Build ``path`` (see the module doc); returns what was built and how long it took."""
    began = time.monotonic()
    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name] = round(now - mark, 1)
        mark = now
        print(f"  build {spec.frames:,}: {name} {steps[name]:.1f} s", file=sys.stderr, flush=True)

    n, days = spec.sessions, spec.days
    span = days * DAY_US
    sid, task = tmpl.sid, tmpl.first_task
    origin = int(tmpl.proxy["opened_at_us"])
    duration = int(spec.session_minutes * 60e6)
    scale = duration / (int(tmpl.proxy["closed_at_us"]) - origin)

    def rel(us: int | None) -> int | None:
        return None if us is None else round((us - origin) * scale)

    # Frame counts: link opening frames per day, the proxy's own frames per session,
    # the session's frames, padding to make up the total.
    link_id, proxy_id = tmpl.link["id"], tmpl.proxy["id"]
    link_open = tmpl.count(lambda f: f["connection_id"] == link_id and f["session_id"] is None)
    proxy_own = tmpl.count(lambda f: f["connection_id"] == proxy_id and f["session_id"] is None)
    in_session = int(tmpl.session["frame_count"])
    session_total = spec.frames - n * proxy_own - days * link_open
    per, extra = divmod(session_total, n)
    base_pad = per - in_session
    if base_pad < 0:
        raise BenchError(
            f"the template session has {in_session} frames, more than the "
            f"{per} each of {n} sessions can have: use fewer --template-tasks"
        )
    step_us = (span - duration - 120_000_000) // max(n - 1, 1)
    if step_us <= 0:
        raise BenchError("sessions do not fit in --days")

    # The template's frames, with times relative to the proxy's opening (stretched) or,
    # for the link's opening frames, to the link's opening.
    tmpl_rows: list[tuple[Any, ...]] = []
    chunks: list[tuple[Any, ...]] = []
    for f in tmpl.frames:
        if f["connection_id"] == link_id and f["session_id"] is None:
            kind, at = 0, f["received_at_us"] - tmpl.link["opened_at_us"]
        else:
            kind, at = (1 if f["connection_id"] == link_id else 2), rel(f["received_at_us"])
        row = (
            len(tmpl_rows) + 1,
            kind,
            at,
            None,
            f["direction"],
            f["opcode"],
            f["size"],
            f["type"],
            f["session_id"] is not None,
            f["task_id"],
            f["parse_error"],
            f["payload"],
            f["payload_bytes"],
        )
        tmpl_rows.append(row)
        if kind == 2 and f["type"] == "stream_chunk" and f["session_id"] == sid:
            chunks.append(row)
    if not chunks:
        raise BenchError("template: no stream_chunk frames to pad with")
    pads = base_pad + (1 if extra else 0)
    for i in range(pads):
        c = chunks[i % len(chunks)]
        tmpl_rows.append((len(tmpl_rows) + 1, 2, c[2] + 1 + i // len(chunks), i, *c[4:]))
    last_seen = rel(tmpl.session["last_seen_us"])
    assert last_seen is not None
    if pads and max(r[2] for r in tmpl_rows[-pads:]) > last_seen:
        raise BenchError("template: padding would land after the session's last frame")

    # Ids of the same length, so that frame sizes do not change.
    suffixes = session_ids(n)
    starts = [EPOCH_US + 60_000_000 + k * step_us for k in range(n)]
    plan = []
    for k in range(n):
        new_sid = f"session_{starts[k] // 1000}_{suffixes[k]}"
        new_task = f"task_{starts[k] // 1000}"
        if len(new_sid) != len(sid) or len(new_task) != len(task):
            raise BenchError(f"ids {new_sid}, {new_task} differ in length from the template's")
        plan.append((k, new_sid, new_task, starts[k], base_pad + (1 if k < extra else 0)))

    # Connection ids in the order the recorder would have opened them.
    opened: list[tuple[int, int, int]] = [(EPOCH_US + d * DAY_US, 0, d) for d in range(days)]
    opened += [(starts[k], 1, k) for k in range(n)]
    opened.sort()
    link_conn: dict[int, int] = {}
    proxy_conn: dict[int, int] = {}
    conn_rows: list[tuple[Any, ...]] = []
    for cid, (at, is_proxy, i) in enumerate(opened, start=1):
        src = tmpl.proxy if is_proxy else tmpl.link
        if is_proxy:
            proxy_conn[i] = cid
            closed = at + (rel(src["closed_at_us"]) or 0)
            addr = f"127.0.0.1:{32768 + (i * 7919) % 28000}"
        else:
            link_conn[i] = cid
            closed, addr = at + DAY_US, None
        conn_rows.append(
            (
                cid,
                src["role"],
                src["url"],
                addr,
                at,
                closed,
                src["close_code"],
                src["close_reason"],
                src["closed_by"],
                src["error"],
                0,
                src["instance"],
            )
        )

    tmp = path.with_name(path.name + ".building")
    scratch = path.with_name(path.name + ".scratch")
    for p in (tmp, scratch):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{p}{suffix}").unlink(missing_ok=True)
    recorder_cli(["db", "upgrade", "--database", str(tmp)], cwd)
    step("migrate")

    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        reference = schema_of(con)
        if digest(reference) != spec.schema:
            raise BenchError("the migrations changed while the benchmark ran")
        indexes = con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'frames'"
            " AND sql IS NOT NULL ORDER BY name"
        ).fetchall()
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-262144")
        for name, _ in indexes:
            con.execute(f"DROP INDEX {name}")
        con.execute("ATTACH DATABASE ? AS s", (str(scratch),))
        con.execute("PRAGMA s.journal_mode=OFF")
        con.execute("PRAGMA s.synchronous=OFF")
        con.execute("BEGIN")
        con.execute(
            "CREATE TABLE s.tmpl (idx INTEGER PRIMARY KEY, kind INT, rel INT, pad INT,"
            " direction TEXT, opcode INT, size INT, type TEXT, in_session INT, task_id TEXT,"
            " parse_error TEXT, payload TEXT, payload_bytes BLOB)"
        )
        con.executemany(f"INSERT INTO s.tmpl VALUES ({','.join('?' * 13)})", tmpl_rows)
        con.execute(
            "CREATE TABLE s.plan (k INTEGER PRIMARY KEY, sid TEXT, task TEXT, start INT,"
            " pads INT, conn INT)"
        )
        con.executemany(
            "INSERT INTO s.plan VALUES (?, ?, ?, ?, ?, ?)",
            [(*row, proxy_conn[row[0]]) for row in plan],
        )
        con.execute("CREATE TABLE s.links (d INTEGER PRIMARY KEY, conn INT, opened INT)")
        con.executemany(
            "INSERT INTO s.links VALUES (?, ?, ?)",
            [(d, link_conn[d], EPOCH_US + d * DAY_US) for d in range(days)],
        )
        # Every frame as (time, session or -1-day, template row, connection), then in
        # time order with seq numbered per connection: narrow rows, cheap to sort.
        con.execute("CREATE TABLE s.ord1 (t INT, k INT, idx INT, conn INT)")
        con.execute(
            "INSERT INTO s.ord1 SELECT p.start + t.rel, p.k, t.idx, CASE t.kind WHEN 2 THEN"
            f" p.conn ELSE (SELECT l.conn FROM s.links l WHERE l.d = (p.start + t.rel -"
            f" {EPOCH_US}) / {DAY_US}) END FROM s.plan p JOIN s.tmpl t ON t.kind IN (1, 2)"
            " AND (t.pad IS NULL OR t.pad < p.pads)"
        )
        con.execute(
            "INSERT INTO s.ord1 SELECT l.opened + t.rel, -1 - l.d, t.idx, l.conn"
            " FROM s.links l JOIN s.tmpl t ON t.kind = 0"
        )
        con.execute(
            "CREATE TABLE s.ord2 AS SELECT t, k, idx, conn, row_number() OVER"
            " (PARTITION BY conn ORDER BY t, k, idx) AS seq FROM s.ord1 ORDER BY t, k, idx"
        )
        con.execute("DROP TABLE s.ord1")
        step("order")
        con.execute(
            "INSERT INTO main.frames (id, connection_id, seq, direction, received_at_us,"
            " monotonic_ns, opcode, size, type, session_id, task_id, parse_error, payload,"
            " payload_bytes)"
            f" SELECT o.rowid, o.conn, o.seq, t.direction, o.t, {MONO0_NS} + (o.t - {EPOCH_US})"
            " * 1000, t.opcode, t.size, t.type, CASE WHEN t.in_session THEN p.sid END,"
            " CASE WHEN t.task_id = :task THEN p.task ELSE t.task_id END, t.parse_error,"
            " CASE WHEN p.k IS NULL OR t.payload IS NULL THEN t.payload"
            " ELSE replace(replace(t.payload, :sid, p.sid), :task, p.task) END,"
            " t.payload_bytes"
            " FROM s.ord2 o JOIN s.tmpl t ON t.idx = o.idx LEFT JOIN s.plan p ON p.k = o.k"
            " ORDER BY o.rowid",
            {"sid": sid, "task": task},
        )
        step("frames")
        # Named columns: a later migration that adds one must not shift these.
        con.executemany(
            "INSERT INTO main.connections (id, role, url, client_addr, opened_at_us,"
            " closed_at_us, close_code, close_reason, closed_by, error, frame_count, instance)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            conn_rows,
        )
        s = tmpl.session
        con.executemany(
            "INSERT INTO main.sessions (id, orchestrator_id, session_type, status, task_id,"
            " task_description, first_seen_us, last_seen_us, started_at_us, ended_at_us,"
            " frame_count, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    new_sid,
                    s["orchestrator_id"],
                    s["session_type"],
                    s["status"],
                    new_task,
                    s["task_description"],
                    *(
                        None if s[c] is None else start + (rel(s[c]) or 0)
                        for c in ("first_seen_us", "last_seen_us", "started_at_us", "ended_at_us")
                    ),
                    s["frame_count"] + pad,
                    s["last_error"],
                )
                for _, new_sid, new_task, start, pad in plan
            ],
        )
        con.executemany(
            "INSERT INTO main.tasks (session_id, task_id, description, status, first_seen_us,"
            " last_seen_us, started_at_us, ended_at_us, frame_count, error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    new_sid,
                    new_task if t["task_id"] == task else t["task_id"],
                    t["description"],
                    t["status"],
                    *(
                        None if t[c] is None else start + (rel(t[c]) or 0)
                        for c in ("first_seen_us", "last_seen_us", "started_at_us", "ended_at_us")
                    ),
                    t["frame_count"],
                    t["error"],
                )
                for _, new_sid, new_task, start, _pad in plan
                for t in tmpl.tasks
            ],
        )
        con.execute("COMMIT")
        con.execute("DETACH DATABASE s")
        step("rows")
        con.execute("BEGIN")
        for _, sql in indexes:
            con.execute(sql)
        step("indexes")
        con.execute(
            f"INSERT INTO frame_days SELECT received_at_us - received_at_us % {DAY_US},"
            " coalesce(type, ''), direction, count(*), sum(size) FROM frames GROUP BY 1, 2, 3"
        )
        # One pass over the frames (a per-connection subquery would need an index on
        # connection_id, which the schema need not have).
        con.execute("CREATE TEMP TABLE counts (cid INTEGER PRIMARY KEY, n INT, lo INT, hi INT)")
        con.execute(
            "INSERT INTO temp.counts SELECT connection_id, count(*), min(seq), max(seq)"
            " FROM frames GROUP BY connection_id"
        )
        con.execute(
            "UPDATE connections SET frame_count ="
            " coalesce((SELECT n FROM temp.counts WHERE cid = connections.id), 0)"
        )
        con.execute("COMMIT")
        step("rollups")
        problems = check_database(con, spec, reference)
        con.execute("DROP TABLE temp.counts")
        step("checks")
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    for suffix in ("", "-journal"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    current = recorder_cli(["db", "current", "--database", str(tmp)], cwd)
    if "up to date" not in current:
        problems.append(f"recorder db current: {current.strip()}")
    if problems:
        raise BenchError("the database built is wrong: " + "; ".join(problems))
    os.replace(tmp, path)
    return {
        "seconds": round(time.monotonic() - began, 1),
        "steps": steps,
        "bytes": path.stat().st_size,
        "frames_per_session": [per + (1 if extra else 0), per],
        "padding_per_session": [pads, base_pad],
        "template_session_frames": in_session,
        "stretch": round(scale, 1),
    }


def check_database(
    con: sqlite3.Connection, spec: Spec, reference: list[tuple[str, str, str, str | None]]
) -> list[str]:
    problems = []

    def one(sql: str) -> Any:
        return con.execute(sql).fetchone()[0]

    schema = schema_of(con)
    if schema != reference:
        diff = set(schema) ^ set(reference)
        problems.append(f"schema differs from a freshly migrated database: {sorted(diff)[:3]}")
    count, first, last = con.execute("SELECT count(*), min(id), max(id) FROM frames").fetchone()
    if (count, first, last) != (spec.frames, 1, spec.frames):
        problems.append(f"{count} frames (ids {first}..{last}), expected {spec.frames}")
    if one("SELECT count(*) FROM sessions") != spec.sessions:
        problems.append("wrong number of sessions")
    if one("SELECT sum(frame_count) FROM connections") != spec.frames:
        problems.append("connections.frame_count does not add up")
    if one("SELECT sum(frames) FROM frame_days") != spec.frames:
        problems.append("frame_days does not add up")
    if one("SELECT sum(frame_count) FROM sessions") != one(
        "SELECT count(*) FROM frames WHERE session_id IS NOT NULL"
    ):
        problems.append("sessions.frame_count does not match the frames")
    backwards = one(
        "SELECT count(*) FROM (SELECT received_at_us < lag(received_at_us) OVER (ORDER BY id)"
        " AS back FROM frames) WHERE back"
    )
    if backwards:
        problems.append(f"{backwards} frames have an id out of recording order")
    # seq is a row_number() per connection: unique; here 1..n with n = frame_count.
    bad_seq = one(
        "SELECT count(*) FROM connections c LEFT JOIN temp.counts n ON n.cid = c.id"
        " WHERE c.frame_count != coalesce(n.n, 0) OR n.lo != 1 OR n.hi != n.n"
    )
    if bad_seq:
        problems.append(f"{bad_seq} connections whose seq is not 1..frame_count")
    return problems


def ensure_database(
    tmpl: Template, spec: Spec, workdir: Path, rebuild: bool, quiet: bool
) -> tuple[Path, dict[str, Any]]:
    """The cached database for ``spec``, built if missing, stale or ``rebuild``."""
    path = workdir / f"query-{spec.frames}.db"
    meta_path = path.with_suffix(".json")
    if not rebuild and path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("spec") == asdict(spec):
            meta["build"]["cached"] = True
            if not quiet:
                print(f"using {path} (built earlier)", file=sys.stderr, flush=True)
            return path, meta["build"]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    if not quiet:
        print(f"building {path} ...", file=sys.stderr, flush=True)
    build = build_database(tmpl, spec, path, workdir)
    build["cached"] = False
    meta_path.write_text(json.dumps({"spec": asdict(spec), "build": build}, indent=2))
    return path, build


# --- 3. the commands and their baselines -------------------------------------------------


@dataclass
class Expect:
    """What the commands must print, read from the database beforehand."""

    sid: str
    session_frames: int
    first_id: int
    last_id: int
    session_tasks: int
    frames: int
    sessions: int
    active: int
    newest_session: str
    max_frame_id: int
    connections: int
    max_connection_id: int
    session_row: dict[str, Any]


def expectations(db: Path) -> Expect:
    con = ro_connect(db)
    con.row_factory = sqlite3.Row
    try:
        n = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
        row = con.execute(
            "SELECT * FROM sessions ORDER BY first_seen_us, id LIMIT 1 OFFSET ?", (n // 2,)
        ).fetchone()
        sid = row["id"]
        count, first, last = con.execute(
            "SELECT count(*), min(id), max(id) FROM frames WHERE session_id = ?", (sid,)
        ).fetchone()
        terminal = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
        return Expect(
            sid=sid,
            session_frames=count,
            first_id=first,
            last_id=last,
            session_tasks=con.execute(
                "SELECT count(*) FROM tasks WHERE session_id = ?", (sid,)
            ).fetchone()[0],
            frames=con.execute("SELECT sum(frame_count) FROM connections").fetchone()[0],
            sessions=n,
            active=con.execute(
                "SELECT count(*) FROM sessions WHERE status IS NOT NULL"
                f" AND status NOT IN ({terminal})"
            ).fetchone()[0],
            newest_session=con.execute(
                "SELECT id FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 1"
            ).fetchone()[0],
            max_frame_id=con.execute("SELECT max(id) FROM frames").fetchone()[0],
            connections=con.execute("SELECT count(*) FROM connections").fetchone()[0],
            max_connection_id=con.execute("SELECT max(id) FROM connections").fetchone()[0],
            session_row=dict(row),
        )
    finally:
        con.close()


Query = tuple[str, tuple[Any, ...]]


@dataclass
class Command:
    name: str
    args: list[str]  # after `recorder`; "{db}" is the database
    queries: list[Query]  # the baseline's SQL
    check: Callable[[list[str], Expect], list[str]]
    target: float | None = None


def baseline_code(queries: list[Query]) -> str:
    """A ``python -c`` program: the queries through stdlib sqlite3, every row printed."""
    lines = [
        "import sqlite3,sys",
        "c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)",
        "w=sys.stdout.write",
        "def q(sql,*a):",
        "    for r in c.execute(sql,a):",
        "        w(repr(r));w('\\n')",
    ]
    lines += [f"q({sql!r}, *{params!r})" for sql, params in queries]
    return "\n".join(lines) + "\n"


def baseline_rows(db: Path, queries: list[Query]) -> int:
    con = ro_connect(db)
    try:
        return sum(len(con.execute(sql, params).fetchall()) for sql, params in queries)
    finally:
        con.close()


def check_frames_session(lines: list[str], e: Expect) -> list[str]:
    if len(lines) != e.session_frames:
        return [f"{len(lines)} lines, expected {e.session_frames}"]
    ids = []
    for line in lines:
        obj = json.loads(line)
        if obj.get("session_id") != e.sid or ("payload" not in obj and "payload_b64" not in obj):
            return [f"a line of another session or without payload: {line[:120]}"]
        ids.append(obj["id"])
    if ids != sorted(ids) or (ids[0], ids[-1]) != (e.first_id, e.last_id):
        return ["ids out of order or not the session's"]
    return []


def check_show(lines: list[str], e: Expect) -> list[str]:
    problems = []
    if not lines or lines[0] != f"session   {e.sid}":
        problems.append(f"first line {lines[:1]}")
    if f"Frames: {e.session_frames}" not in lines:
        problems.append(f"no 'Frames: {e.session_frames}' line")
    if e.session_tasks and "Tasks" not in lines:
        problems.append("no Tasks section")
    return problems


def check_sessions(lines: list[str], e: Expect) -> list[str]:
    want = 1 + min(50, e.sessions)
    if len(lines) != want:
        return [f"{len(lines)} lines, expected {want}"]
    if not lines[1].startswith(e.newest_session + " "):
        return [f"first row is not the newest session {e.newest_session}"]
    return []


def check_frames_last(lines: list[str], e: Expect) -> list[str]:
    if len(lines) != 101:
        return [f"{len(lines)} lines, expected a header and 100 frames"]
    first, last = int(lines[1].split()[0]), int(lines[-1].split()[0])
    if (first, last) != (e.max_frame_id - 99, e.max_frame_id):
        return [f"ids {first}..{last}, expected the newest 100"]
    return []


def check_tasks(lines: list[str], e: Expect) -> list[str]:
    want = 1 + min(50, e.session_tasks)
    if len(lines) != want:
        return [f"{len(lines)} lines, expected {want}"]
    if any(not line.startswith(e.sid + " ") for line in lines[1:]):
        return ["a task of another session"]
    return []


def check_connections(lines: list[str], e: Expect) -> list[str]:
    want = 1 + min(50, e.connections)
    if len(lines) != want:
        return [f"{len(lines)} lines, expected {want}"]
    if lines[1].split()[0] != str(e.max_connection_id):
        return ["first row is not the newest connection"]
    return []


def check_status(lines: list[str], e: Expect) -> list[str]:
    problems = []
    if f"frames      {e.frames:,}" not in lines:
        problems.append(f"no 'frames {e.frames:,}' line")
    if f"sessions    {e.sessions:,} ({e.active:,} active)" not in lines:
        problems.append(f"no 'sessions {e.sessions:,}' line")
    return problems


def section_sum(lines: list[str], title: str) -> int:
    total, inside = 0, False
    for line in lines:
        if line == title:
            inside = True
        elif inside and not line.strip():
            break
        elif inside:
            total += int(line.split()[0].replace(",", ""))
    return total


def check_stats(lines: list[str], e: Expect) -> list[str]:
    problems = []
    if (by_type := section_sum(lines, "Frames by type")) != e.frames:
        problems.append(f"frames by type add up to {by_type:,}, expected {e.frames:,}")
    if (by_day := section_sum(lines, "Frames by day (UTC)")) != e.frames:
        problems.append(f"frames by day add up to {by_day:,}, expected {e.frames:,}")
    if (by_status := section_sum(lines, "Sessions by status")) != e.sessions:
        problems.append(f"sessions by status add up to {by_status:,}, expected {e.sessions:,}")
    return problems


def commands(e: Expect) -> list[Command]:
    """The commands measured, with the SQL ``recorder/db/read.py`` runs for each."""
    sid = e.sid
    row = e.session_row
    start = min(row["first_seen_us"], row["started_at_us"] or row["first_seen_us"])
    end = row["ended_at_us"] or int(time.time() * 1e6)
    wanted = ", ".join(f"'{t}'" for t in READ_TYPES)
    terminal = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
    session_row: Query = ("SELECT * FROM sessions WHERE id = ?", (sid,))
    tasks: Query = (
        "SELECT * FROM tasks WHERE session_id = ? ORDER BY first_seen_us DESC, id DESC LIMIT 50",
        (sid,),
    )
    return [
        Command(
            "frames --session",
            ["frames", "--database", "{db}", "--session", sid, "--limit", "0", "--format", "jsonl"],
            [("SELECT * FROM frames WHERE session_id = ? ORDER BY id", (sid,))],
            check_frames_session,
            TARGET_SCOPED_S,
        ),
        Command(
            "show",
            ["show", "--database", "{db}", sid],
            [
                session_row,
                (
                    "SELECT id, connection_id, seq, direction, received_at_us, monotonic_ns,"
                    f" type, task_id, size, CASE WHEN type IN ({wanted}) THEN payload END"
                    " FROM frames WHERE session_id = ? ORDER BY id",
                    (sid,),
                ),
                # The connections that carried frames outside this span, the story
                # counted as it read the frames.
                (
                    "SELECT * FROM connections WHERE opened_at_us <= ? AND (closed_at_us IS NULL"
                    " OR closed_at_us >= ?) ORDER BY id",
                    (end, start),
                ),
                ("SELECT count(*) FROM tasks WHERE session_id = ?", (sid,)),
                (
                    "SELECT * FROM tasks WHERE session_id = ? ORDER BY first_seen_us DESC, id DESC"
                    " LIMIT 10",
                    (sid,),
                ),
            ],
            check_show,
            TARGET_SCOPED_S,
        ),
        Command(
            "sessions",
            ["sessions", "--database", "{db}"],
            [("SELECT * FROM sessions ORDER BY first_seen_us DESC, id DESC LIMIT 50", ())],
            check_sessions,
        ),
        Command(
            "frames --last 100",
            ["frames", "--database", "{db}", "--last", "100"],
            [("SELECT * FROM frames ORDER BY id DESC LIMIT 100", ())],
            check_frames_last,
        ),
        Command(
            "tasks --session",
            ["tasks", "--database", "{db}", "--session", sid],
            [session_row, tasks],
            check_tasks,
            TARGET_SCOPED_S,
        ),
        Command(
            "connections",
            ["connections", "--database", "{db}"],
            [("SELECT * FROM connections ORDER BY id DESC LIMIT 50", ())],
            check_connections,
        ),
        Command(
            "status",
            ["status", "--database", "{db}"],
            [
                ("SELECT * FROM connections WHERE role = 'link' ORDER BY id DESC LIMIT 1", ()),
                (
                    "SELECT received_at_us FROM frames WHERE id = (SELECT max(id) FROM frames)",
                    (),
                ),
                (
                    "SELECT (SELECT coalesce(sum(frame_count), 0) FROM connections),"
                    " (SELECT count(*) FROM sessions), (SELECT count(*) FROM sessions WHERE"
                    f" status IS NOT NULL AND status NOT IN ({terminal}))",
                    (),
                ),
            ],
            check_status,
            TARGET_SCOPED_S,
        ),
        Command(
            "stats",
            ["stats", "--database", "{db}"],
            [
                (
                    "SELECT type, sum(frames), sum(bytes) FROM frame_days"
                    " GROUP BY type ORDER BY sum(frames) DESC, type",
                    (),
                ),
                (
                    "SELECT day_us, sum(frames), sum(bytes) FROM frame_days"
                    " GROUP BY day_us ORDER BY day_us",
                    (),
                ),
                (
                    "SELECT coalesce(status, '?'), count(*) FROM sessions"
                    " GROUP BY coalesce(status, '?') ORDER BY count(*) DESC",
                    (),
                ),
                (
                    "SELECT id, status, frame_count, first_seen_us FROM sessions"
                    " ORDER BY frame_count DESC, id LIMIT 10",
                    (),
                ),
                (
                    "SELECT received_at_us, payload FROM frames WHERE type ="
                    " 'daemon_status_update' ORDER BY id DESC LIMIT 1",
                    (),
                ),
            ],
            check_stats,
            TARGET_STATS_S,
        ),
    ]


# --- 4. measuring ------------------------------------------------------------------------


@dataclass
class Cold:
    """How the page cache was emptied before a cold run, and what was left of the file."""

    method: str
    resident: float


@dataclass
class Result:
    command: str
    target_s: float | None
    ours_warm_s: float = float("nan")
    base_warm_s: float = float("nan")
    ours_cold_s: float = float("nan")
    base_cold_s: float = float("nan")
    ours_runs_s: list[float] = field(default_factory=list)
    base_runs_s: list[float] = field(default_factory=list)
    ours_cold: Cold | None = None
    base_cold: Cold | None = None
    output_lines: int = 0
    output_bytes: int = 0
    baseline_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        return None if self.target_s is None else self.ours_warm_s < self.target_s


class Measurer:
    def __init__(self, db: Path, workdir: Path, cold_mode: str, repeat: int) -> None:
        self.db = db
        self.workdir = workdir
        self.cold_mode = cold_mode
        self.repeat = repeat
        self.prefix = cli_prefix()
        if re.search(r"[?#%]", str(db)):
            raise BenchError(f"{db}: the baseline's file: URI cannot hold ? # or %")

    def ours_args(self, cmd: Command, db: Path) -> list[str]:
        return [*self.prefix, *(str(db) if a == "{db}" else a for a in cmd.args)]

    def base_args(self, cmd: Command, db: Path) -> list[str]:
        return [sys.executable, "-c", baseline_code(cmd.queries), str(db)]

    def files(self, db: Path) -> list[Path]:
        return [db, Path(f"{db}-wal"), Path(f"{db}-shm")]

    def cold_run(self, args: Callable[[Path], list[str]]) -> tuple[Run, Cold]:
        """One run on an emptied page cache (or, failing that, on a fresh copy)."""
        if self.cold_mode != "copy":
            method = drop_page_cache(self.files(self.db))
            resident = resident_fraction(self.db)
            # NaN (the kernel would not say) counts as emptied.
            if self.cold_mode == "drop" or not resident > 0.01:
                return run_process(args(self.db), self.workdir), Cold(method, resident)
        copy = self.workdir / "cold-copy.db"
        shutil.copyfile(self.db, copy)
        try:
            resident = resident_fraction(copy)
            return run_process(args(copy), self.workdir), Cold("fresh copy", resident)
        finally:
            for p in self.files(copy):
                p.unlink(missing_ok=True)

    def measure(self, cmd: Command, e: Expect) -> Result:
        res = Result(cmd.name, cmd.target)
        res.baseline_rows = baseline_rows(self.db, cmd.queries)

        def ours(db: Path) -> list[str]:
            return self.ours_args(cmd, db)

        def base(db: Path) -> list[str]:
            return self.base_args(cmd, db)

        def check(run: Run, kind: str) -> None:
            if run.code != 0:
                res.problems.append(f"{kind} exited {run.code}: {run.stderr.strip()[-300:]}")
                return
            lines = run.stdout.splitlines()
            if kind.startswith("ours"):
                res.output_lines, res.output_bytes = len(lines), len(run.stdout.encode())
                found = cmd.check(lines, e)
            elif len(lines) != res.baseline_rows:
                found = [f"{len(lines)} rows printed, expected {res.baseline_rows}"]
            else:
                found = []
            res.problems += [f"{kind}: {p}" for p in found if f"{kind}: {p}" not in res.problems]

        # The warm-up first: its bytecode is on disk before the cold runs.
        check(run_process(ours(self.db), self.workdir), "ours warm-up")
        check(run_process(base(self.db), self.workdir), "baseline warm-up")
        run, res.ours_cold = self.cold_run(ours)
        res.ours_cold_s = run.seconds
        check(run, "ours cold")
        run, res.base_cold = self.cold_run(base)
        res.base_cold_s = run.seconds
        check(run, "baseline cold")
        for _ in range(self.repeat):
            run = run_process(ours(self.db), self.workdir)
            res.ours_runs_s.append(run.seconds)
            check(run, "ours")
            run = run_process(base(self.db), self.workdir)
            res.base_runs_s.append(run.seconds)
            check(run, "baseline")
        res.ours_warm_s = statistics.median(res.ours_runs_s)
        res.base_warm_s = statistics.median(res.base_runs_s)
        return res


# --- 5. the report -----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def print_size(s: dict[str, Any]) -> None:
    b = s["build"]
    e = s["session"]
    print(
        f"\n{s['frames']:,} frames, {s['sessions']:,} sessions over {s['days']} days,"
        f" {s['db_bytes'] / 2**30:.2f} GiB: {s['db']}"
    )
    how = "cached: built earlier in" if b.get("cached") else "built in"
    steps = ", ".join(f"{k} {v:g}" for k, v in b["steps"].items())
    print(f"  {how} {b['seconds']:.0f} s ({steps})")
    print(f"  S = {e['sid']} ({e['frames']} frames, {e['tasks']} tasks)")
    warm = f"warm, ms (median of {s['repeat']})"
    print(f"  {'':<18}  {warm:<26}  {'cold, ms':<26}")
    print(
        f"  {'command':<18}  {'ours':>6} {'base':>6} {'overhead':>8}    {'ours':>6} {'base':>6}"
        f" {'overhead':>8}    {'target':>6}  met"
    )
    for r in s["results"]:
        target = "-" if r["target_s"] is None else f"< {r['target_s'] * 1000:.0f}"
        met = "-" if r["target_s"] is None else yes(r["ours_warm_s"] < r["target_s"])
        print(
            f"  {r['command']:<18}  {ms(r['ours_warm_s']):>6} {ms(r['base_warm_s']):>6}"
            f" {ms(r['ours_warm_s'] - r['base_warm_s']):>8}    {ms(r['ours_cold_s']):>6}"
            f" {ms(r['base_cold_s']):>6} {ms(r['ours_cold_s'] - r['base_cold_s']):>8}"
            f"    {target:>6}  {met}"
        )
    colds = [c for r in s["results"] for c in (r["ours_cold"], r["base_cold"]) if c]
    methods = ", ".join(sorted({c["method"] for c in colds}))
    worst = max((c["resident"] for c in colds), default=float("nan"))
    print(
        f"  cold: {methods}; at most {worst:.1%} of the database file was in the page cache"
        " when a cold run started"
    )
    for r in s["results"]:
        for problem in r["problems"][:5]:
            print(f"  FAILED {r['command']}: {problem}")


def print_report(summary: dict[str, Any]) -> None:
    print(f"query benchmark ({summary['cli']}; baseline: python -c with sqlite3, mode=ro)")
    for s in summary["sizes"]:
        print_size(s)
    print()
    print(targets_line(summary["targets"]))


def summarize(sizes: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    targets: dict[str, bool] = {}
    for s in sizes:
        scoped = [r for r in s["results"] if r["target_s"] == TARGET_SCOPED_S]
        targets[f"session+status<0.3s@{s['frames']:,}"] = all(
            r["ours_warm_s"] < r["target_s"] for r in scoped
        )
    stats = [r for s in sizes for r in s["results"] if r["target_s"] == TARGET_STATS_S]
    targets["stats<1s"] = all(r["ours_warm_s"] < r["target_s"] for r in stats)
    return {
        "cli": " ".join(cli_prefix()),
        "repeat": repeat,
        "sizes": sizes,
        "targets": targets,
        "ok": not any(r["problems"] for s in sizes for r in s["results"]),
        "machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="database sizes to measure, in frames (default: 1000000 5000000)",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=0,
        help=f"sessions per database (default: frames / {FRAMES_PER_SESSION})",
    )
    p.add_argument(
        "--days",
        type=int,
        default=0,
        help=f"days the sessions span (default: {DEFAULT_DAYS} per 10 000 sessions)",
    )
    p.add_argument(
        "--session-minutes",
        type=float,
        default=DEFAULT_SESSION_MINUTES,
        help="how long each session lasts (sets how many overlap)",
    )
    p.add_argument(
        "--template-tasks",
        type=int,
        default=DEFAULT_TEMPLATE_TASKS,
        help="execute_task requests in the template session",
    )
    p.add_argument("--repeat", type=int, default=5, help="warm runs of each (median)")
    p.add_argument(
        "--cold",
        choices=["auto", "drop", "copy"],
        default="auto",
        help="auto: drop the page cache (drop_caches, else fadvise), a fresh copy if the file"
        " stays cached; drop: drop it whatever stays; copy: always a fresh copy",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recorder-bench-query",
        help="where the databases are built and kept (default: %(default)s)",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the template and databases")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--timeout", type=float, default=0.0, help="overall limit, s (0: from --frames)")
    args = p.parse_args(argv)
    if min(args.frames) < 1 or args.repeat < 1 or args.days < 0 or args.template_tasks < 1:
        p.error("--frames, --repeat and --template-tasks must be at least 1")
    if args.session_minutes <= 0:
        p.error("--session-minutes must be positive")
    return args


def measure_size(
    args: argparse.Namespace, tmpl: Template, schema: str, frames: int, deadline: Deadline
) -> dict[str, Any]:
    sessions = args.sessions or max(frames // FRAMES_PER_SESSION, 1)
    days = args.days or -(-sessions * DEFAULT_DAYS // 10_000)
    spec = Spec(frames, sessions, days, args.session_minutes, tmpl.digest, schema)
    db, build = ensure_database(tmpl, spec, args.workdir, args.rebuild, args.json)
    deadline.check("building")
    e = expectations(db)
    measurer = Measurer(db, args.workdir, args.cold, args.repeat)
    results = []
    for cmd in commands(e):
        deadline.check(f"measuring {cmd.name}")
        if not args.json:
            print(f"  {frames:,}: {cmd.name} ...", file=sys.stderr, flush=True)
        results.append(asdict(measurer.measure(cmd, e)))
    return {
        "frames": frames,
        "sessions": sessions,
        "days": days,
        "db": str(db),
        "db_bytes": db.stat().st_size,
        "build": build,
        "repeat": args.repeat,
        "session": {"sid": e.sid, "frames": e.session_frames, "tasks": e.session_tasks},
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.timeout or 1200 + sum(args.frames) / 2000)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.workdir.mkdir(parents=True, exist_ok=True)
    PYCACHE.append(args.workdir / "pycache")
    if not args.json:
        print(f"workdir {args.workdir}", file=sys.stderr, flush=True)
    sizes = []
    try:
        schema = digest(reference_schema(args.workdir))
        template = args.workdir / f"template-{args.template_tasks}-{writer_digest()}.db"
        if args.rebuild or not template.exists():
            if not args.json:
                print(f"recording the template session: {template}", file=sys.stderr, flush=True)
            for old in args.workdir.glob("template-*.db*"):
                old.unlink()
            make_template(template, args.template_tasks, deadline)
        tmpl = load_template(template)
        for frames in args.frames:
            sizes.append(measure_size(args, tmpl, schema, frames, deadline))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        Child.kill_all()
    summary = summarize(sizes, args.repeat)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
