"""Configuration: a TOML file, every key optional, secrets and database from the environment.

Loading is pure apart from reading the file: nothing is created or opened here, so
a bad configuration stops the service before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from recorder.cleanup.settings import parse_cleanup
from recorder.config.alerts import parse_alerts
from recorder.config.checks import checked, normalize_database_url
from recorder.config.otel import parse_otel
from recorder.config.report import check_report, parse_report
from recorder.config.sections import (
    ENV_API_KEY,
    ENV_CONFIG,
    ENV_DATABASE_URL,
    ENV_METRICS_TOKEN,
    ENV_PROXY_TOKEN,
    ENV_TOKEN,
    ENV_WEB_TOKEN,
    SECTIONS,
    Config,
    ConfigError,
    DaemonConfig,
    HeartbeatConfig,
    LogConfig,
    MetricsConfig,
    ProxyConfig,
    ReconnectConfig,
    StorageConfig,
    WebConfig,
)
from recorder.protocol.policy import PolicyError

__all__ = [
    "ENV_API_KEY",
    "ENV_CONFIG",
    "ENV_DATABASE_URL",
    "ENV_METRICS_TOKEN",
    "ENV_PROXY_TOKEN",
    "ENV_TOKEN",
    "ENV_WEB_TOKEN",
    "SECTIONS",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "HeartbeatConfig",
    "LogConfig",
    "MetricsConfig",
    "ProxyConfig",
    "ReconnectConfig",
    "StorageConfig",
    "WebConfig",
    "load_config",
    "normalize_database_url",
]


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read the TOML file at ``path`` (or ``$RECORDER_CONFIG``), apply the environment, validate."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get(ENV_CONFIG) or None
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory, not a config file") from None
        except PermissionError:
            raise ConfigError(f"{source}: cannot read config file (permission denied)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: not valid TOML: not UTF-8") from None

    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"{source}: unknown section or key {key!r}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table ([{key}])")
        if key == "cleanup":
            try:
                sections[key] = parse_cleanup(value)
            except PolicyError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            continue
        if key in ("alerts", "report"):
            try:
                sections[key] = parse_alerts(value, env) if key == "alerts" else parse_report(value)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            continue
        if key == "otel":
            continue  # below, with its environment fallbacks even when absent
        sections[key] = _build_section(source, key, SECTIONS[key], value)
    try:
        sections["otel"] = parse_otel(raw.get("otel", {}), env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    config = Config(**sections, source=source)
    check_report(source, config)
    config = _apply_env(config, env)
    return checked(config, env)


def _build_section(source: str, name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"{source}: unknown key {dotted!r}")
        kwargs[key] = _check_type(source, dotted, hints[key], value)
    return cls(**kwargs)


def _check_type(source: str, dotted: str, hint: Any, value: Any) -> Any:
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        # An empty (or blank) string means "not set" for optional keys (secrets, CA
        # file): a token of spaces is no token.
        return (value.strip() or None) if optional else value
    if base is bool and isinstance(value, bool):
        return value
    expected = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}[base]
    raise ConfigError(f"{source}: {dotted}: expected {expected}, got {_toml_kind(value)} {value!r}")


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# Environment variables over keys: (variable, section, key).
ENV_OVERRIDES = (
    (ENV_TOKEN, "daemon", "token"),
    (ENV_API_KEY, "daemon", "api_key"),
    (ENV_DATABASE_URL, "storage", "url"),
    (ENV_PROXY_TOKEN, "proxy", "token"),
    (ENV_METRICS_TOKEN, "metrics", "token"),
    (ENV_WEB_TOKEN, "web", "token"),
)


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    # Blank values are no values: RECORDER_PROXY_TOKEN=" " must not count as a token.
    env = {k: v.strip() for k, v in env.items() if k.startswith("RECORDER_")}
    for variable, name, key in ENV_OVERRIDES:
        if env.get(variable):
            section = dataclasses.replace(getattr(config, name), **{key: env[variable]})
            config = dataclasses.replace(config, **{name: section})
    return config
