"""A SQLite file that is not a database any more: noticed at start, and set aside.

After an unclean stop the writer runs ``PRAGMA quick_check``, bounded in time. A
file that fails it, or that SQLite calls "malformed" or "not a database" when it is
opened, is moved aside with its -wal and -shm as ``recorder.db.corrupt-<time>`` and
a fresh database is started: recording goes on, the old file is kept for a
postmortem, and systemd does not restart a recorder that can only fail again.
(Home Assistant's recorder does the same.) Only a file that was a database is
moved: one with SQLite's header, or one a recorder has used before. Any other file
(``storage.url`` pointing at the wrong path) is refused, untouched.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import structlog

from recorder.times import format_us, now_us

log = structlog.get_logger("recorder.db")

# quick_check stops after this long: a start must not wait for a large file.
CHECK_SECONDS = 10.0
BROKEN = ("malformed", "not a database", "disk image")


HEADER = b"SQLite format 3\x00"


class NotADatabase(Exception):
    """``storage.url`` names a file that is not, and never was, a recorder database."""


def check_replaceable(path: Path, used_before: bool) -> None:
    """Raise NotADatabase unless ``path`` may be set aside: it is a SQLite file (its
    header says so) or a recorder has used it (``used_before``: its lock file said)."""
    if used_before:
        return
    with path.open("rb") as f:
        if f.read(len(HEADER)) == HEADER:
            return
    raise NotADatabase(
        f"{path} is not a SQLite database and no recorder has used it; "
        "leaving it as it is (check storage.url)"
    )


def broken(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc).lower()
    return any(word in text for word in BROKEN)


def quick_check(path: Path, seconds: float = CHECK_SECONDS) -> str | None:
    """None when the file passes (or the check ran out of time); else what is wrong."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    deadline = time.monotonic() + seconds
    try:
        conn = sqlite3.connect(path, timeout=10)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    try:
        # Called every 100 000 virtual machine steps: a non-zero answer interrupts.
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 100_000)
        rows = conn.execute("PRAGMA quick_check(10)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            log.warning(
                "integrity check ran out of time; going on", database=str(path), seconds=seconds
            )
            return None
        return str(exc)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    found = [str(row[0]) for row in rows]
    return None if found == ["ok"] else "; ".join(found)[:300]


def set_aside(path: Path, why: str) -> Path:
    """Move the file, its -wal and its -shm aside; returns the new name of the file."""
    stamp = format_us(now_us()).replace(":", "").replace("-", "")[:15]
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    log.error(
        "database is corrupt; moved it aside and started a new one",
        database=str(path),
        moved_to=str(target),
        problem=why.splitlines()[0][:300],
    )
    return target
