"""The layers a frame passes through import only downwards: protocol < db < pipeline <
capture, then cleanup, replay, service, cli. Read from the source, imports inside
functions included (the lazy ones are imports too)."""

from __future__ import annotations

import ast
import re
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


# What deciding (or knowing) which database a URL names looks like in code.
BACKEND_TELLS = re.compile(
    r"\.dialect\.name|\bdialect\s*[!=]=|['\"](sqlite|postgres)|get_backend_name"
    r"|\bimport sqlite3\b|\basyncpg\b|sqlite_(file|path)"
)


def test_no_module_outside_db_decides_which_backend_a_url_names() -> None:
    """recorder/db/backend.py decides, once; the rest asks the Backend it returns."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.is_relative_to(ROOT / "db"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if BACKEND_TELLS.search(code):
                found.append(f"{path.relative_to(ROOT.parent)}:{number}: {line.strip()}")
    assert found == []
