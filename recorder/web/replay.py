"""A session's replay in the browser (``/sessions/{id}/replay``) and the pages of
cues its player reads (``/api/sessions/{id}/replay``...). Not built yet."""

from __future__ import annotations

from recorder.web.render import Endpoint, Reader


def pages(reads: Reader) -> dict[str, Endpoint]:
    """Session pages by what follows the id: {"replay": ...}."""
    return {}


def api(reads: Reader) -> dict[str, Endpoint]:
    """Session JSON by what follows the id."""
    return {}
