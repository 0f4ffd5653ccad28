"""`recorder cleanup policies` beside a running recorder: what the recorder has loaded
(it says so in its heartbeat row), the file's edits it has not reloaded marked as
such, conditions written as in the file and times ending in Z. The service runs in
this event loop; the command is a real process."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recorder.config import Config
from tests.cleanup_scripts import policy, with_policies
from tests.conftest import running

TIMEOUT = 20
Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def policies(config: Config | None, *args: str) -> tuple[int, str, str]:
    given = ["--config", config.source] if config is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder",
        "cleanup",
        "policies",
        *given,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def listed(config: Config) -> list[dict[str, Any]]:
    code, out, err = await policies(config, "--json")
    assert code == 0, err
    found: list[dict[str, Any]] = json.loads(out)
    return found


async def test_policies_are_the_running_recorders_and_edits_are_marked(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    stop = policy("stop", "stop_session", 'status = ["completed", "failed"], idle_for = "30s"')
    config = with_policies(make_config("ws://127.0.0.1:9"), stop)
    async with running(config) as svc:
        (loaded,) = await listed(config)
        assert loaded["when"] == 'status = ["completed", "failed"], idle_for = "30s"'
        assert (loaded["loaded"], loaded["file"]) == (True, "same")
        assert Z_TIME.match(loaded["next_run"])

        # Edited, not reloaded: the recorder still runs what it loaded, and says so.
        path = Path(config.source)
        path.write_text(
            path.read_text().replace('"30s"', '"45s"')
            + policy("purge-old", "purge", 'ended_before = "7d"', dry_run=True)
        )
        code, out, err = await policies(config, "--json")
        assert code == 0, err
        stop_row, new_row = json.loads(out)
        assert stop_row["when"].endswith('idle_for = "30s"') and stop_row["file"] == "changed"
        assert (new_row["name"], new_row["loaded"], new_row["file"]) == (
            "purge-old",
            False,
            "added",
        )
        assert new_row["when"] == 'ended_before = "7d"' and new_row["next_run"] is None
        assert "2 edit(s) in" in err and "not loaded by the running recorder" in err
        # Asked with another configuration (none: just the database), the recorder's
        # own file is what its edits are read from.
        code, out, err = await policies(None, "--database", str(db_path), "--json")
        assert code == 0 and [r["file"] for r in json.loads(out)] == ["changed", "added"]
        assert f"2 edit(s) in {config.source}" in err
        code, table, _ = await policies(config)
        lines = table.splitlines()
        assert lines[0].split() == ["POLICY", "ACTION", "SCHEDULE", "NEXT", "RUN", "FILE", "WHEN"]
        assert "edited, not reloaded" in lines[1] and 'idle_for = "30s"' in lines[1]
        assert "purge (dry run)" in lines[2] and "not loaded" in lines[2]
        assert "added, not reloaded" in lines[2]
        assert "+00:00" not in table and "idle_for=" not in table

        await svc.reload()  # what SIGHUP does
        after = await listed(config)
        assert [(r["name"], r["file"], r["loaded"]) for r in after] == [
            ("stop", "same", True),
            ("purge-old", "same", True),
        ]
        assert after[0]["when"].endswith('idle_for = "45s"')
        assert all(Z_TIME.match(r["next_run"]) for r in after)

    # Stopped: the file's policies, as a recorder started with it would load them.
    code, out, err = await policies(config, "--json")
    assert code == 0
    assert err == f"no recorder is running on {db_path}: the policies in {config.source}\n"
    assert [r["name"] for r in json.loads(out)] == ["stop", "purge-old"]
    assert all("file" not in r for r in json.loads(out))
