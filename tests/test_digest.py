"""The report's scheduled digest (``[report] schedule``): the service builds the report
and sends its markdown through the alert outbox to a real target on loopback (Apprise's
``json://`` posting to tests/alert_hooks.Hook), once per scheduled run across a restart,
and again after a SIGHUP reload that changes the schedule.

No waiting for 8 am: the schedule is a daily cron set two minutes in the past, and the
service sends the latest run of the last hour when it starts or reloads (a service that
was down at 8 am sends the digest late). The dedupe key is the run's time, so the
restart finds the digest stored and sends nothing. Real parts: the simulated daemon, the
real service in this loop, its writer processes, SQLite under tmp_path, Apprise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from recorder.alerts.delivery import Deliverer, ThreadReads
from recorder.alerts.digest import cron, digest, latest_run, next_run
from recorder.alerts.notify import message, title
from recorder.alerts.occurrence import REPORT
from recorder.config import Config, ConfigError, load_config
from recorder.db.alerts import RaisedAlert
from recorder.db.recordings import Recordings
from recorder.pipeline.alert_ops import RaiseAlerts
from recorder.report import build_report, render
from recorder.report.render import markdown_text
from recorder.simulator.daemon import Simulator
from recorder.simulator.options import SimulatorOptions
from recorder.times import now_us
from tests.alert_hooks import Hook, Recorded
from tests.conftest import TIMEOUT, proxy_recording_config, running
from tests.helpers import query, wait_until, writer_database
from tests.postmortem_recording import spawn_request, status_of
from tests.proxy_peers import proxy_url


def daily_at(moment: datetime) -> str:
    """A daily cron whose latest run is ``moment``'s minute."""
    return f"{moment.minute} {moment.hour} * * *"


def config_with(tmp: Path, daemon: str, hook: Hook, extra: str = "") -> Config:
    """The service recording ``daemon`` into tmp/r.db, with the target ``ops`` (``hook``)
    and ``extra`` after it; the file at tmp/config.toml, which a reload reads again."""
    proxy_recording_config(tmp, daemon, tmp / "r.db", reconnect={"base": 0.1, "cap": 0.2})
    path = tmp / "config.toml"
    base = path.read_text().split("\n[alerts.targets]")[0]
    path.write_text(f'{base}\n[alerts.targets]\nops = "{hook.url()}"\n{extra}')
    return load_config(path, env={})


def report_section(schedule: str) -> str:
    return f'[report]\nschedule = "{schedule}"\nnotify = ["ops"]\nsince = "1h"\n'


def expected_markdown(url: str, until_us: int) -> str:
    """What `recorder report --since 1h --format markdown` said at ``until_us``."""
    with Recordings.open(url) as recordings:
        return render(build_report(recordings, until_us - 3_600_000_000, until_us), "markdown")


def without_size(markdown: str) -> str:
    """The database's size is measured when the report is built, and storing the digest
    grows it: everything else must be equal."""
    return "\n".join(ln for ln in markdown.splitlines() if not ln.startswith("database size"))


async def test_the_digest_is_the_report_sent_once_across_a_restart_then_rescheduled(
    tmp_path: Path,
) -> None:
    hook = await Hook().start()
    opts = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0, fail_tasks=("Break",))
    try:
        # A recording first, by a service with no digest (and no alert rule).
        async with Simulator(opts) as sim:
            config = config_with(tmp_path, sim.url, hook)
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                assert svc.alerting is None
                await ui.recv()  # the hello
                await ui.send(json.dumps(spawn_request("vp_ok", "Fine work")))
                await status_of(ui, None, "completed")
                await ui.send(json.dumps(spawn_request("vp_bad", "Break")))
                failed = await status_of(ui, None, "failed")
            daemon = sim.url
        # Then the digest: targets and a schedule, no rule. The daemon is gone: nothing
        # is recorded meanwhile, so the report of the same window can be built again.
        first = datetime.now(UTC) - timedelta(minutes=2)
        config = config_with(tmp_path, daemon, hook, report_section(daily_at(first)))
        async with running(config) as svc:
            post = await hook.next_post(TIMEOUT)

            async def delivered() -> bool:  # recorded: the restart must not send it again
                return bool(await query(svc, "select 1 from alert_deliveries where ok = 1"))

            await wait_until(svc, delivered, timeout=TIMEOUT)
            stored = await query(svc, "select occurrence, at_us, text from alerts")
        # Restarted within the hour: the same run, found stored, is not sent again.
        async with running(config) as again:
            await asyncio.wait_for(again.alerting.digest.ran.wait(), TIMEOUT)
            assert again.alerting.digest.last[1] == []
            # SIGHUP with another schedule: its latest run is a new digest.
            second = first - timedelta(minutes=1)
            extra = report_section(daily_at(second))
            config_with(tmp_path, daemon, hook, extra)
            again.alerting.digest.ran.clear()
            await again.reload()
            await asyncio.wait_for(again.alerting.digest.ran.wait(), TIMEOUT)
            rescheduled = await hook.next_post(TIMEOUT)
            occurrences = await query(again, "select occurrence from alerts order by id")
    finally:
        await hook.stop()
    [(occurrence, until_us, text)] = stored
    assert occurrence == first.replace(second=0, microsecond=0).isoformat()
    expected = expected_markdown(config.storage.url, until_us)
    assert post["message"] == text.rstrip()  # Apprise strips the last newline
    assert without_size(text) == without_size(expected)
    assert "2 sessions seen  \n" in text and "| failed | 1 |\n" in text
    assert f"| {markdown_text(failed)} | " in text
    assert post["title"] == expected.splitlines()[0].removeprefix("# ").replace("\\", "")
    assert post["title"].startswith("Recorder report ") and " to " in post["title"]
    assert [o for (o,) in occurrences] == [
        occurrence,
        second.replace(second=0, microsecond=0).isoformat(),
    ]
    assert rescheduled["message"].startswith("# Recorder report ")
    assert hook.posts.empty()


