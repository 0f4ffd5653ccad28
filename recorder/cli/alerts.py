"""``recorder alerts``: the alert rules as loaded, and (with the outbox) what they raised."""

from __future__ import annotations

from typing import Any

import click

from recorder.alerts.spec import Rule, When
from recorder.cli.options import document, load, output_option, target_options
from recorder.cli.render import Column, emit


def describe(when: When) -> str:
    """A rule's condition in a few words, as the configuration says it."""
    if when.values:
        said = f"{when.kind} {', '.join(when.values)}"
    elif when.kind == "tool":
        said = f"tool {when.tool}"
        if when.result_status:
            said += f", result {', '.join(when.result_status)}"
    elif when.seconds is not None:
        said = f"{when.kind} {when.seconds:g} s"
    elif when.size is not None:
        said = f"{when.kind} {when.size} bytes"
    else:
        said = when.kind
    if when.matches is not None:
        said += f", matching /{when.matches.pattern}/"
    return said


def rule_json(rule: Rule, targets: dict[str, str]) -> dict[str, Any]:
    """A rule as `recorder alerts rules --format json` prints it: its targets masked."""
    return {
        "name": rule.name,
        "when": describe(rule.when),
        "kind": rule.when.kind,
        "notify": [{"name": n, "url": targets.get(n, "?")} for n in rule.notify],
        "repeat_s": rule.repeat,
        "resolve": rule.resolve,
    }


RULE_COLUMNS = [
    Column("RULE", lambda r: r["name"]),
    Column("WHEN", lambda r: r["when"]),
    Column("NOTIFY", lambda r: ", ".join(f"{t['name']} ({t['url']})" for t in r["notify"])),
    Column("REPEAT", lambda r: "" if r["repeat_s"] is None else f"{r['repeat_s']:g} s"),
    Column("RESOLVE", lambda r: "yes" if r["resolve"] else ""),
]


@click.group()
def alerts() -> None:
    """Alert rules: what they watch for and whom they tell."""


@alerts.command("rules")
@target_options
@output_option()
def rules(config_path: str | None, database: str | None, fmt: str) -> None:
    """The alert rules as the configuration loads them, with their targets; every
    target's URL is shown masked (it carries the target's secret).

    Example: recorder alerts rules -c /etc/orchestrator-recorder/config.toml
    """
    config = load(config_path, database).config.alerts
    masked = {t.name: t.masked for t in config.targets}
    found = [rule_json(r, masked) for r in config.rules]
    if fmt == "table":
        emit(found, fmt, RULE_COLUMNS, lambda r: r, "alert rules")
    else:
        document(found, fmt)
