"""How the benchmarks summarize: medians over repeats, the machine, the code measured."""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import sys
from collections.abc import Iterable
from typing import Any

from harness import REPO


def median_known(values: Iterable[float | None]) -> float:
    """The median of the values that were measured (not None, not NaN); NaN for none."""
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(known) if known else float("nan")


median = median_known


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"nproc": os.cpu_count(), "python": sys.version.split()[0]}


def source_digest() -> str:
    """Which recorder code was measured: SHA-256 over every recorder/**/*.py, as its path
    relative to recorder/ and its bytes, in path order (12 hex digits)."""
    root = REPO / "recorder"
    h = hashlib.sha256()
    for rel in sorted(path.relative_to(root).as_posix() for path in root.rglob("*.py")):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
    return h.hexdigest()[:12]


def print_rows(rows: list[tuple[str, str]]) -> None:
    """Named values, one a line, the values lined up."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
