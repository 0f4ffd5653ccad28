"""The ``[cleanup]`` table of the configuration, checked key by key.

Every problem is one line naming the policy and the key; the loader prefixes the
file and exits 2. Cron expressions are checked by APScheduler itself, where the
schedule is built (``recorder run``, ``recorder cleanup``), so that the query
commands do not import it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recorder.cleanup.actions import ACTIONS
from recorder.protocol.policy import (
    Conditions,
    Policy,
    PolicyError,
    parse_duration,
)


@dataclass(frozen=True)
class CleanupConfig:
    # A purge or compaction applies only to a session that has matched this long.
    grace: float = 0.0
    policies: tuple[Policy, ...] = field(default_factory=tuple)
    # Where `recorder cleanup run` asks a running service (seconds between looks).
    poll: float = 2.0


_POLICY_KEYS = {"name", "schedule", "enabled", "dry_run", "when", "action", "keep_last"}
_DURATIONS = ("idle_for", "ended_before", "started_before")
_TEXTS = ("orchestrator_id", "session_type")
_COUNTS = ("min_frames", "max_frames")


def parse_cleanup(raw: Mapping[str, Any]) -> CleanupConfig:
    """``raw`` is the TOML table; raises PolicyError naming the key."""
    unknown = set(raw) - {"grace", "policies", "poll"}
    if unknown:
        raise PolicyError(f"unknown key 'cleanup.{sorted(unknown)[0]}'")
    grace = 0.0
    if "grace" in raw:
        grace = _duration("cleanup.grace", raw["grace"])
    poll = 2.0
    if "poll" in raw:
        poll = _duration("cleanup.poll", raw["poll"])
    policies_raw = raw.get("policies", [])
    if not isinstance(policies_raw, list):
        raise PolicyError("cleanup.policies: expected an array of tables ([[cleanup.policies]])")
    policies = []
    names: set[str] = set()
    for i, item in enumerate(policies_raw):
        policy = parse_policy(i, item)
        if policy.name in names:
            raise PolicyError(f"cleanup.policies[{policy.name}]: the name is used twice")
        names.add(policy.name)
        policies.append(policy)
    return CleanupConfig(grace, tuple(policies), poll)


def _duration(key: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except PolicyError as exc:
        raise PolicyError(f"{key}: {exc}") from None


def parse_policy(index: int, item: Any) -> Policy:
    if not isinstance(item, dict):
        raise PolicyError(f"cleanup.policies[{index}]: expected a table")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"cleanup.policies[{index}].name: every policy needs a name")
    if not name.strip() or not name.isprintable():
        # It names the policy in logs, audit rows and --policy: it must read as itself.
        raise PolicyError(f"cleanup.policies[{index}].name: must be printable, not blank: {name!r}")
    if name.startswith("storage."):
        # The built-in policies' names (storage.retention, storage.max_db_size): a
        # policy of the same name would be taken for them, or replace them.
        raise PolicyError(f"cleanup.policies[{index}].name: {name!r} is reserved")
    where = f"cleanup.policies[{name}]"
    for key in item:
        if key not in _POLICY_KEYS:
            raise PolicyError(f"{where}: unknown key {key!r}")
    action = item.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise PolicyError(f"{where}.action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    schedule = item.get("schedule")
    if not isinstance(schedule, str) or not schedule.strip():
        raise PolicyError(f"{where}.schedule: expected a cron expression or 'every 5m'")
    if schedule.strip().startswith("every"):
        if not _duration(f"{where}.schedule", schedule.strip()[5:].strip()) > 0:
            # APScheduler would fire it without a pause, for ever.
            raise PolicyError(f"{where}.schedule: the interval must be greater than 0")
    elif len(schedule.split()) != 5:
        raise PolicyError(
            f"{where}.schedule: expected five cron fields (like '12 4 * * *') or 'every 5m', "
            f"got {schedule!r}"
        )
    for key in ("enabled", "dry_run"):
        if key in item and not isinstance(item[key], bool):
            raise PolicyError(f"{where}.{key}: expected true or false")
    keep_last = item.get("keep_last", 0)
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0:
        raise PolicyError(f"{where}.keep_last: expected a count (0 or more)")
    return Policy(
        name=name,
        schedule=schedule.strip(),
        action=action,
        when=parse_conditions(where, item.get("when", {})),
        enabled=item.get("enabled", True),
        dry_run=item.get("dry_run", False),
        keep_last=keep_last,
    )


def parse_conditions(where: str, raw: Any) -> Conditions:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}.when: expected a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{where}.when.{key}"
        if key == "status":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
                raise PolicyError(f"{dotted}: expected a status or a list of them")
            values[key] = tuple(items)
        elif key in _DURATIONS:
            values[key] = _duration(dotted, value)
        elif key in _TEXTS:
            if not isinstance(value, str):
                raise PolicyError(f"{dotted}: expected a string")
            values[key] = value
        elif key in _COUNTS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PolicyError(f"{dotted}: expected a count (0 or more)")
            values[key] = value
        else:
            known = ", ".join(("status", *_DURATIONS, *_TEXTS, *_COUNTS))
            raise PolicyError(f"{where}.when: unknown condition {key!r} (known: {known})")
    return Conditions(**values)


def trigger(policy: Policy) -> Any:
    """The APScheduler trigger of a policy's schedule; PolicyError if cron rejects it."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    text = policy.schedule
    if text.startswith("every"):
        return IntervalTrigger(seconds=parse_duration(text[5:]))
    try:
        return CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        raise PolicyError(f"cleanup.policies[{policy.name}].schedule: {exc}") from None


def check_schedules(policies: Iterable[Policy]) -> None:
    """Every schedule as APScheduler will read it (PolicyError otherwise); APScheduler
    is imported only when there are policies."""
    for policy in policies:
        trigger(policy)


# Units a duration is written back in: the largest that gives a whole number.
_WRITTEN_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def duration_text(seconds: float) -> str:
    """Seconds as the configuration writes them: ``30s``, ``10m``, ``7d``."""
    for unit, size in _WRITTEN_UNITS:
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def conditions_text(when: Conditions) -> str:
    """A ``when`` table as the configuration writes it, in its inline form:
    ``status = ["completed", "failed"], idle_for = "30s"``; empty for none."""
    parts = []
    for key, value in vars(when).items():
        if value is None:
            continue
        if key in _DURATIONS:
            value = duration_text(value)
        elif key == "status":
            value = list(value)
        parts.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return ", ".join(parts)


def policy_said(policy: Policy) -> dict[str, Any]:
    """A policy as the configuration says it (its conditions as written there): what a
    running service reports of the policies it loaded, and what is compared with the
    file to tell an edit not yet reloaded."""
    return {
        "name": policy.name,
        "action": policy.action,
        "schedule": policy.schedule,
        "enabled": policy.enabled,
        "dry_run": policy.dry_run,
        "keep_last": policy.keep_last,
        "when": conditions_text(policy.when),
    }
