"""Alerts raised by the running service and delivered to a real target on loopback
(Apprise's ``json://`` posting to tests/alert_hooks.Hook): frame rules evaluated as
the writer classifies, condition rules on a timer, and the outbox across a target that
is down and a service restarted meanwhile.

Real parts: the simulated daemon on port 0, the real service in this loop, its writer
processes, SQLite under tmp_path, Apprise."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from recorder.config import Config, load_config
from recorder.simulator.daemon import Simulator
from recorder.simulator.options import SimulatorOptions
from tests.alert_hooks import Hook
from tests.conftest import TIMEOUT, proxy_recording_config, running
from tests.helpers import free_port, query, recorder_process, wait_until
from tests.postmortem_recording import spawn_request, status_of
from tests.proxy_peers import proxy_url


def alerting_config(tmp: Path, daemon: str, db: Path, hook: Hook, rules: str) -> Config:
    """The service recording ``daemon`` into ``db``, its alerts posted to ``hook``."""
    # The conftest's configuration file, and the alerts after it.
    proxy_recording_config(tmp, daemon, db, reconnect={"base": 0.1, "cap": 0.2})
    path = tmp / "config.toml"
    path.write_text(f'{path.read_text()}\n[alerts.targets]\nops = "{hook.url()}"\n{rules}')
    return load_config(path, env={})


FRAME_RULES = """
[[alerts.rules]]
name = "session-failed"
when = { session_status = ["failed"] }
notify = ["ops"]

[[alerts.rules]]
name = "any-tool"
when = { tool = "*", input_matches = "." }
notify = ["ops"]

