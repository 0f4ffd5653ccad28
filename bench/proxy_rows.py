"""Every frame recorded: the proxied conversations as the recorder stored them, checked
against what the proxy benchmark's client sent and received.

Each proxied measurement is one connection row (``connections.role = 'proxy'``), found
by the ``run=`` id in its URL (:func:`find_connection`). After the recorder has stopped,
:func:`verify` checks per direction that the number of rows equals the number of frames
sent that way (data and ``bench_*`` control frames) and that a SHA-256 over every
payload in ``seq`` order equals the one the client computed over the wire; and that
``frame_count`` matches and the row is closed. It also reports whether the peer saw
every data frame unchanged and in order, direct and proxied.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from databases import Database
from proxy_frames import digest

# Rows committed so far on a connection: its frames share one seq, from 1.
TOP_SQL = "select max(seq) from frames where connection_id = ?"


def find_connection(db: Database, run: int) -> int | None:
    """The connection row of the proxied measurement ``run``; None while it has none."""
    for cid, url in list(db.rows("select id, url from connections where role = 'proxy'")):
        if parse_qs(urlsplit(url).query).get("run") == [str(run)]:
            return int(cid)
    return None


def verify(db: Database, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each proxied run: rows per direction, byte-identical in order, and frame_count."""
    problems: list[str] = []
    proxied = [r for r in runs if r["via"] == "proxy"]
    n_conns = db.scalar("select count(*) from connections where role = 'proxy'")
    if n_conns != len(proxied):
        problems.append(f"{n_conns} proxy connections, expected {len(proxied)}")
    frames = sum(verify_run(db, r, problems) for r in proxied)
    for r in runs:
        if not r["forwarded_ok"]:
            problems.append(f"{r['label']}: data frames did not arrive unchanged")
        if not r["receiver"].get("in_order"):
            problems.append(f"{r['label']}: data frames missing or out of order")
    return {
        "ok": not problems,
        "proxied_runs": len(proxied),
        "frames_checked": frames,
        "problems": problems,
    }


def verify_run(db: Database, r: dict[str, Any], problems: list[str]) -> int:
    """One proxied run's connection; what is wrong goes to ``problems``. Returns the
    number of rows it read."""
    cid = find_connection(db, r["run"])
    if cid is None:
        problems.append(f"{r['label']}: no connection row")
        return 0
    row = db.row("select frame_count, closed_at_us from connections where id = ?", cid)
    assert row is not None
    frame_count, closed = row
    frames = 0
    for direction, count, sha in (
        ("out", r["sent_count"], r["sent_sha"]),
        ("in", r["recv_count"], r["recv_sha"]),
    ):
        rows = list(
            db.rows(
                "select payload, payload_bytes, opcode from frames"
                " where connection_id = ? and direction = ? order by seq",
                cid,
                direction,
            )
        )
        frames += len(rows)
        if len(rows) != count:
            problems.append(f"{r['label']}: {len(rows)} '{direction}' rows, sent {count}")
        got = digest(p.encode() if p is not None else bytes(b) for p, b, _ in rows)
        if got != sha:
            problems.append(f"{r['label']}: '{direction}' payloads differ from the wire")
        if any(op != 1 for _, _, op in rows):
            problems.append(f"{r['label']}: '{direction}' rows not stored as text")
    if frame_count != r["sent_count"] + r["recv_count"]:
        problems.append(f"{r['label']}: connections.frame_count {frame_count}")
    if closed is None:
        problems.append(f"{r['label']}: connection row not closed")
    return frames
