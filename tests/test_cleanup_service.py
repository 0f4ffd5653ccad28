"""Cleanup inside the running service: stop_session over the link, the schedule, and
`recorder cleanup run` asking the service to run a policy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from recorder.config import Config, load_config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running
from tests.helpers import query, recorder_process, wait_until


def service_config(
    make_config: Callable[..., Config], tmp_path: Path, url: str, policies: str
) -> Config:
    make_config(url)
    path = tmp_path / "config.toml"
    path.write_text(path.read_text() + policies)
    return load_config(path, env={})


async def test_stop_session_reaches_the_daemon_for_matching_sessions_only(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    opts = SimulatorOptions(
        port=0,
        sessions=3,
        session_interval=0,
        wait_for_client=True,
        chunk_delay=0.001,
        seed=3,
        fail_rate=0.0,
    )
    async with Simulator(opts) as sim:
        config = service_config(
            make_config,
            tmp_path,
            sim.url,
            """
[[cleanup.policies]]
name = "stop-completed"
schedule = "every 1h"
action = "stop_session"
when = { status = ["completed"], orchestrator_id = "keep-me-running" }
[[cleanup.policies]]
name = "stop-all-completed"
schedule = "every 1h"
action = "stop_session"
when = { status = ["completed"] }
""",
        )
        async with running(config) as svc:
            await sim.wait_sessions_done(timeout=30)

            async def recorded(expected: set[str]) -> bool:
                rows = await query(svc, "select status from sessions")
                return {r.status for r in rows} == expected and len(rows) == 3

            await wait_until(svc, lambda: recorded({"completed"}), timeout=30)
            assert svc.cleanup is not None
            policies = svc.cleanup.policies
            # No session has that orchestrator: nothing is sent.
            await svc.cleanup.run(policies["stop-completed"])
            await svc.cleanup.run(policies["stop-all-completed"])
            await wait_until(svc, lambda: recorded({"stopped"}), timeout=30)
            sent = [json.loads(e.data) for e in sim.journal if e.direction == "received"]
            stops = sorted(m["payload"]["sessionId"] for m in sent if m["type"] == "stop_session")
            assert stops == sorted(sim.sessions)
            replies = await query(
                svc,
                "select direction, type from frames where type in ('stop_session') or (type = 'session_status_update' and payload like '%stopped%') order by id",
            )
            assert [r.direction for r in replies].count("out") == 3 and [
                r.direction for r in replies
            ].count("in") >= 3
            runs = await query(svc, "select policy, matched, acted from cleanup_runs order by id")
            assert [(r.policy, r.matched, r.acted) for r in runs] == [
                ("stop-completed", 0, 0),
                ("stop-all-completed", 3, 3),
            ]


async def test_the_scheduler_runs_policies_and_answers_cleanup_run(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = service_config(
        make_config,
        tmp_path,
        "ws://127.0.0.1:9",
        """
[cleanup]
poll = "0.2s"
[[cleanup.policies]]
name = "often"
schedule = "every 0.3s"
action = "purge"
dry_run = true
""",
    )
    async with running(config) as svc:

        async def runs(n: int) -> bool:
            rows = await query(
                svc, "select trigger, dry_run from cleanup_runs where policy = 'often'"
            )
            return len([r for r in rows if r.trigger == "schedule" and r.dry_run == 1]) >= n

        await wait_until(svc, lambda: runs(2), timeout=20)
        # `recorder cleanup run` finds the service (its lock) and has the run done there.
        config_path = str(tmp_path / "config.toml")
        proc = await recorder_process("cleanup", "run", "--config", config_path, "--json")
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "asked the running recorder (PID " in err.decode()
        (run,) = json.loads(out)
        # A policy that says dry_run = true stays dry however it is run: `cleanup run`
        # used to run it for real.
        assert (run["policy"], run["trigger"], run["dry_run"]) == ("often", "request", True)
