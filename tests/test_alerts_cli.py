"""`recorder alerts`: what was raised and what each target answered; `alerts rules`,
the rules as loaded, their targets masked; `alerts test`, a notification now."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from recorder.cli import cli
from recorder.db.alerts import RaisedAlert
from recorder.pipeline.alert_ops import RaiseAlerts, RecordDelivery
from recorder.times import now_us
from tests.alert_hooks import Hook, Recorded
from tests.helpers import writer_database

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


def stored_alerts(db: Path) -> None:
    """Two alerts in the outbox: one delivered to ops, one tried and due again."""

    async def write() -> None:
        db_, store, _ = await writer_database(f"sqlite:///{db}")
        try:
            w = Recorded(db_, store)
            raised = [
                RaisedAlert(
                    "session-failed",
                    "alert",
                    "s-1",
                    "once",
                    "session failed",
                    '"disk <full>"',
                    "s-1",
                    now_us(),
                    notify=("ops",),
                ),
                RaisedAlert(
                    "destructive-shell",
                    "alert",
                    "s-2",
                    "once",
                    "tool run_shell called",
                    '{"command":"rm -rf /"}',
                    "s-2",
                    now_us(),
                    notify=("phone",),
                ),
            ]
            first, second = await w.perform(RaiseAlerts(tuple(raised), now_us()))
            await w.perform(RecordDelivery(first, "ops", 1, now_us(), True, "success: Sent", 0))
            await w.perform(
                RecordDelivery(second, "phone", 1, now_us(), False, "failure: refused", now_us())
            )
        finally:
            await db_.shutdown()

    asyncio.run(write())


def test_raised_alerts_are_listed_with_what_each_target_answered(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    stored_alerts(db)
    runner = CliRunner()
    table = runner.invoke(cli, ["alerts", "--database", str(db)])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "destructive-shell" in lines[1] and "phone 1 tries, next" in lines[1]
    assert "session-failed" in lines[2] and "ops delivered" in lines[2]
    found = json.loads(
        runner.invoke(cli, ["alerts", "--database", str(db), "--format", "json"]).output
    )
    assert [a["rule"] for a in found] == ["destructive-shell", "session-failed"]
    assert found[1]["targets"] == [
        {
            "target": "ops",
            "delivered": True,
            "attempts": 1,
            "next": None,
            "last_answer": "success: Sent",
        }
    ]
    assert found[0]["deliveries"][0]["ok"] is False and found[1]["text"] == '"disk <full>"'
    only = runner.invoke(cli, ["alerts", "--database", str(db), "--rule", "session-failed"])
    assert "destructive-shell" not in only.output and "session-failed" in only.output
    bad = runner.invoke(cli, ["alerts", "--database", str(db), "--since", "nonsense"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


async def test_a_test_notification_goes_to_each_target_of_the_rule(tmp_path: Path) -> None:
    hook = await Hook().start()
    down = Hook()  # never started: its port refuses
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\n'
        f'[alerts.targets]\nops = "{hook.url()}"\nphone = "{down.url("s3cr3t")}"\n'
        '[[alerts.rules]]\nname = "up"\nwhen = { session_status = ["failed"] }\nnotify = ["ops"]\n'
        '[[alerts.rules]]\nname = "both"\nwhen = { session_status = ["failed"] }\n'
        'notify = ["ops", "phone"]\n'
    )
    runner = CliRunner()
    try:
        ok = await asyncio.to_thread(
            runner.invoke, cli, ["alerts", "test", "up", "-c", str(config)]
        )
        post = await hook.next_post()
        both = await asyncio.to_thread(
            runner.invoke, cli, ["alerts", "test", "both", "-c", str(config)]
        )
        await hook.next_post()
    finally:
        await hook.stop()
    assert (
        ok.exit_code == 0
        and ok.output.startswith("ops (json://127.0.0.1:")
        and ": ok:" in ok.output
    )
    assert post["title"] == "up: test" and "test notification" in post["message"]
    assert both.exit_code == 1 and "phone" in both.output and "FAILED" in both.output
    assert "s3cr3t" not in both.output
    unknown = runner.invoke(cli, ["alerts", "test", "nope", "-c", str(config)])
    assert unknown.exit_code == 2 and "no alert rule named 'nope'" in unknown.output
