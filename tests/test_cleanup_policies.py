"""Cleanup policies: matching (pure), durations and sizes, what a configuration may
say of them, and a file or a reload that leaves none."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from recorder.cleanup.actions import decide
from recorder.cli import cli
from recorder.config import Config, ConfigError, load_config
from recorder.protocol.policy import (
    Conditions,
    MatchState,
    Policy,
    SessionFacts,
    parse_duration,
    parse_size,
)
from recorder.protocol.statuses import TERMINAL_STATUSES
from tests.cleanup_scripts import config_file, policy, with_policies
from tests.conftest import running

NOW = 1_795_700_000_000_000
MIN = 60_000_000


def facts(
    sid: str, status: str | None, *, started: int, ended: int | None = None, frames: int = 10
) -> SessionFacts:
    finished = ended if status in TERMINAL_STATUSES else None
    return SessionFacts(
        sid, status, "vp_1", "claude-code", started, ended or started, finished, frames
    )


# --- pure ---------------------------------------------------------------------------


def test_durations_and_sizes() -> None:
    assert parse_duration("90s") == 90 and parse_duration("7d") == 7 * 86400
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("500MB") == 500 * 10**6
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_conditions_keep_last_pins_active_and_grace() -> None:
    sessions = [
        facts("a", "completed", started=NOW - 90 * MIN, ended=NOW - 80 * MIN),
        facts("b", "completed", started=NOW - 70 * MIN, ended=NOW - 60 * MIN),
        facts("c", "completed", started=NOW - 50 * MIN, ended=NOW - 40 * MIN),
        facts("d", "failed", started=NOW - 30 * MIN, ended=NOW - 20 * MIN, frames=2),
        facts("e", "running", started=NOW - 10 * MIN),
    ]
    policy = Policy("p", "every 1h", "purge", Conditions(ended_before=30 * 60), keep_last=1)
    got = {d.session_id: d.verdict for d in decide(policy, sessions, NOW, pinned=frozenset({"a"}))}
    # c is the newest match and kept; a is pinned; d and e never matched (too recent).
    assert got == {"c": "kept", "b": "act", "a": "pinned"}
    both = Policy(
        "q", "every 1h", "purge", Conditions(status=("completed", "failed"), max_frames=5)
    )
    assert [d.session_id for d in decide(both, sessions, NOW)] == ["d"]
    running_too = Policy("r", "every 1h", "compact", Conditions(started_before=5 * 60))
    assert {d.session_id: d.verdict for d in decide(running_too, sessions, NOW)}["e"] == "active"
    # The grace window: a destructive action waits until the match is old enough.
    first = {"b": MatchState(NOW - 5 * MIN), "c": MatchState(NOW - 50 * MIN)}
    plain = Policy("s", "every 1h", "purge", Conditions(status=("completed",)))
    graced = decide(plain, sessions, NOW, matched=first, grace=10 * 60)
    assert {d.session_id: d.verdict for d in graced} == {"c": "act", "b": "grace", "a": "grace"}
    stop = Policy("t", "every 1h", "stop_session", Conditions(status=("completed",)))
    assert all(d.verdict == "act" for d in decide(stop, sessions, NOW, grace=10 * 60))


POLICY = """
[[cleanup.policies]]
name = "{name}"
schedule = "{schedule}"
action = "{action}"
when = {{ {when} }}
"""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"action": "nuke"},
            "cleanup.policies[p].action: expected one of stop_session, purge, compact",
        ),
        ({"schedule": "every soon"}, "cleanup.policies[p].schedule: expected a duration"),
        ({"schedule": "1 2 3"}, "cleanup.policies[p].schedule: expected five cron fields"),
        ({"when": 'colour = "red"'}, "cleanup.policies[p].when: unknown condition 'colour'"),
        (
            {"when": 'idle_for = "a while"'},
            "cleanup.policies[p].when.idle_for: expected a duration",
        ),
    ],
)
def test_a_bad_policy_names_itself_and_the_key(
    tmp_path: Path, fields: dict[str, str], message: str
) -> None:
    values = {
        "name": "p",
        "schedule": "every 5m",
        "action": "purge",
        "when": 'status = ["completed"]',
    }
    path = tmp_path / "c.toml"
    path.write_text(POLICY.format(**(values | fields)))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}: {message}")
    # `recorder run` stops on it before anything starts, exit 2.
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    "command",
    [["run"], ["cleanup", "policies"], ["cleanup", "run", "--dry-run"], ["cleanup", "run"]],
)
def test_a_cron_that_apscheduler_rejects_stops_recorder_run(
    tmp_path: Path, command: list[str]
) -> None:
    """`cleanup run` used to purge under a configuration the service refuses."""
    path = tmp_path / "c.toml"
    path.write_text(
        POLICY.format(name="p", schedule="61 * * * *", action="purge", when="")
        + f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\n'
    )
    result = CliRunner().invoke(cli, [*command, "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {path}: cleanup.policies[p].schedule: ")


def test_the_example_policies_load(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "config.example.toml").read_text()
    head, _, policies = text.partition("[cleanup]")
    example = re.compile(r"^# (\[\[|\w+ = )")
    uncommented = "\n".join(
        line[2:] if example.match(line) else line for line in policies.splitlines()
    )
    uncommented = head + "[cleanup]" + uncommented
    path = tmp_path / "c.toml"
    path.write_text(uncommented)
    config = load_config(path, env={})
    assert [p.name for p in config.cleanup.policies] == [
        "stop-completed",
        "compact-old",
        "retention",
    ]
    result = CliRunner().invoke(cli, ["cleanup", "policies", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert all(p["next_run"] for p in json.loads(result.stdout))


def test_cleanup_policies_says_when_a_file_has_none(tmp_path: Path) -> None:
    db = tmp_path / "recorder.db"
    config = config_file(tmp_path, db)
    result = CliRunner().invoke(cli, ["cleanup", "policies", "--config", str(config)])
    assert result.exit_code == 0
    assert result.stderr == (
        f"no cleanup policies in {config}: a recorder running with it (or reloaded with it) "
        "stops, compacts and purges nothing\n"
    )


async def test_a_reload_that_drops_every_policy_says_what_it_removes(
    make_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGHUP with an emptied file silently dropped every policy ("policies: 0", at
    info). It is a warning naming what stops being done."""
    config = with_policies(
        make_config("ws://127.0.0.1:9", storage={"retention": "30d"}),
        policy("stop", "stop_session", 'status = ["completed"]'),
    )
    async with running(config) as svc:
        Path(config.source).write_text("")
        capsys.readouterr()
        await svc.reload()
        assert svc.cleanup is not None and svc.cleanup.policies == {}
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (reloaded,) = [e for e in lines if e["event"].startswith("configuration reloaded")]
    assert reloaded["event"] == "configuration reloaded; cleanup policies removed"
    assert reloaded["level"] == "warning"
    assert reloaded["removed"] == ["stop", "storage.retention"]
