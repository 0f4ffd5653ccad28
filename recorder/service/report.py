"""``recorder status``: what a recorder is doing, told truthfully from outside it.

Whether a recorder runs comes from its instance lock (SQLite) or from how fresh its
heartbeat is (PostgreSQL, and SQLite for a user who cannot read the lock), never from
a connection row a killed recorder left open. What it is doing comes from the
heartbeat it writes every few seconds.
"""

from __future__ import annotations

import json
from typing import Any

from recorder.db.recordings import Status
from recorder.times import format_us, now_us

# A heartbeat older than this means the recorder is gone (when its lock cannot be read).
STALE_US = 20_000_000


def report(
    st: Status,
    *,
    holder: str | None,
    daemon_url: str,
    database: str,
    lock_error: str | None = None,
) -> dict[str, Any]:
    """The status as a JSON-able dict; ``holder`` is who holds the recorder's lock, and
    ``lock_error`` why the lock could not be read (then the heartbeat tells)."""
    row = st.instance
    beat: dict[str, Any] = json.loads(row.state) if row is not None else {}
    if lock_error is None:
        running = holder is not None
    else:
        running = (
            row is not None and not beat.get("stopped") and now_us() - row.heartbeat_us < STALE_US
        )
    link = beat.get("link") or {}
    conn = st.last_connection
    info: dict[str, Any] = {
        "running": running,
        "lock_error": lock_error,
        "recorder": None
        if row is None
        else {
            "pid": row.pid,
            "host": row.host,
            "since": format_us(row.started_us),
            "heartbeat": format_us(row.heartbeat_us),
        },
        "daemon_url": link.get("url") or (conn.url if conn is not None else daemon_url),
        "connected": running and link.get("state") == "connected",
        "connected_since": format_us(link.get("since_us")) or None
        if running and link.get("state") == "connected"
        else None,
        "link_state": link.get("state") if running else "not running",
        "last_error": link.get("last_error")
        if running
        else (conn.error if conn is not None else None),
        "retry_in_s": None,
        "reconnects": link.get("reconnects") or {},
        "last_connected": format_us(conn.opened_at_us) if conn is not None else None,
        "last_disconnect": format_us(conn.closed_at_us)
        if conn is not None and conn.closed_at_us
        else None,
        "last_close_code": conn.close_code if conn is not None else None,
        "proxy": (beat.get("proxy") if running else None),
        "proxied_frames": st.proxied_frames,
        "last_frame_at": format_us(st.last_frame_us) or None,
        "frames": st.frame_count,
        "sessions": st.session_count,
        "active_sessions": st.active_sessions,
        "database": database,
        "database_bytes": st.database_bytes,
    }
    if running and link.get("retry_at_us"):
        info["retry_in_s"] = round(max(0.0, (link["retry_at_us"] - now_us()) / 1e6), 1)
    return info


def lines(info: dict[str, Any]) -> list[str]:
    rec = info["recorder"]
    if info["running"] and rec is not None:
        who = f"running: PID {rec['pid']} on {rec['host']}, since {rec['since']}"
    elif info["running"]:
        who = "running"
    elif rec is not None:
        who = f"not running (last heard from {rec['heartbeat']})"
    else:
        who = "not running, and has never run on this database"
    if info.get("lock_error"):
        # Said, so that "not running" never stands for "could not look".
        who += f"; {info['lock_error']}, so this is from its heartbeat"
    if info["connected"]:
        state = f"connected since {info['connected_since']}"
    elif info["running"]:
        state = info["link_state"]
        if info["retry_in_s"] is not None:
            state = f"reconnecting in {info['retry_in_s']:g} s"
        if info["last_error"]:
            state += f" after: {info['last_error']}"
    elif info["last_disconnect"]:
        state = f"not recording; the last connection closed at {info['last_disconnect']} (code {info['last_close_code']})"
        if info["last_error"]:
            state += f": {info['last_error']}"
    elif info["last_connected"]:
        state = (
            f"not recording; its last connection, opened at {info['last_connected']}, was "
            "left open by a recorder that stopped without closing it"
        )
    else:
        state = "never connected"
    out = [f"recorder    {who}", f"daemon      {info['daemon_url']}: {state}"]
    proxy = info["proxy"]
    if proxy:
        out.append(
            f"proxy       {proxy['listen']}: {proxy['clients']} UI(s) connected now, "
            f"{proxy['conversations']} since start, {info['proxied_frames']:,} frames proxied in all"
        )
    size = info["database_bytes"]
    out += [
        f"last frame  {info['last_frame_at'] or 'none'}",
        f"frames      {info['frames']:,}",
        f"sessions    {info['sessions']:,} ({info['active_sessions']:,} active)",
        f"database    {info['database']}"
        + (f" ({size / 1048576:.1f} MiB)" if size is not None else ""),
    ]
    return out
