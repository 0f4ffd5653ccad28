"""Configuration: defaults, environment, and one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recorder.addresses import default_state_dir, redact_url
from recorder.cli import cli
from recorder.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_without_a_file() -> None:
    config = load_config(None, env={"HOME": "/home/ann"})
    assert config.daemon.url == "ws://localhost:8787"
    assert (
        config.reconnect.base == 3 and config.reconnect.factor == 2 and config.reconnect.cap == 30
    )
    assert config.reconnect.max_attempts == 0 and config.reconnect.stable_after == 60
    assert config.heartbeat.interval == 30 and config.heartbeat.timeout == 10
    assert config.daemon.max_frame_bytes == 64 * 1024 * 1024
    assert config.storage.commit_interval == 1.0
    assert (
        config.storage.url
        == "sqlite+aiosqlite:////home/ann/.local/state/orchestrator-recorder/recorder.db"
    )


def test_example_config_is_complete_and_equals_the_defaults() -> None:
    example = load_config(ROOT / "config.example.toml", env={"HOME": "/h"})
    defaults = load_config(None, env={"HOME": "/h"})
    assert example.daemon == defaults.daemon and example.storage == defaults.storage
    assert example.reconnect == defaults.reconnect and example.heartbeat == defaults.heartbeat
    assert example.cleanup == defaults.cleanup and example.alerts == defaults.alerts
    assert example.web.public_url == defaults.web.public_url == ""
    assert example.report == defaults.report
    text = (ROOT / "config.example.toml").read_text()
    from recorder.config import SECTIONS

    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for name in cls.__dataclass_fields__:
            if (section, name) == ("cleanup", "policies"):
                assert "# [[cleanup.policies]]" in text  # an array of tables, shown commented
                continue
            if section == "alerts":  # tables, shown commented
                assert {"targets": "# [alerts.targets]", "rules": "# [[alerts.rules]]"}[
                    name
                ] in text
                continue
            line = next(ln for ln in text.splitlines() if ln.startswith(f"{name} ="))
            assert "#" in line, f"{section}.{name} has no comment"


def test_state_directory_precedence() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/rec:/other", "HOME": "/h"}) == Path(
        "/var/lib/rec"
    )
    assert default_state_dir({"XDG_STATE_HOME": "/x", "HOME": "/h"}) == Path(
        "/x/orchestrator-recorder"
    )
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/orchestrator-recorder")


def test_environment_supplies_secrets_and_database(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\ntoken = "from-file"\n')
    config = load_config(
        cfg,
        env={
            "RECORDER_DAEMON_TOKEN": "tok",
            "RECORDER_DAEMON_API_KEY": "key",
            "RECORDER_DATABASE_URL": "postgresql://u:pw@127.0.0.1/test",
        },
    )
    assert config.daemon.token == "tok" and config.daemon.api_key == "key"
    assert config.storage.url == "postgresql+asyncpg://u:pw@127.0.0.1/test"
    assert "tok" not in repr(config) and "key" not in repr(config.daemon)


@pytest.mark.parametrize(
    ("toml", "env", "dotted"),
    [
        ('[metrics]\ntoken = "S\u00e9cret"\n', {}, "metrics.token"),
        ("", {"RECORDER_PROXY_TOKEN": "caf\u00e9"}, "proxy.token"),
        ('[daemon]\ntoken = "a\\u0007b"\n', {}, "daemon.token"),
    ],
)
def test_a_secret_that_is_not_printable_ascii_is_refused_without_being_shown(
    tmp_path: Path, toml: str, env: dict[str, str], dotted: str
) -> None:
    """Header values are ASCII: "S\u00e9cret" passed the load and then every client sending
    it as UTF-8 got 401 for ever (only its Latin-1 bytes matched)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env=env)
    assert (
        str(err.value) == f"{cfg}: {dotted}: must be printable ASCII (it is sent in an HTTP header)"
    )


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\nurl = "wss://daemon.example:9000/ws"\n')
    assert (
        load_config(None, env={"RECORDER_CONFIG": str(cfg)}).daemon.url
        == "wss://daemon.example:9000/ws"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[daemon]\nurll = 'ws://x'\n", "unknown key 'daemon.urll'"),
        ("[deamon]\nurl = 'ws://x'\n", "unknown section or key 'deamon'"),
        ("daemon = 3\n", "daemon must be a table"),
        (
            "[heartbeat]\ninterval = 'often'\n",
            "heartbeat.interval: expected a number, got a string 'often'",
        ),
        ("[storage]\nbatch_size = 1.5\n", "storage.batch_size: expected an integer"),
        (
            "[storage]\nbatch_size = true\n",
            "storage.batch_size: expected an integer, got a boolean",
        ),
        ("[heartbeat]\ninterval = -5\n", "heartbeat.interval: must be greater than 0, got -5.0"),
        ("[reconnect]\nmax_attempts = -1\n", "reconnect.max_attempts: must not be negative"),
        (
            "[daemon]\nurl = 'http://localhost:8787'\n",
            "daemon.url: must start with ws:// or wss://",
        ),
        ("[daemon]\nurl = 'ws://'\n", "daemon.url: no host"),
        ("[daemon]\nurl = 'ws://host:99999'\n", "daemon.url: not a valid URL"),
        ("[storage]\nurl = 'mysql://x/y'\n", "storage.url: unsupported database 'mysql'"),
        ("[storage]\nurl = 'not a url'\n", "storage.url: not a database URL"),
        ("[log]\nlevel = 'loud'\n", "log.level: must be one of"),
        ("[daemon\n", "not valid TOML"),
        ("[daemon]\nca_file = '/nonexistent/ca.pem'\n", "daemon.ca_file: no such file"),
        ("[storage]\ninstance = ''\n", "storage.instance: must be 1 to 64 printable"),
        ('[storage]\ninstance = "a\\u0007b"\n', "storage.instance: must be 1 to 64 printable"),
        (
            "[[cleanup.policies]]\nname = 'p'\nschedule = 'every 0s'\naction = 'purge'\n",
            "cleanup.policies[p].schedule: the interval must be greater than 0",
        ),
        # An OverflowError from APScheduler before (found probing bad input).
        (
            "[[cleanup.policies]]\nname = 'p'\nschedule = 'every 1000000000d'\naction = 'purge'\n",
            "cleanup.policies[p].schedule: '1000000000d' is longer than a century",
        ),
        (
            "[[cleanup.policies]]\nname = 'p'\nschedule = 'every 1h'\naction = 'purge'\n"
            f"[cleanup.policies.when]\nidle_for = '{'9' * 400}s'\n",
            "cleanup.policies[p].when.idle_for: '" + "9" * 400 + "s' is longer than a century",
        ),
        # The writer's start failed on it before: Python's words, exit 1.
        (
            "[storage]\nurl = 'postgresql://u:PW@127.0.0.1:notaport/x'\n",
            "storage.url: the port is not a number 0-65535: 'postgresql://u:***@127.0.0.1:notaport/x'",
        ),
        (
            '[[cleanup.policies]]\nname = "a\\u001b[2J"\nschedule = "every 1h"\naction = "purge"\n',
            "cleanup.policies[0].name: must be printable, not blank: 'a\\x1b[2J'",
        ),
        (
            "[[cleanup.policies]]\nname = '   '\nschedule = 'every 1h'\naction = 'purge'\n",
            "cleanup.policies[0].name: must be printable, not blank: '   '",
        ),
        # An ssl.SSLError traceback at the first connection before.
        ("[daemon]\nca_file = '/etc/hostname'\n", "daemon.ca_file: '/etc/hostname' holds no"),
    ],
)
def test_bad_config_names_the_file_and_the_key(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={})
    text = str(err.value)
    assert text.startswith(f"{cfg}: ") and message in text and "\n" not in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[heartbeat]\ntimeout = -1\n")
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"Error: {cfg}: heartbeat.timeout: must be greater than 0, got -1.0"
    )


def test_bad_config_stops_the_real_process_before_anything_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    db = tmp_path / "should-not-exist.db"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\nbatch_size = "many"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "recorder", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"Error: {cfg}: storage.batch_size: expected an integer, got a string 'many'"]
    assert not db.exists()


def test_redact_url_hides_credentials() -> None:
    assert redact_url("ws://h:1/p?token=abc&x=1&apiKey=k") == "ws://h:1/p?token=***&x=1&apiKey=***"
    assert redact_url("postgresql+asyncpg://u:secret@h/db") == "postgresql+asyncpg://u:***@h/db"
    assert redact_url("sqlite+aiosqlite:////abs/path.db") == "sqlite+aiosqlite:////abs/path.db"