def test_runs_are_the_crons_in_utc_and_the_latest_of_the_last_hour_is_due() -> None:
    daily = cron("0 8 * * *")
    eight = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
    assert next_run(daily, eight - timedelta(microseconds=1)) == eight
    assert next_run(daily, eight) == eight + timedelta(days=1)
    assert latest_run(daily, eight) == eight
    assert latest_run(daily, eight + timedelta(minutes=59)) == eight
    assert latest_run(daily, eight + timedelta(hours=1, seconds=1)) is None  # past the grace
    assert latest_run(daily, eight - timedelta(seconds=1)) is None
    assert latest_run(cron("*/5 * * * *"), eight + timedelta(minutes=12)) == eight + timedelta(
        minutes=10
    )


def test_a_digest_is_its_title_and_the_whole_markdown() -> None:
    run = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
    body = "# Recorder report\n\n## Sessions\n\n2 sessions seen  \n"
    alert = digest(run, "Recorder report A to B", body, 42, ("ops",), "default")
    assert (alert.kind, alert.occurrence, alert.at_us) == (REPORT, "2025-03-04T08:00:00+00:00", 42)
    assert title(alert) == "Recorder report A to B" and message(alert, "https://x") == body
    other = digest(run, "t", body, 42, ("ops",), "lab")
    assert other.subject != alert.subject  # recorders sharing a database: one each


@pytest.fixture
def url(either_url: str) -> str:
    return either_url


async def test_a_long_digest_is_stored_whole_and_posted_as_its_markdown(url: str) -> None:
    """The outbox takes a report of any length on both databases, and the deliverer
    sends a digest's title and whole markdown (not an alert's one line)."""
    rows = "".join(f"| session\\_{i:05} | failed | é\\-\\|x |\n" for i in range(6000))
    body = "# Recorder report A to B\n\n| session | status | note |\n| --- | --- | --- |\n" + rows
    run = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
    raised = RaisedAlert(**asdict(digest(run, "Recorder report A to B", body, 1, ("ops",), "x")))
    hook = await Hook().start()
    db, store, _ = await writer_database(url)
    try:
        w = Recorded(db, store)
        ids: list[int] = await w.perform(RaiseAlerts((raised,), now_us()))
        assert len(ids) == 1
        assert await w.perform(RaiseAlerts((raised,), now_us())) == []  # the same run
        deliverer = Deliverer(ThreadReads(url), w.perform, {"ops": hook.url()})
        task = asyncio.create_task(deliverer.run())
        try:
            post = await hook.next_post(TIMEOUT)
            assert (await w.next_delivery(TIMEOUT)).ok
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await db.shutdown()
        await hook.stop()
    assert len(body) > 200_000
    assert post["title"] == "Recorder report A to B" and post["message"] == body.rstrip()


REPORT_TARGETS = '[alerts.targets]\nops = "json://127.0.0.1:9/hook"\n'


@pytest.mark.parametrize(
    ("section", "said"),
    [
        (
            '[report]\nschedule = "0 8 * * *"\nnotify = ["pager"]\n',
            "report.notify: no target named 'pager' in [alerts.targets]",
        ),
        (
            '[report]\nschedule = "0 25 * * *"\nnotify = ["ops"]\n',
            "report.schedule: Error validating expression '25': the last value (25) is "
            "higher than the maximum value (23)",
        ),
        (
            '[report]\nschedule = "0 8 * *"\nnotify = ["ops"]\n',
            "report.schedule: expected five cron fields (like '0 8 * * *'), got '0 8 * *'",
        ),
        ('[report]\nschedule = "0 8 * * *"\n', "report.notify: the digest needs a target"),
        ('[report]\nsince = "0s"\n', "report.since: must be longer than 0s"),
    ],
)
def test_a_bad_report_section_is_one_line_naming_the_key(
    tmp_path: Path, section: str, said: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(section + REPORT_TARGETS)  # the targets after [report]: still known
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"HOME": "/h"})
    assert str(caught.value).startswith(f"{path}: {said}")


def test_a_bad_schedule_stops_the_real_process_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(REPORT_TARGETS + '[report]\nschedule = "61 8 * * *"\nnotify = ["ops"]\n')
    db = tmp_path / "should-not-exist.db"
    proc = subprocess.run(
        [sys.executable, "-m", "recorder", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "RECORDER_DATABASE_URL": f"sqlite:///{db}",
        },
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: {path}: report.schedule: Error validating expression '61': the last value "
        "(61) is higher than the maximum value (59)"
    ]
    assert not db.exists()
