"""The ``[alerts]`` table of the configuration, checked key by key.

Every problem is one line naming the rule and the key
(``alerts.rules[destructive-shell].when.input_matches: bad regex ...``); the loader
prefixes the file and exits 2. A target's URL is a secret: no message repeats it.
It may take secrets from the environment: ``${NAME}`` anywhere in it is replaced by
the variable's value (``"ntfy://${NTFY_TOKEN}@ntfy.example.net/agents"``, or the
whole URL, ``"${ALERTS_OPS_URL}"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from recorder.alerts.spec import CONDITION_KINDS, KINDS, AlertsConfig, Pattern, Rule, Target, When
from recorder.config.sections import ConfigError
from recorder.protocol.policy import PolicyError, parse_duration, parse_size

_RULE_KEYS = ("name", "when", "notify", "repeat", "resolve")
# The keys a `when` may hold beside its kind, and the kind they belong to.
_MODIFIERS = {"input_matches": "tool", "result_status": "tool"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# Names appear in notifications, keys and logs: short and plainly readable.
MAX_NAME = 100


def parse_alerts(raw: Mapping[str, Any], env: Mapping[str, str]) -> AlertsConfig:
    """``raw`` is the TOML table; raises ConfigError naming the key (without the file)."""
    unknown = sorted(set(raw) - {"targets", "rules"})
    if unknown:
        raise ConfigError(f"unknown key 'alerts.{unknown[0]}'")
    targets_raw = raw.get("targets", {})
    if not isinstance(targets_raw, dict):
        raise ConfigError("alerts.targets: expected a table ([alerts.targets])")
    targets = tuple(_target(name, value, env) for name, value in targets_raw.items())
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError("alerts.rules: expected an array of tables ([[alerts.rules]])")
    names = {t.name for t in targets}
    rules: list[Rule] = []
    for index, item in enumerate(rules_raw):
        rule = _rule(index, item, names)
        if any(r.name == rule.name for r in rules):
            raise ConfigError(f"alerts.rules[{rule.name}]: the name is used twice")
        rules.append(rule)
    return AlertsConfig(targets, tuple(rules))


def _target(name: str, value: Any, env: Mapping[str, str]) -> Target:
    where = f"alerts.targets.{name}"
    _check_name(where, name)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an Apprise URL (a string)")
    # The URL is not repeated in any message: it holds the target's secrets.
    if "${" in _VARIABLE.sub("", value):
        raise ConfigError(
            f"{where}: ${{...}} must name an environment variable, like ${{NTFY_URL}}"
        )
    missing = [m for m in _VARIABLE.findall(value) if not env.get(m, "").strip()]
    if missing:
        raise ConfigError(f"{where}: the environment variable {missing[0]} is not set")
    url = _VARIABLE.sub(lambda m: env[m.group(1)].strip(), value).strip()
    if not _URL.fullmatch(url) or not url.isprintable():
        raise ConfigError(
            f"{where}: expected an Apprise URL like ntfy://host/topic "
            "(printable, no spaces; the value is not shown: it may hold a secret)"
        )
    return Target(name, url)


def _check_name(where: str, name: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: needs a name")
    if not name.isprintable() or len(name) > MAX_NAME or name != name.strip():
        raise ConfigError(
            f"{where}: a name is printable, at most {MAX_NAME} characters, "
            f"without spaces around it: {name[:MAX_NAME]!r}"
        )


def _rule(index: int, item: Any, targets: set[str]) -> Rule:
    if not isinstance(item, dict):
        raise ConfigError(f"alerts.rules[{index}]: expected a table")
    name = item.get("name")
    _check_name(f"alerts.rules[{index}].name", name)
    assert isinstance(name, str)
    where = f"alerts.rules[{name}]"
    for key in item:
        if key not in _RULE_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_RULE_KEYS)})")
    when = _when(where, item.get("when"))
    if "notify" not in item:
        raise ConfigError(f"{where}.notify: expected a list of target names ([] records only)")
    notify = _texts(f"{where}.notify", item["notify"], allow_empty=True)
    for target in notify:
        if target not in targets:
            raise ConfigError(f"{where}.notify: no target named {target!r} in [alerts.targets]")
    repeat = None
    if "repeat" in item:
        repeat = _duration(f"{where}.repeat", item["repeat"])
        if not repeat > 0:
            raise ConfigError(f"{where}.repeat: must be longer than 0s")
    resolve = item.get("resolve", False)
    if not isinstance(resolve, bool):
        raise ConfigError(f"{where}.resolve: expected true or false")
    if resolve and when.kind not in CONDITION_KINDS:
        raise ConfigError(
            f"{where}.resolve: only conditions resolve ({', '.join(CONDITION_KINDS)}), "
            f"not {when.kind}"
        )
    return Rule(name, when, notify, repeat, resolve)


def _when(where: str, raw: Any) -> When:
    where = f"{where}.when"
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: expected a table, like {{ session_status = ["failed"] }}')
    kinds = [k for k in raw if k in KINDS]
    for key in raw:
        if key not in KINDS and key not in _MODIFIERS:
            raise ConfigError(f"{where}: unknown condition {key!r} (known: {', '.join(KINDS)})")
    if len(kinds) != 1:
        said = f"{' and '.join(kinds)}" if kinds else "none"
        raise ConfigError(f"{where}: expected exactly one condition, got {said}")
    kind = kinds[0]
    for key, owner in _MODIFIERS.items():
        if key in raw and kind != owner:
            raise ConfigError(f"{where}.{key}: goes with {owner}, not {kind}")
    value = raw[kind]
    dotted = f"{where}.{kind}"
    return _PARSERS[kind](dotted, value, raw, where)


def _statuses(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    return When(dotted.rpartition(".")[2], values=_texts(dotted, value))


def _frame_type(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    return When("frame_type", values=_texts(dotted, value))


def _error_reply(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    if value is True:
        return When("error_reply")
    if not isinstance(value, dict):
        raise ConfigError(f'{dotted}: expected true or a table {{ matches = "regex" }}')
    for key in value:
        if key != "matches":
            raise ConfigError(f"{dotted}: unknown key {key!r} (known: matches)")
    matches = _regex(f"{dotted}.matches", value["matches"]) if "matches" in value else None
    return When("error_reply", matches=matches)


def _tool(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{dotted}: expected a tool name or a glob ("run_*")')
    matches = None
    if "input_matches" in raw:
        matches = _regex(f"{where}.input_matches", raw["input_matches"])
    statuses: tuple[str, ...] = ()
    if "result_status" in raw:
        statuses = _texts(f"{where}.result_status", raw["result_status"])
    return When("tool", tool=value, matches=matches, result_status=statuses)


def _flag(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    if value is not True:
        raise ConfigError(f"{dotted}: expected true")
    return When(dotted.rpartition(".")[2])


def _seconds(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    seconds = _duration(dotted, value)
    kind = dotted.rpartition(".")[2]
    if kind == "silent_for" and not seconds > 0:
        # Every moment is 0 s after the last frame: it would never stop firing.
        raise ConfigError(f"{dotted}: must be longer than 0s")
    return When(kind, seconds=seconds)


def _size(dotted: str, value: Any, raw: dict[str, Any], where: str) -> When:
    try:
        size = parse_size(value)
    except PolicyError as exc:
        raise ConfigError(f"{dotted}: {exc}") from None
    if not size > 0:
        raise ConfigError(f"{dotted}: must be larger than 0")
    return When(dotted.rpartition(".")[2], size=size)


_PARSERS: dict[str, Callable[[str, Any, dict[str, Any], str], When]] = {
    "session_status": _statuses,
    "task_status": _statuses,
    "error_reply": _error_reply,
    "tool": _tool,
    "frame_type": _frame_type,
    "unknown_type": _flag,
    "link_down_for": _seconds,
    "silent_for": _seconds,
    "recording_behind": _seconds,
    "writer_fault": _flag,
    "db_size_above": _size,
    "disk_free_below": _size,
}


def _texts(dotted: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise ConfigError(f'{dotted}: expected a list of names, like ["failed"]')
    if not items and not allow_empty:
        raise ConfigError(f"{dotted}: the list is empty")
    return tuple(items)


def _regex(dotted: str, value: Any) -> Pattern:
    """A rule's regex, compiled by RE2: it matches in time linear in the text, so no
    frame can make a rule backtrack for seconds while the classifier waits (Python's
    ``re`` took 4 s for ``\\s+-rf`` over 64 KiB of spaces). RE2 has no backreferences
    and no lookaround: such a rule is refused here, in one line."""
    import re2

    if not isinstance(value, str):
        raise ConfigError(f"{dotted}: expected a regular expression (a string)")
    options = re2.Options()
    options.log_errors = False  # its C++ log would write to stderr beside our one line
    try:
        compiled: Pattern = re2.compile(value, options)
    except re2.error as exc:
        said = exc.args[0] if exc.args else exc
        said = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        raise ConfigError(f"{dotted}: bad regex {value!r}: {said} (RE2 syntax)") from None
    return compiled


def _duration(dotted: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except PolicyError as exc:
        raise ConfigError(f"{dotted}: {exc}") from None
