"""What a frame's page shows of its payload, bounded whatever the frame's size: JSON
pretty-printed, other text as it is, binary as a hex dump and base64. Pure functions
over a frame's head (its first bytes, :meth:`Recordings.frame_head`)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

from recorder.cli.render import frame_text
from recorder.db.rows import Frame
from recorder.protocol.frames import OPCODE_TEXT

# Text shown of a text frame (and the largest pretty-printed): what a page can hold.
TEXT_SHOWN = 256 * 1024
# Bytes of a binary frame shown as hex and as base64.
BINARY_SHOWN = 16 * 1024
HEX_ROW = 16
# A lone surrogate: JSON may escape one ("\\ud800"), UTF-8 cannot encode it.
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Shown:
    """A payload as the page shows it: ``kind`` is json, text or binary."""

    kind: str
    text: str = ""
    hex: str = ""
    b64: str = ""
    # Bytes of the frame shown, of ``size``: less says the rest is in the download.
    shown: int = 0
    size: int = 0

    @property
    def cut(self) -> bool:
        return self.shown < self.size


def shown(head: Frame) -> Shown:
    """What a page shows of the frame whose head (text or bytes cut to TEXT_SHOWN
    characters or bytes) is ``head``."""
    text = _text(head)
    if text is None:
        data = bytes(head.payload_bytes or b"")[:BINARY_SHOWN]
        return Shown(
            "binary",
            hex=hex_dump(data),
            b64=base64.b64encode(data).decode(),
            shown=len(data),
            size=head.size,
        )
    text = text[:TEXT_SHOWN]
    size = len(text.encode())
    if size >= head.size:
        pretty = pretty_json(text)
        if pretty is not None:
            return Shown("json", text=pretty, shown=size, size=head.size)
    return Shown("text", text=text, shown=size, size=head.size)


def _text(head: Frame) -> str | None:
    """The head's text: a text frame's, whole or cut; None for bytes that are not text.
    A head cut inside a character keeps the characters before it."""
    if head.payload is not None or head.opcode != OPCODE_TEXT:
        return frame_text(head)
    data = bytes(head.payload_bytes or b"")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        # Cut inside its last character: the head of valid text. Anything else is not.
        if exc.start >= len(data) - 3 and len(data) < head.size:
            try:
                return data[: exc.start].decode()
            except UnicodeDecodeError:
                return None
        return None


def pretty_json(text: str) -> str | None:
    """``text`` indented, if it is JSON; None if not (or too deep to walk). A lone
    surrogate the JSON escaped stays escaped, as it was sent: the page is UTF-8."""
    try:
        pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return None
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", pretty)


def hex_dump(data: bytes) -> str:
    """Lines of offset, 16 bytes in hex and what is printable of them as ASCII."""
    lines = []
    for at in range(0, len(data), HEX_ROW):
        row = data[at : at + HEX_ROW]
        hexed = " ".join(f"{b:02x}" for b in row)
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{at:08x}  {hexed:<{HEX_ROW * 3 - 1}}  |{ascii_}|")
    return "\n".join(lines)
