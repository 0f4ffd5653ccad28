"""The layers a frame passes through import only downwards: protocol < db < pipeline <
capture, then cleanup, replay, service, cli. Read from the source, imports inside
functions included (the lazy ones are imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

import recorder

LAYERS = ["protocol", "db", "pipeline", "capture", "cleanup", "replay", "service", "cli"]
ROOT = Path(recorder.__file__).parent


def imported(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_no_import_runs_back_up_the_layers() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for line, module in imported(path):
                parts = module.split(".")
                if (
                    parts[0] == "recorder"
                    and len(parts) > 1
                    and rank.get(parts[1], -1) > rank[layer]
                ):
                    upward.append(f"{path.relative_to(ROOT.parent)}:{line} imports {module}")
    assert upward == []
