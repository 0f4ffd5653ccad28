"""The ``[report]`` table of the configuration, checked key by key: the daily digest.

```toml
[report]
schedule = "0 8 * * *"     # cron, in UTC
notify = ["phone"]         # names from [alerts.targets]
since = "1d"               # the window, up to when it is sent
```

Every problem is one line naming the key; the loader prefixes the file and exits 2.
The cron expression is read by APScheduler here, at load, and only when one is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recorder.config.sections import Config, ConfigError, ReportConfig
from recorder.protocol.policy import PolicyError, parse_duration

_KEYS = ("schedule", "notify", "since")


def parse_report(raw: Mapping[str, Any]) -> ReportConfig:
    """``raw`` is the TOML table; raises ConfigError naming the key (without the file)."""
    from recorder.alerts.digest import ScheduleError, cron

    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown key 'report.{unknown[0]}' (known: {', '.join(_KEYS)})")
    schedule = raw.get("schedule", "")
    if not isinstance(schedule, str):
        raise ConfigError('report.schedule: expected a cron expression, like "0 8 * * *"')
    schedule = schedule.strip()
    if schedule:
        try:
            cron(schedule)
        except ScheduleError as exc:
            raise ConfigError(f"report.schedule: {exc}") from None
    notify = raw.get("notify", [])
    if not isinstance(notify, list) or not all(isinstance(n, str) and n for n in notify):
        raise ConfigError('report.notify: expected a list of target names, like ["phone"]')
    if schedule and not notify:
        raise ConfigError("report.notify: the digest needs a target from [alerts.targets]")
    since = ReportConfig.since
    if "since" in raw:
        try:
            since = parse_duration(raw["since"])
        except PolicyError as exc:
            raise ConfigError(f"report.since: {exc}") from None
        if not since > 0:
            raise ConfigError("report.since: must be longer than 0s")
    return ReportConfig(schedule, tuple(dict.fromkeys(notify)), since)


def check_report(source: str, config: Config) -> None:
    """Every name in ``report.notify`` is a target of ``[alerts.targets]`` (which the
    file may give before or after ``[report]``)."""
    names = {t.name for t in config.alerts.targets}
    for name in config.report.notify:
        if name not in names:
            raise ConfigError(
                f"{source}: report.notify: no target named {name!r} in [alerts.targets]"
            )
