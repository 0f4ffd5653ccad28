"""``recorder cleanup``, ``recorder pin``/``unpin`` and ``recorder db vacuum``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import click

from recorder.cli.options import (
    Target,
    UsageFailure,
    limit_option,
    load,
    output_option,
    reading,
    running_recorder,
    session_argument,
    target_options,
    writing,
)
from recorder.cli.policies import list_policies
from recorder.cli.render import Column, emit, when
from recorder.db.rows import CleanupRun
from recorder.protocol.tame import on_one_line
from recorder.times import format_us, now_us

# How long `cleanup run` waits for a running service to finish the runs it asked for.
WAIT_FOR_SERVICE = 3600.0


@click.group()
def cleanup() -> None:
    """Cleanup policies: list them, run them now, read what they did."""


cleanup.add_command(list_policies)


def _policies(target: Target) -> dict[str, Any]:
    from recorder.cleanup.jobs import policies_of

    return {p.name: p for p in policies_of(target.config)}


@cleanup.command("run")
@target_options
@click.option("--policy", "name", help="Only this policy (default: every enabled one).")
@click.option("--dry-run", is_flag=True, help="Print what would happen; change nothing.")
@output_option()
def run_now(
    config_path: str | None, database: str | None, name: str | None, dry_run: bool, fmt: str
) -> None:
    """Run cleanup policies now.

    With the service running, the runs happen inside it (through its writer and its
    link to the daemon); otherwise purge and compact run on the database directly and
    stop_session says that the service is not running. --dry-run only reads.

    Example: recorder cleanup run --policy stop-completed --dry-run
    """
    from recorder.cleanup.settings import check_schedules
    from recorder.protocol.policy import PolicyError

    target = load(config_path, database)
    policies = _policies(target)
    try:
        check_schedules(policies.values())  # what the service would refuse to start with
    except PolicyError as exc:
        raise UsageFailure(f"{target.config.source}: {exc}") from None
    if name is not None and name not in policies:
        known = ", ".join(policies) or "none configured"
        raise UsageFailure(f"no policy named {name!r} (policies: {known})")
    chosen = [policies[name]] if name else [p for p in policies.values() if p.enabled]
    if not chosen:
        click.echo("no cleanup policies to run (see [[cleanup.policies]])", err=True)
        return
    if dry_run:
        _dry_run(target, chosen, fmt)
        return
    # A running recorder does the cleanup, between its batches, rather than a second
    # writer beside it; when that cannot be told, nothing is done.
    holder = running_recorder(target)
    if holder is not None:
        run_ids = _through_service(target, name, holder)
    else:
        import asyncio  # here: `recorder --help` imports this module to list it

        with writing(target):
            run_ids = asyncio.run(_directly(target, chosen))
    with reading(target) as recordings:
        runs = recordings.cleanup_runs(ids=run_ids)
    _emit_runs(runs, fmt)


def _dry_run(target: Target, chosen: list[Any], fmt: str) -> None:
    from recorder.cleanup.actions import action_of, decide

    now = now_us()
    grace = target.config.cleanup.grace
    with reading(target) as recordings:
        names = [p.name for p in chosen]
        facts, pinned, first = recordings.decision_inputs(names, target.config.storage.instance)
    rows = []
    for policy in chosen:
        found = first[policy.name]
        for d in decide(policy, facts, now, pinned=pinned, matched=found, grace=grace):
            result = action_of(policy).said(d.verdict)
            rows.append({"policy": policy.name, "session": d.session_id, "result": result})
    columns = (
        Column("POLICY", lambda r: r["policy"]),
        Column("SESSION", lambda r: r["session"]),
        Column("RESULT", lambda r: r["result"]),
    )
    emit(rows, fmt, columns, lambda r: r, "sessions")


def _through_service(target: Target, name: str | None, holder: str) -> list[int]:
    from recorder.db.cleanup_records import ask

    instance = target.config.storage.instance
    request_id = _write(target, lambda conn: ask(conn, name, False, now_us(), instance))
    click.echo(f"asked the running recorder ({holder}) to run it", err=True)
    deadline = time.monotonic() + WAIT_FOR_SERVICE
    poll = min(0.5, target.config.cleanup.poll / 2)
    while time.monotonic() < deadline:
        with reading(target) as recordings:
            result = recordings.cleanup_answer(request_id)
        if result is not None:
            said = json.loads(result)
            if "error" in said:
                raise click.ClickException(said["error"])
            return [int(i) for i in said["runs"]]
        time.sleep(poll)
    raise click.ClickException("the running recorder did not answer within an hour")


async def _directly(target: Target, chosen: list[Any]) -> list[int]:
    from recorder import logs
    from recorder.cleanup.jobs import Cleanup, Direct
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store

    # The runs' results are printed; only problems go to the log (stderr).
    logs.configure("warning", "console", sys.stderr)

    async with _holding(target):
        db = await WriterDatabase.open(target.url)
        try:
            runner = Cleanup(
                target.config,
                Direct(db, Store(db.dialect, target.config.storage.instance)),
                None,
                no_link="the service is not running",
            )
            return [await runner.run(p, dry_run=False, trigger="cli") for p in chosen]
        finally:
            await db.shutdown()


@asynccontextmanager
async def _holding(target: Target) -> AsyncIterator[None]:
    """The recorder's instance lock, held while cleanup runs directly: one writer at a
    time. A service starting meanwhile waits its turn (it refuses, and systemd retries),
    and a second `cleanup run` refuses instead of working on the same sessions."""
    from recorder.db.locks import AlreadyRunning

    lock = target.backend.lock(target.config.storage.instance)
    try:
        await lock.acquire()
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}; changed nothing") from None
    try:
        yield
    finally:
        await lock.give_back()


def _write(target: Target, fn: Any) -> Any:
    """One small write from the CLI (a request, a pin), on the writer's own code."""
    from recorder.db.connection import WriterDatabase

    async def go() -> Any:
        db = await WriterDatabase.open(target.url)
        try:
            return await db.run(fn)
        finally:
            await db.shutdown()

    import asyncio

    with reading(target):  # the database exists and is the recorder's: else one line
        pass
    with writing(target):
        return asyncio.run(go())


