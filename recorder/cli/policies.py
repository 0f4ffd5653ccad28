"""``recorder cleanup policies``: what the running recorder has loaded, and the file's
edits it has not (a reload, SIGHUP, loads them); with none running, the file's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from recorder.cli.options import Target, UsageFailure, load, output_option, reading, target_options
from recorder.cli.render import Column, emit
from recorder.times import format_us, now_us

# What the FILE column says of a loaded policy, by how the file differs.
MARKS = {
    "same": "same",
    "changed": "edited, not reloaded",
    "removed": "removed, not reloaded",
    "added": "added, not reloaded",
}


@click.command("policies")
@target_options
@output_option()
def list_policies(config_path: str | None, database: str | None, fmt: str) -> None:
    """Each policy, its schedule, its next run: as the running recorder has them, with
    the edits to its file it has not reloaded; with no recorder running, the file's.

    Example: recorder cleanup policies --config /etc/orchestrator-recorder/config.toml
    """
    target = load(config_path, database)
    mine = _file_policies(target.config)
    beat = _running_beat(target)
    said = None if beat is None else beat.get("cleanup")
    if not isinstance(said, dict):
        if beat is not None:  # a recorder from before it said what it loaded
            said_of = "the running recorder does not say what it loaded"
        else:
            said_of = f"no recorder is running on {target.shown}"
        if mine:
            click.echo(f"{said_of}: the policies in {target.config.source}", err=True)
        rows = []
        for policy in mine:
            at = policy.pop("next_run_us")
            rows.append(policy | {"next_run": format_us(at) or None})
        _listed(rows, fmt, target.config.source, running=False)
        return
    from recorder.cleanup.jobs import absolute

    source = str(said.get("source"))
    theirs = mine if source == absolute(target.config.source) else _service_file(source)
    rows = compared(said.get("policies") or [], theirs)
    edits = sum(r["file"] != "same" for r in rows)
    if edits and theirs is not None:
        click.echo(
            f"{edits} edit(s) in {source} not loaded by the running recorder: "
            "reload it (SIGHUP: systemctl reload orchestrator-recorder)",
            err=True,
        )
    _listed(rows, fmt, source, running=True)


def compared(loaded: list[dict[str, Any]], in_file: list[dict[str, Any]] | None) -> list[Any]:
    """The loaded policies, each marked as the file now has it, then the file's new
    ones; ``in_file`` None: the file could not be read (marks are None)."""
    by_name = {p["name"]: p for p in in_file or []}
    rows = []
    for policy in loaded:
        said = dict(policy)
        at = said.pop("next_run_us", None)
        edited = by_name.pop(said["name"], None)
        if in_file is None:
            mark = None
        elif edited is None:
            mark = "removed"
        else:
            edited.pop("next_run_us", None)
            mark = "same" if edited == said else "changed"
        rows.append(said | {"next_run": format_us(at) or None, "loaded": True, "file": mark})
    for policy in by_name.values():
        policy.pop("next_run_us", None)
        rows.append(policy | {"next_run": None, "loaded": False, "file": "added"})
    return rows


def _file_policies(config: Any) -> list[dict[str, Any]]:
    """The file's policies as the configuration says them, with the next run their
    schedule gives; a schedule APScheduler rejects is the file's error (exit 2)."""
    from recorder.cleanup.jobs import policies_of
    from recorder.cleanup.settings import policy_said, trigger
    from recorder.protocol.policy import PolicyError

    found = []
    for policy in policies_of(config):
        try:
            fire = trigger(policy).get_next_fire_time(None, datetime.now(UTC))
        except PolicyError as exc:
            raise UsageFailure(f"{config.source}: {exc}") from None
        at = int(fire.timestamp() * 1_000_000) if fire and policy.enabled else None
        found.append(policy_said(policy) | {"next_run_us": at})
    return found


def _service_file(source: str) -> list[dict[str, Any]] | None:
    """The policies in the running recorder's own file, where it is not this command's;
    None (and why, on stderr) when it cannot be read as a reload would read it."""
    from recorder.config import ConfigError, load_config

    if source == "<defaults>":
        return []
    try:
        return _file_policies(load_config(source))
    except (ConfigError, UsageFailure, OSError) as exc:
        message = exc.format_message() if isinstance(exc, UsageFailure) else str(exc)
        click.echo(f"cannot compare with {source}: {message}", err=True)
        return None


def _running_beat(target: Target) -> dict[str, Any] | None:
    """The running recorder's heartbeat (what it says of itself); None if none runs.
    Running is its lock's word; where the lock cannot be read, a fresh heartbeat's."""
    from recorder.db.locks import CannotTell
    from recorder.service.report import STALE_US

    name = target.config.storage.instance
    if target.backend.missing() is not None:
        return None  # no database yet: nothing runs on it
    try:
        with reading(target) as recordings:
            row = recordings.instance(name)
            try:
                running: bool | None = recordings.holder(name) is not None
            except CannotTell:
                running = None
    except click.ClickException as exc:
        # The file's policies are still worth listing; said to be only that.
        click.echo(f"cannot tell what a running recorder loaded: {exc.format_message()}", err=True)
        return None
    if row is None:
        return None
    beat: dict[str, Any] = json.loads(row.state)
    if running is None:
        running = not beat.get("stopped") and now_us() - row.heartbeat_us < STALE_US
    return beat if running else None


def _listed(rows: list[dict[str, Any]], fmt: str, source: str, *, running: bool) -> None:
    columns = [
        Column("POLICY", lambda r: r["name"]),
        Column("ACTION", lambda r: r["action"] + (" (dry run)" if r["dry_run"] else "")),
        Column("SCHEDULE", lambda r: r["schedule"]),
        Column("NEXT RUN", _next_run),
        Column("WHEN", lambda r: r["when"] or "-"),
    ]
    if running:
        columns.insert(4, Column("FILE", lambda r: MARKS.get(r["file"], "?")))
    if not rows and fmt == "table":
        # Said as what it means: a recorder started or reloaded (SIGHUP) with this file
        # cleans nothing up, which a missing or emptied section makes easy to miss.
        click.echo(
            f"no cleanup policies in {source}: a recorder running with it "
            "(or reloaded with it) stops, compacts and purges nothing",
            err=True,
        )
        return
    emit(rows, fmt, columns, lambda r: r, "policies")


def _next_run(row: dict[str, Any]) -> str:
    if row["next_run"]:
        return str(row["next_run"])
    if not row.get("loaded", True):
        return "not loaded"
    return "disabled" if not row["enabled"] else "-"
