"""`recorder alerts rules`: the rules as loaded, their targets masked."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from recorder.cli import cli

CONFIG = """
[storage]
url = "sqlite:///{db}"

[alerts.targets]
phone = "ntfy://s3cr3t-user@ntfy.example.net/agents-s3cr3t"
ops = "json://127.0.0.1:9000/hook?token=s3cr3t-token"

[[alerts.rules]]
name = "session-failed"
when = {{ session_status = ["failed"] }}
notify = ["phone", "ops"]

[[alerts.rules]]
name = "destructive-shell"
when = {{ tool = "run_shell", input_matches = "rm\\\\s+-rf" }}
notify = ["phone"]
repeat = "1h"

[[alerts.rules]]
name = "link-down"
when = {{ link_down_for = "10m" }}
notify = ["ops"]
resolve = true
"""


def test_rules_are_listed_with_their_targets_masked(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(db=tmp_path / "r.db"))
    runner = CliRunner()
    table = runner.invoke(cli, ["alerts", "rules", "-c", str(config)])
    as_json = runner.invoke(cli, ["alerts", "rules", "-c", str(config), "--format", "json"])
    assert table.exit_code == 0 and as_json.exit_code == 0, table.output + as_json.output
    assert "s3cr3t" not in table.output + as_json.output
    found = json.loads(as_json.output)
    assert [r["name"] for r in found] == ["session-failed", "destructive-shell", "link-down"]
    assert found[0]["when"] == "session_status failed"
    assert [t["name"] for t in found[0]["notify"]] == ["phone", "ops"]
    assert (
        found[0]["notify"][0]["url"].startswith("ntfy://") and "***" in found[0]["notify"][0]["url"]
    )
    assert (
        found[1]["when"] == "tool run_shell, matching /rm\\s+-rf/" and found[1]["repeat_s"] == 3600
    )
    assert found[2] | {"notify": []} == {
        "name": "link-down",
        "when": "link_down_for 600 s",
        "kind": "link_down_for",
        "notify": [],
        "repeat_s": None,
        "resolve": True,
    }
    assert "destructive-shell" in table.output and "link_down_for 600 s" in table.output
    empty = tmp_path / "e.toml"
    empty.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\n')
    none = runner.invoke(cli, ["alerts", "rules", "-c", str(empty)])
    assert none.exit_code == 0 and "no alert rules" in none.output