def run_json(r: CleanupRun) -> dict[str, Any]:
    """A cleanup run as ``recorder cleanup history --format json`` prints it (the web
    console's ``/api/stats`` too)."""
    return {
        "id": r.id,
        "policy": r.policy,
        "action": r.action,
        "trigger": r.trigger,
        "dry_run": bool(r.dry_run),
        # running, done or interrupted; its end is its last step's time until done.
        "state": r.state,
        "started": format_us(r.started_us),
        "ended": format_us(r.ended_us),
        "matched": r.matched,
        "acted": r.acted,
        # Frames purged or compacted, counted as each step committed.
        "frames": r.frames,
        "actions": json.loads(r.actions),
        "error": r.error,
        # A copy made before migration 0007 does not say.
        "instance": r.instance,
    }


def _emit_runs(rows: list[CleanupRun], fmt: str) -> None:
    columns = (
        Column("RUN", lambda r: r.id, right=True),
        Column("STARTED", lambda r: when(r.started_us)),
        Column("POLICY", lambda r: r.policy + (" (dry run)" if r.dry_run else "")),
        Column("ACTION", lambda r: r.action),
        Column("BY", lambda r: r.trigger),
        Column("MATCHED", lambda r: r.matched, right=True),
        Column("ACTED", lambda r: r.acted, right=True),
        Column("ERROR / RESULTS", _outcome),
    )
    emit(rows, fmt, columns, run_json, "cleanup runs")


def _outcome(run: CleanupRun) -> str:
    said = run.error or _results(run.actions)
    if run.state == "done":
        return said
    return f"{run.state}, {run.frames or 0} frames so far" + (f": {said}" if said else "")


def _results(actions: str) -> str:
    counts: dict[str, int] = {}
    for action in json.loads(actions):
        result = str(action.get("result", "")).split(" ")[0]
        # A record names the first sessions of each kind and counts the others.
        counts[result] = counts.get(result, 0) + 1 + int(action.get("more", 0))
    return ", ".join(f"{n} {r}" for r, n in counts.items())


@cleanup.command("history")
@target_options
@click.option("--policy", "name", help="Only this policy's runs.")
@limit_option(20)
@output_option()
def history(
    config_path: str | None, database: str | None, name: str | None, limit: int, fmt: str
) -> None:
    """What the cleanup runs did, newest first.

    Example: recorder cleanup history --policy retention --json
    """
    target = load(config_path, database)
    with reading(target) as recordings:
        runs = recordings.cleanup_runs(policy=name, limit=limit)
    instance = target.config.storage.instance

    def ours_running(run: CleanupRun) -> bool:
        # Another recorder sharing the database answers for its own runs.
        return run.instance in (None, instance) and run.state == "running"

    if any(ours_running(r) for r in runs) and not _may_run(target):
        # No recorder runs here: a run still marked running was cut short (a kill);
        # the next start marks it so in the database too.
        runs = [replace(r, state="interrupted") if ours_running(r) else r for r in runs]
    _emit_runs(runs, fmt)


def _may_run(target: Target) -> bool:
    """Whether a recorder may be running on ``target`` (True when it cannot tell)."""
    try:
        return running_recorder(target) is not None
    except click.ClickException:
        return True


def _pin(config_path: str | None, database: str | None, session: str, on: bool) -> None:
    from recorder.db.cleanup_records import pin as set_pin

    target = load(config_path, database)
    with reading(target) as recordings:
        sid = recordings.session(session).id
    # A running recorder reads pins from the database: this small write is one it
    # expects beside it. Where none can be told apart from another user's, none is made.
    running_recorder(target)
    changed = _write(target, lambda conn: set_pin(conn, sid, now_us(), on))
    state = "pinned" if on else "unpinned"
    shown = on_one_line(sid)  # recorded from a frame: it must not steer the terminal
    click.echo(f"{shown} {state}" if changed else f"{shown} was already {state}")


@click.command()
@target_options
@session_argument
def pin(config_path: str | None, database: str | None, session: str) -> None:
    """Keep a session from every cleanup policy (its id, or the start of it).

    Example: recorder pin session_1795692537464
    """
    _pin(config_path, database, session, True)


@click.command()
@target_options
@session_argument
def unpin(config_path: str | None, database: str | None, session: str) -> None:
    """Let cleanup policies touch a pinned session again.

    Example: recorder unpin session_1795692537464
    """
    _pin(config_path, database, session, False)


def vacuum(target: Target) -> tuple[int, int]:
    """A full VACUUM, when no recorder is running on the database: sizes before, after."""
    from recorder.db.space import full_vacuum

    if running_recorder(target) is not None:
        raise click.ClickException(
            "a full vacuum needs the database to itself: stop the recorder first "
            "(purges give space back on their own in databases it created)"
        )
    with reading(target):  # the database exists and is the recorder's: else one line
        pass
    with writing(target):
        return full_vacuum(target.url)
