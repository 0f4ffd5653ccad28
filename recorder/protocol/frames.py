"""A frame as it crossed the wire, before anything reads it."""

from __future__ import annotations

from typing import Final, NamedTuple

# Direction, as stored in frames.direction: "in" from the daemon (or the upstream),
# "out" to it (for a proxied conversation: what the UI sent).
IN = "in"
OUT = "out"

# WebSocket opcodes, as stored in frames.opcode.
OPCODE_TEXT = 1
OPCODE_BINARY = 2


class Frame(NamedTuple):
    """One frame as it crossed the wire, before classification.

    The hot paths (link, proxy) build plain tuples in this field order, which are
    several times cheaper to make and to pickle; code downstream reads them with
    the ``F_*`` positions below.
    """

    connection_id: int
    seq: int
    direction: str
    received_us: int
    monotonic_ns: int
    is_text: bool
    data: bytes


# A frame as the hot paths build it: the fields of Frame, in order, in a plain tuple.
FrameTuple = tuple[int, int, str, int, int, bool, bytes]
# Field positions, for code that handles frames as plain tuples (Final, so that the
# type checker knows each field's type).
F_CONNECTION: Final = 0
F_SEQ: Final = 1
F_DIRECTION: Final = 2
F_RECEIVED: Final = 3
F_MONOTONIC: Final = 4
F_IS_TEXT: Final = 5
F_DATA: Final = 6