[[alerts.rules]]
name = "daemon-errors"
when = { error_reply = true }
notify = ["ops"]
"""


async def posts_until(hook: Hook, count: int) -> list[dict[str, Any]]:
    return [await hook.next_post(TIMEOUT) for _ in range(count)]


async def test_a_failed_session_alerts_once_and_a_completed_one_does_not(tmp_path: Path) -> None:
    hook = await Hook().start()
    opts = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0, fail_tasks=("Break",))
    try:
        async with Simulator(opts) as sim:
            config = alerting_config(tmp_path, sim.url, tmp_path / "r.db", hook, FRAME_RULES)
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                await ui.recv()  # the hello
                await ui.send(json.dumps(spawn_request("vp_ok", "Fine work")))
                done = await status_of(ui, None, "completed")
                await ui.send(json.dumps(spawn_request("vp_bad", "Break")))
                failed = await status_of(ui, None, "failed")
                # A request the daemon cannot read: its error names no session, and is
                # given to the one the request named.
                await ui.send(
                    json.dumps({"type": "execute_task", "payload": {"sessionId": failed}})
                )
                # The failure, the error, and the completed session's first tool call
                # (the failing one called none): each once, whatever copies the link
                # and the proxy recorded of the same status.
                said = await posts_until(hook, 3)
                await svc.writer.flush()
                stored = await query(svc, "select rule, subject from alerts order by id")
    finally:
        await hook.stop()
    assert sorted(stored) == [
        ("any-tool", done),
        ("daemon-errors", failed),
        ("session-failed", failed),
    ]
    bodies = sorted(p["message"] for p in said)
    assert bodies[0].startswith("[any-tool] tool ") and f"session {done}" in bodies[0]
    assert '"path"' in bodies[0]  # the input, quoted
    assert bodies[1] == f'[daemon-errors] error reply, session {failed}: "Invalid message format"'
    assert bodies[2] == f'[session-failed] session failed, session {failed}: "Break"'
    assert all(p["title"] for p in said)


LINK_RULE = """
[[alerts.rules]]
name = "daemon-down"
when = { link_down_for = "1s" }
notify = ["ops"]
resolve = true
"""


async def test_a_link_down_for_longer_than_the_rule_alerts_then_resolves(tmp_path: Path) -> None:
    hook = await Hook().start()
    try:
        async with Simulator(SimulatorOptions(port=0, seed=3)) as first:
            port = first.port
            config = alerting_config(tmp_path, first.url, tmp_path / "r.db", hook, LINK_RULE)
            async with running(config) as svc:
                await first.wait_connections(1, timeout=TIMEOUT)
                await first.disconnect_all()
                await first.stop()  # down: every reconnect refused
                down = await hook.next_post(TIMEOUT)
                async with Simulator(SimulatorOptions(port=port, seed=3)):
                    back = await hook.next_post(TIMEOUT)
                stored = await query(svc, "select kind from alerts order by id")
    finally:
        await hook.stop()
    assert down["message"].startswith("[daemon-down] link down")
    assert back["message"].startswith("[daemon-down]") and "resolved" in back["message"]
    assert [r.kind for r in stored] == ["alert", "resolved"]


async def test_a_target_down_and_a_restart_meanwhile_still_get_the_alert_once(
    tmp_path: Path,
) -> None:
    hook = Hook()  # not started: its port refuses connections
    opts = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0, fail_tasks=("Break",))
    rule = FRAME_RULES.split("[[alerts.rules]]")[1]
    async with Simulator(opts) as sim:
        config = alerting_config(
            tmp_path, sim.url, tmp_path / "r.db", hook, "[[alerts.rules]]" + rule
        )
        async with running(config) as svc, connect(proxy_url(svc)) as ui:
            await ui.recv()
            await ui.send(json.dumps(spawn_request("vp_bad", "Break")))
            failed = await status_of(ui, None, "failed")

            async def tried() -> bool:
                return bool(await query(svc, "select 1 from alert_deliveries where ok = 0"))

            await wait_until(svc, tried, timeout=TIMEOUT)
        await hook.start()
        try:
            async with running(config) as again:
                post = await hook.next_post(TIMEOUT)
                await again.writer.flush()

                async def delivered() -> bool:
                    rows = await query(again, "select 1 from alert_deliveries where ok = 1")
                    return bool(rows)

                await wait_until(again, delivered, timeout=TIMEOUT)
                attempts = await query(again, "select ok from alert_deliveries order by id")
                pending = await query(
                    again, "select 1 from alert_targets where next_us is not null"
                )
        finally:
            await hook.stop()
    assert post["message"] == f'[session-failed] session failed, session {failed}: "Break"'
    assert [a.ok for a in attempts][-1] and sum(a.ok for a in attempts) == 1
    assert not pending and hook.accepted == 1


async def test_sighup_loads_rules_into_a_service_that_had_none(tmp_path: Path) -> None:
    """SIGHUP's reload: the frame rules reach the classifier process, the targets the
    deliverer, in a service started without [alerts]."""
    hook = await Hook().start()
    opts = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0, fail_tasks=("Break",))
    try:
        async with Simulator(opts) as sim:
            config = proxy_recording_config(tmp_path, sim.url, tmp_path / "r.db")
            async with running(config) as svc, connect(proxy_url(svc)) as ui:
                assert svc.alerting is None
                path = tmp_path / "config.toml"
                rule = FRAME_RULES.split("[[alerts.rules]]")[1]
                path.write_text(
                    f'{path.read_text()}\n[alerts.targets]\nops = "{hook.url()}"\n'
                    f"[[alerts.rules]]{rule}"
                )
                await svc.reload()
                await ui.recv()
                await ui.send(json.dumps(spawn_request("vp_bad", "Break")))
                failed = await status_of(ui, None, "failed")
                post = await hook.next_post(TIMEOUT)
    finally:
        await hook.stop()
    assert post["message"] == f'[session-failed] session failed, session {failed}: "Break"'


async def test_a_send_hanging_at_the_stop_does_not_hold_the_exit(tmp_path: Path) -> None:
    """SIGTERM while a target holds a send (its socket timeouts not yet spent): the
    process exits at once, cleanly; the alert stays due for the next start."""
    hook = await Hook(hang=True).start()
    proxy = free_port()
    opts = SimulatorOptions(port=0, chunk_delay=0.001, seed=3, fail_rate=0.0, fail_tasks=("Break",))
    try:
        async with Simulator(opts) as sim:
            rule = FRAME_RULES.split("[[alerts.rules]]")[1]
            config = tmp_path / "c.toml"
            config.write_text(
                f'[daemon]\nurl = "{sim.url}"\n[proxy]\nlisten = "127.0.0.1:{proxy}"\n'
                f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\ncommit_interval = 0.05\n'
                f'[log]\nformat = "json"\n[alerts.targets]\nops = "{hook.url()}"\n'
                f"[[alerts.rules]]{rule}"
            )
            proc = await recorder_process("run", "-c", str(config), merge_stderr=True)
            assert proc.stdout is not None
            async with asyncio.timeout(TIMEOUT):
                while b"recorder started" not in await proc.stdout.readline():
                    pass
                async with connect(f"ws://127.0.0.1:{proxy}") as ui:
                    await ui.recv()
                    await ui.send(json.dumps(spawn_request("vp_bad", "Break")))
                    await status_of(ui, None, "failed")
                await hook.asked.wait()  # the send is hanging now
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                rest = (await proc.stdout.read()).decode()
                assert await proc.wait() == 0
            took = time.monotonic() - t0
    finally:
        await hook.stop()
    assert took < 3, took  # the send's own timeouts are 10 s each
    assert "recorder stopped" in rest and "Traceback" not in rest


async def test_a_destructive_tool_call_alerts_with_its_session_and_input_cut_and_escaped(
    tmp_path: Path,
) -> None:
    """A daemon whose agent runs `rm -rf`: the alert names the session and quotes the
    input, one line, shortened, its control characters written out."""
    sid = "session_rm"
    command = "rm -rf build/ \x1b[2J<b>" + "x" * 600
    script = [
        {"type": "health_check_response", "status": "healthy"},
        {"type": "session_status_update", "session": {"id": sid, "status": "running"}},
        {
            "type": "tool_call_start",
            "data": {"sessionId": sid, "toolName": "run_shell", "toolInput": {"command": command}},
        },
    ]

    async def daemon(ws: ServerConnection) -> None:
        for message in script:
            await ws.send(json.dumps(message))
        await ws.wait_closed()

    hook = await Hook().start()
    rules = (
        '[[alerts.rules]]\nname = "destructive-shell"\n'
        'when = { tool = "run_*", input_matches = "rm\\\\s+-rf" }\nnotify = ["ops"]\n'
    )
    try:
        async with serve(daemon, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}"
            config = alerting_config(tmp_path, url, tmp_path / "r.db", hook, rules)
            async with running(config):
                post = await hook.next_post(TIMEOUT)
    finally:
        await hook.stop()
    said = post["message"]
    assert said.startswith(f'[destructive-shell] tool run_shell called, session {sid}: "')
    assert "rm -rf build/" in said and "\x1b" not in said and "\\u001b[2J<b>" in said
    assert "\n" not in said and len(said) < 300 and said.count("x") < 250
