"""When a client's request stands for a recorded one (``replay --serve --wait-for-client``).

A UI pointed at a served replay does not send the recorded bytes: it has its own
task texts, key order and whitespace. What it cannot change without asking for
something else is what the request is (its ``type``) and what it names: the ids in
its payload (``sessionId``, ``orchestratorId``: every string field whose name ends in
``Id``), which it read from the replay itself, so they are the recorded ones. Two
requests match when those are equal; task text, priorities and the rest are not
compared. A request that is not a JSON object with a string ``type`` matches only
the same bytes.

Pure: :func:`request_key` is what the server holds per recorded request (a digest,
a few bytes whatever the request's size), :func:`describe` what it logs while it
waits for one (type and ids, never the text).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# An id longer than this is not one the daemon made: shown cut in a log line.
SHOWN_ID = 80


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None


def named_ids(obj: dict[str, Any]) -> dict[str, str]:
    """The ids a request names: string fields called ``…Id`` at its top level or in its
    payload (the daemon's protocol puts them in the payload)."""
    payload = obj.get("payload")
    found: dict[str, str] = {}
    for source in (obj, payload if isinstance(payload, dict) else {}):
        for key, value in source.items():
            if isinstance(key, str) and key.endswith("Id") and isinstance(value, str):
                found[key] = value
    return found


def request_key(data: bytes) -> bytes:
    """What a request is matched by, as a 16-byte digest: its type and the ids it
    names; for a request that is not a JSON object with a type, its exact bytes."""
    obj = _object(data)
    if obj is None:
        return hashlib.blake2b(b"raw:" + data, digest_size=16).digest()
    key = json.dumps([obj["type"], named_ids(obj)], sort_keys=True, ensure_ascii=False)
    # JSON may spell a lone surrogate ("\ud800"), which UTF-8 cannot: kept as it is.
    return hashlib.blake2b(key.encode(errors="surrogatepass"), digest_size=16).digest()


def describe(data: bytes) -> str:
    """A recorded request as a log line names it: ``execute_task sessionId=session_1``."""
    obj = _object(data)
    if obj is None:
        return f"a request of {len(data)} bytes that is not a JSON object with a type"
    parts = [_shown(obj["type"])]
    parts += [f"{_shown(k)}={_shown(v)}" for k, v in sorted(named_ids(obj).items())]
    return " ".join(parts)


def _shown(text: str) -> str:
    text = text if len(text) <= SHOWN_ID else text[: SHOWN_ID - 1] + "…"
    # One line, whatever the recording holds: a log line must not be steered.
    return json.dumps(text, ensure_ascii=True)[1:-1]
