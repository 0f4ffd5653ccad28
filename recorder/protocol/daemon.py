"""What a daemon sends every client, spelled as the real one spells it.

The simulated daemon (:mod:`recorder.simulator`) and the replay server that stands
in for a daemon (:mod:`recorder.replay.serve`) both answer with these.
"""

from __future__ import annotations

import json
from typing import Any, Final

# The first frame on every connection.
HEALTH_CHECK_FRAME: Final = '{"type":"health_check_response","healthy":true}'
PONG_FRAME: Final = '{"type":"pong"}'
# The error a daemon sends for a message it cannot read.
INVALID_FORMAT: Final = "Invalid message format"


def dumps(obj: Any) -> str:
    """Compact JSON like JSON.stringify: raw UTF-8, no spaces, keys in insertion order."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A client can smuggle lone surrogates in through \ud800 escapes; they
            # cannot go on the wire as UTF-8, so fall back to escaping everything.
            text = json.dumps(obj, separators=(",", ":"))
    return text


def error_frame(error: str) -> str:
    return dumps({"type": "error", "error": error})
