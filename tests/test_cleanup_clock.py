"""What the cleanup must never let a daemon's clock decide (issue 17): the recorder's
times say what is old, on SQLite and in PostgreSQL's monthly partitions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from recorder.cli import cli
from recorder.protocol.frames import IN
from recorder.times import now_us
from tests.cleanup_scripts import DAY, SECOND, cli_json, config_file, policy, record, rows, status
from tests.helpers import writer_database

DAEMON_LONG_AGO = "2025-10-31T12:00:00.000Z"  # about 400 days before these tests run
DAEMON_FUTURE = "2126-01-01T00:00:00.000Z"


def test_a_daemon_clock_never_decides_what_cleanup_deletes(tmp_path: Path) -> None:
    """A session recorded seconds ago whose daemon says it ended 400 days back was
    purged by ended_before = 30d; one that ended 31 days ago on the recorder's clock,
    with a daemon endedAt in 2126, never matched. The recorder's times decide."""
    db = tmp_path / "recorder.db"
    now = now_us()
    long_ago = {"startedAt": DAEMON_LONG_AGO, "endedAt": DAEMON_LONG_AGO}
    script = [
        (now - 31 * DAY, IN, status("old", "running", startedAt=DAEMON_FUTURE)),
        (now - 31 * DAY + SECOND, IN, status("old", "completed", endedAt=DAEMON_FUTURE)),
        (now - 20 * SECOND, IN, status("recent", "running", startedAt=DAEMON_LONG_AGO)),
        (now - 10 * SECOND, IN, status("recent", "completed", **long_ago)),
    ]
    asyncio.run(record(f"sqlite:///{db}", script))
    ages = policy("older", "purge", 'started_before = "30d"', dry_run=True)
    ended = policy("ended", "purge", 'ended_before = "30d"')
    config = str(config_file(tmp_path, db, ages + ended))

    (dry,) = cli_json("cleanup", "run", "--config", config, "--policy", "older")
    assert dry["actions"] == [{"session": "old", "result": "would purge"}]
    (run,) = cli_json("cleanup", "run", "--config", config, "--policy", "ended")
    assert run["actions"] == [
        {
            "session": "old",
            "result": "purged 2 frames",
            "done": True,
            "bytes": run["actions"][0]["bytes"],
        }
    ]
    assert rows(db, "select id from sessions") == [("recent",)]
    # The daemon's times are still shown as the daemon said them.
    shown = cli_json("sessions", "--database", str(db))
    assert shown["started_at"].startswith("2025-10-31T12:00:00")
    # ...and where they stand far from the recorder's, `show` says so.
    daemon = 1_761_912_000_000_000  # DAEMON_LONG_AGO
    days, ended_days = (now - 20 * SECOND - daemon) / DAY, (now - 10 * SECOND - daemon) / DAY
    notes = cli_json("show", "--database", str(db), "recent")["clock_notes"]
    assert notes == [
        f"the daemon's startedAt is {days:,.1f} days before the recorder first saw it",
        f"the daemon's endedAt is {ended_days:,.1f} days before the recorder saw it end",
    ]
    text = CliRunner().invoke(cli, ["show", "--database", str(db), "recent"]).stdout
    assert f"clock     the daemon's startedAt is {days:,.1f} days before" in text


def test_retention_goes_by_the_recorder_clock_too(tmp_path: Path) -> None:
    db = tmp_path / "recorder.db"
    now = now_us()
    script = [
        (now - 40 * DAY, IN, status("due", "completed", endedAt=DAEMON_FUTURE)),
        (now - 5 * SECOND, IN, status("fresh", "completed", endedAt=DAEMON_LONG_AGO)),
    ]
    asyncio.run(record(f"sqlite:///{db}", script))
    config = str(config_file(tmp_path, db, storage='retention = "30d"'))
    (run,) = cli_json("cleanup", "run", "--config", config)
    assert run["policy"] == "storage.retention"
    assert [a["session"] for a in run["actions"]] == ["due"]
    assert rows(db, "select id from sessions") == [("fresh",)]


def test_retention_keeps_a_month_that_holds_a_session_that_ended_lately(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL drops a month's partition whole: not while it holds frames of a
    session that ended within the retention (it began long ago, it is not due)."""
    import asyncpg

    from recorder.db.partitions import months

    old = now_us() - 90 * DAY
    (name, low, high) = months(old, 1)[0]

    async def make() -> None:
        conn = await asyncpg.connect(pg_url)
        db, _, _ = await writer_database(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
        await db.shutdown()
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF frames '
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
        await conn.close()
        await record(
            pg_url.replace("postgresql://", "postgresql+asyncpg://"),
            [
                (old, IN, status("done-then", "completed")),
                (old + SECOND, IN, status("long", "running")),
                (now_us() - SECOND, IN, status("long", "completed")),
            ],
        )

    asyncio.run(make())
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nurl = "{pg_url}"\nretention = "30d"\n')
    (run,) = cli_json("cleanup", "run", "--config", str(config))
    assert not any("partition" in a for a in run["actions"])
    assert [a["session"] for a in run["actions"]] == ["done-then"]

    async def left() -> list[Any]:
        conn = await asyncpg.connect(pg_url)
        try:
            return list(await conn.fetch("SELECT session_id, count(*) FROM frames GROUP BY 1"))
        finally:
            await conn.close()

    assert [tuple(r) for r in asyncio.run(left())] == [("long", 2)]
