"""The replay page of the busiest session in Chromium: time from ``goto`` to its first
cue's text, and the page's JS heap. NOT MEASURED YET: ``/sessions/{id}/replay`` is
being built on branch web-replay; until main serves it, this says so and measures
nothing (its targets are left out, not failed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from web_common import Served

TARGET_START_S = 1.0
TARGET_HEAP_MB = 200.0


def measure(served: Served, root: Path) -> dict[str, Any]:
    return {"skipped": "/sessions/{id}/replay is not on main yet (branch web-replay)"}


def headline(replay: dict[str, Any]) -> dict[str, str]:
    if "skipped" in replay:
        return {"replay": f"skipped: {replay['skipped']}"}
    return {
        "replay": f"first cue {replay['first_cue_s'] * 1e3:.0f} ms, JS heap {replay['heap_mb']:.0f} MB"
    }


def targets(replay: dict[str, Any]) -> dict[str, bool]:
    if "skipped" in replay:
        return {}
    return {
        "replay_start_lt_1s": replay["first_cue_s"] < TARGET_START_S,
        "replay_heap_lt_200MB": replay["heap_mb"] < TARGET_HEAP_MB,
    }
