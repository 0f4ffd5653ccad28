"""[alerts] in the configuration: through the real loader and the real command. Bad
rules stop loading with one line naming the rule and the key (exit 2); a target's
URL is a secret that no message, repr or listing repeats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recorder.alerts.spec import Rule, When
from recorder.config import ConfigError, load_config

SECRET = "tk_9f8e7d6c5b4a"
TARGETS = f"""
[alerts.targets]
phone = "ntfy://${{NTFY_TOKEN}}@ntfy.example.net/agents"
ops = "json://127.0.0.1:9000/hook/{SECRET}"
"""
ISSUE_RULES = """
[[alerts.rules]]
name = "session-failed"
when = { session_status = ["failed"] }
notify = ["phone", "ops"]

[[alerts.rules]]
name = "destructive-shell"
when = { tool = "run_shell", input_matches = "rm\\\\s+-rf" }
notify = ["phone"]

[[alerts.rules]]
name = "daemon-unreachable"
when = { link_down_for = "5m" }
notify = ["ops"]
repeat = "1h"
resolve = true

[[alerts.rules]]
name = "disk"
when = { disk_free_below = "2GB" }
notify = []
"""
ENV = {"HOME": "/h", "NTFY_TOKEN": SECRET}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recorder.toml"
    path.write_text(text)
    return path


def test_targets_and_rules_load_with_secrets_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TARGETS + ISSUE_RULES), env=ENV)
    alerts = config.alerts
    phone, ops = alerts.targets
    assert phone.url == f"ntfy://{SECRET}@ntfy.example.net/agents"
    assert (phone.masked, ops.masked) == (
        "ntfy://***@ntfy.example.net/***",
        "json://127.0.0.1:9000/***",
    )
    assert [r.name for r in alerts.rules] == [
        "session-failed",
        "destructive-shell",
        "daemon-unreachable",
        "disk",
    ]
    failed, shell, link, disk = alerts.rules
    assert failed == Rule(
        "session-failed", When("session_status", values=("failed",)), ("phone", "ops")
    )
    assert shell.when.tool == "run_shell" and shell.when.matches is not None
    assert shell.when.matches.search('{"command":"rm  -rf /"}')
    assert (link.when.kind, link.when.seconds, link.repeat, link.resolve) == (
        "link_down_for",
        300.0,
        3600.0,
        True,
    )
    assert (disk.when.size, disk.notify, disk.condition) == (2 * 10**9, (), True)
    # A secret is not in the configuration's repr (a log line, a traceback).
    assert SECRET not in repr(config)


def test_web_public_url(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[web]\npublic_url = "https://rec.example.net/console/"\n'), env=ENV
    )
    assert config.web.public_url == "https://rec.example.net/console/"
    for bad, said in (
        ("ftp://rec.example.net", "expected http(s)://host[/path]"),
        ("https://u:pw@rec.example.net", "no credentials, query or fragment"),
        ("https://rec.example.net/?token=x", "no credentials, query or fragment"),
    ):
        with pytest.raises(ConfigError, match=r"web\.public_url: ") as caught:
            load_config(write(tmp_path, f'[web]\npublic_url = "{bad}"\n'), env=ENV)
        assert said in str(caught.value) and "pw" not in str(caught.value)


RULE = '[[alerts.rules]]\nname = "r"\nnotify = ["ops"]\n'


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[alerts.rules]]\nname = "destructive-shell"\nnotify = []\n'
            'when = { tool = "run_shell", input_matches = "rm(-rf" }\n',
            "alerts.rules[destructive-shell].when.input_matches: bad regex 'rm(-rf': "
            "missing ): rm(-rf (RE2 syntax)",
        ),
        (RULE, 'alerts.rules[r].when: expected a table, like { session_status = ["failed"] }'),
        (RULE + "when = {}\n", "alerts.rules[r].when: expected exactly one condition, got none"),
        (
            RULE + 'when = { session_status = ["failed"], task_status = ["failed"] }\n',
            "alerts.rules[r].when: expected exactly one condition, got session_status and "
            "task_status",
        ),
        (
            RULE + 'when = { status = ["failed"] }\n',
            "alerts.rules[r].when: unknown condition 'status' (known: session_status, "
            "task_status, error_reply, tool, frame_type, unknown_type, link_down_for, "
            "silent_for, recording_behind, writer_fault, db_size_above, disk_free_below)",
        ),
        (
            RULE + 'when = { session_status = ["failed"], input_matches = "x" }\n',
            "alerts.rules[r].when.input_matches: goes with tool, not session_status",
        ),
        (
            RULE + "when = { session_status = [] }\n",
            "alerts.rules[r].when.session_status: the list is empty",
        ),
        (
            RULE + "when = { error_reply = false }\n",
            'alerts.rules[r].when.error_reply: expected true or a table { matches = "regex" }',
        ),
        (
            RULE + 'when = { error_reply = { match = "x" } }\n',
            "alerts.rules[r].when.error_reply: unknown key 'match' (known: matches)",
        ),
        (
            RULE + 'when = { link_down_for = "5 minutes" }\n',
            "alerts.rules[r].when.link_down_for: expected a duration like 30s, 15m, 12h, 7d or "
            "2w, got '5 minutes'",
        ),
        (
            RULE + 'when = { silent_for = "0s" }\n',
            "alerts.rules[r].when.silent_for: must be longer than 0s",
        ),
        (
            RULE + 'when = { db_size_above = "lots" }\n',
            "alerts.rules[r].when.db_size_above: expected a size like 500MB or 2GiB, got 'lots'",
        ),
        (
            RULE + "when = { writer_fault = 1 }\n",
            "alerts.rules[r].when.writer_fault: expected true",
        ),
        (
            '[[alerts.rules]]\nname = "r"\nwhen = { writer_fault = true }\nnotify = ["pager"]\n',
            "alerts.rules[r].notify: no target named 'pager' in [alerts.targets]",
        ),
        (
            '[[alerts.rules]]\nname = "r"\nwhen = { writer_fault = true }\n',
            "alerts.rules[r].notify: expected a list of target names ([] records only)",
        ),
        (
            RULE + 'when = { session_status = ["failed"] }\nresolve = true\n',
            "alerts.rules[r].resolve: only conditions resolve (link_down_for, silent_for, "
            "recording_behind, writer_fault, db_size_above, disk_free_below), not session_status",
        ),
        (
            RULE + 'when = { writer_fault = true }\nrepeat = "0s"\n',
            "alerts.rules[r].repeat: must be longer than 0s",
        ),
        (
            RULE + "when = { writer_fault = true }\nlevel = 1\n",
            "alerts.rules[r]: unknown key 'level' (known: name, when, notify, repeat, resolve)",
        ),
        (
            RULE + "when = { writer_fault = true }\n" + RULE + "when = { writer_fault = true }\n",
            "alerts.rules[r]: the name is used twice",
        ),
        (
            "[[alerts.rules]]\nwhen = { writer_fault = true }\nnotify = []\n",
            "alerts.rules[0].name: needs a name",
        ),
        ("[alerts]\nrule = []\n", "unknown key 'alerts.rule'"),
    ],
)
def test_a_bad_rule_is_one_line_naming_the_rule_and_the_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = write(tmp_path, TARGETS + toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=ENV)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("value", "env", "message"),
    [
        (
            '"ntfy://${NTFY_TOKEN}@h.example/t"',
            {},
            "the environment variable NTFY_TOKEN is not set",
        ),
        (
            '"ntfy://${NTFY_TOKEN}@h.example/t"',
            {"NTFY_TOKEN": "  "},
            "the environment variable NTFY_TOKEN is not set",
        ),
        (
            f'"ntfy://${{ntfy-token}}@{SECRET}/t"',
            {},
            "${...} must name an environment variable, like ${NTFY_URL}",
        ),
        (f'"{SECRET}"', {}, "expected an Apprise URL like ntfy://host/topic"),
        (f'"json://h.example/{SECRET} x"', {}, "expected an Apprise URL like ntfy://host/topic"),
        ('"${OPS_URL}"', {"OPS_URL": f"{SECRET} is not a url"}, "expected an Apprise URL like"),
        ("7", {}, "expected an Apprise URL (a string)"),
    ],
)
def test_a_bad_target_is_refused_without_its_secret(
    tmp_path: Path, value: str, env: dict[str, str], message: str
) -> None:
    path = write(tmp_path, f"[alerts.targets]\nops = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"HOME": "/h", **env})
    said = str(caught.value)
    assert said.startswith(f"{path}: alerts.targets.ops: {message}")
    assert SECRET not in said and "\n" not in said


def test_a_bad_rule_stops_the_real_process_with_one_line_and_no_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        TARGETS
        + '[[alerts.rules]]\nname = "destructive-shell"\nnotify = ["ops"]\n'
        + 'when = { tool = "run_shell", input_matches = "rm\\\\s+-rf(" }\n',
    )
    db = tmp_path / "should-not-exist.db"
    proc = subprocess.run(
        [sys.executable, "-m", "recorder", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**ENV, "PATH": "/usr/bin:/bin", "RECORDER_DATABASE_URL": f"sqlite:///{db}"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: {path}: alerts.rules[destructive-shell].when.input_matches: bad regex "
        "'rm\\\\s+-rf(': missing ): rm\\s+-rf( (RE2 syntax)"
    ]
    assert SECRET not in proc.stdout + proc.stderr and not db.exists()
