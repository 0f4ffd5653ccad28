"""``recorder alerts``: what the rules raised and what their targets answered; the
rules as loaded; a test notification through a rule's targets."""

from __future__ import annotations

from typing import Any

import click

from recorder.alerts.spec import Rule, When
from recorder.cli.options import (
    UsageFailure,
    document,
    limit_option,
    load,
    output_option,
    parse_moment,
    reading,
    target_options,
)
from recorder.cli.render import Column, emit, when
from recorder.db.alert_reads import AlertRecord

# Seconds `alerts test` waits for each target.
TEST_TIMEOUT = 20.0


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


def alert_json(record: AlertRecord) -> dict[str, Any]:
    """An alert as `recorder alerts --format json` prints it: what was raised, and
    where it stands with each target, every attempt included."""
    a = record.alert
    return {
        "id": a.id,
        "raised": when(a.raised_us),
        "at": when(a.at_us),
        "rule": a.rule,
        "kind": a.kind,
        "subject": a.subject,
        "session_id": a.session_id,
        "what": a.what,
        "text": a.text,
        "instance": a.instance,
        "targets": [
            {
                "target": t.target,
                "delivered": t.done,
                "attempts": t.attempts,
                "next": when(t.next_us) if t.next_us is not None else None,
                "last_answer": t.last_answer,
            }
            for t in record.targets
        ],
        "deliveries": [
            {
                "target": d.target,
                "attempt": d.attempt,
                "at": when(d.at_us),
                "ok": d.ok,
                "answer": d.answer,
            }
            for d in record.deliveries
        ],
    }


def _standing(row: dict[str, Any]) -> str:
    said = []
    for t in row["targets"]:
        if t["delivered"]:
            said.append(f"{t['target']} delivered")
        elif t["attempts"]:
            said.append(f"{t['target']} {t['attempts']} tries, next {t['next']}")
        else:
            said.append(f"{t['target']} due")
    return "; ".join(said) or "recorded only"


ALERT_COLUMNS = [
    Column("RAISED", lambda r: r["raised"]),
    Column("RULE", lambda r: r["rule"] + ("" if r["kind"] == "alert" else f" ({r['kind']})")),
    Column("SUBJECT", lambda r: r["subject"]),
    Column("WHAT", lambda r: r["what"]),
    Column("DELIVERY", _standing),
    Column("TEXT", lambda r: r["text"]),
]


@click.group(invoke_without_command=True)
@target_options
@click.option("--since", callback=parse_moment, help="Only alerts raised since then.")
@click.option("--rule", help="Only this rule's alerts.")
@limit_option(50)
@output_option(json_means="jsonl")
@click.pass_context
def alerts(
    ctx: click.Context,
    config_path: str | None,
    database: str | None,
    since: int | None,
    rule: str | None,
    limit: int,
    fmt: str,
) -> None:
    """What the alert rules raised, newest first, and what each target answered
    (delivered, or tried and due again). Subcommands: rules, test.

    Example: recorder alerts --since 1d --rule session-failed
    """
    if ctx.invoked_subcommand is not None:
        return
    target = load(config_path, database)
    with reading(target) as recordings:
        found = recordings.alerts(since_us=since, rule=rule, limit=limit)
    emit([alert_json(r) for r in found], fmt, ALERT_COLUMNS, lambda r: r, "alerts")


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


@alerts.command("test")
@target_options
@click.argument("name")
def test(config_path: str | None, database: str | None, name: str) -> None:
    """Send a test notification through the targets of the rule NAME, now, and say
    what each answered (exit 1 if one did not take it). Nothing is stored.

    Example: recorder alerts test session-failed
    """
    from concurrent.futures import ThreadPoolExecutor

    from recorder.alerts.send import send
    from recorder.protocol.tame import on_one_line

    config = load(config_path, database).config.alerts
    rule = next((r for r in config.rules if r.name == name), None)
    if rule is None:
        known = ", ".join(r.name for r in config.rules) or "none configured"
        raise UsageFailure(f"no alert rule named {name!r} (rules: {known})")
    if not rule.notify:
        raise UsageFailure(f"alert rule {name!r} notifies no target (notify = [])")
    targets = [t for n in rule.notify if (t := config.target(n)) is not None]
    title = f"{name}: test"
    body = f"[{name}] a test notification from orchestrator-recorder (recorder alerts test)"
    with ThreadPoolExecutor(len(targets)) as pool:
        sent = [pool.submit(send, t.url, title, body, TEST_TIMEOUT) for t in targets]
        answers = [future.result() for future in sent]
    for t, (ok, answer) in zip(targets, answers, strict=True):
        click.echo(on_one_line(f"{t.name} ({t.masked}): {'ok' if ok else 'FAILED'}: {answer}"))
    if not all(ok for ok, _ in answers):
        raise SystemExit(1)
