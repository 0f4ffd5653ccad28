"""Every conversion between clocks, epoch integers and text, in one place.

The database stores integer microseconds since the Unix epoch (UTC); the daemon
speaks ISO-8601 with milliseconds (JavaScript's ``toISOString()``); people type
ISO-8601 or "15m ago".
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The moments format_us can write: years 1 to 9999.
_FIRST_US = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_LAST_US = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


def now_us() -> int:
    """Wall-clock time as epoch microseconds, the database's unit."""
    return time.time_ns() // 1000


_now_us = now_us  # parse_when's parameter shadows the name


def now_ms() -> int:
    """Wall-clock time as epoch milliseconds, JavaScript's ``Date.now()``."""
    return time.time_ns() // 1_000_000


def format_us(us: int | None) -> str:
    """``2026-11-26T11:28:57.464123Z``; empty for None."""
    if us is None:
        return ""
    if not _FIRST_US <= us <= _LAST_US:
        return f"{us} µs from 1970"  # a clock far off: no calendar date to write
    m = _EPOCH + us * _MICROSECOND
    return (
        f"{m.year:04d}-{m.month:02d}-{m.day:02d}T"
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"
    )


def iso_from_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as JavaScript's toISOString()."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_daemon_time(value: Any) -> int | None:
    """ISO-8601 from the daemon (``2026-11-26T11:28:57.464Z``) to epoch microseconds."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    # Exact integer microseconds: timestamp() goes through a float, a second off at
    # year 9999 and for fractions before 1970.
    us = (moment - _EPOCH) // _MICROSECOND
    # An offset can carry the moment out of the years a date can be written in.
    return us if _FIRST_US <= us <= _LAST_US else None


def parse_when(text: str, now_us: int | None = None) -> int:
    """A moment as epoch microseconds: ISO-8601 (UTC unless it says otherwise) or ``15m``/``2h``/``7d`` ago.

    Raises ValueError with a message fit for the user.
    """
    now = _now_us() if now_us is None else now_us
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - int(amount * _UNIT_SECONDS[unit] * 1_000_000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO-8601 like 2026-11-26T10:00:00Z, or 30s, 15m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond
