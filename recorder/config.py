"""Configuration: a TOML file, every key optional, secrets and database from the environment.

Loading is pure apart from reading the file: nothing is created or opened here, so
a bad configuration stops the service before anything starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recorder.addresses import (
    default_state_dir,
    is_loopback,
    redact_url,
    split_listen,
)
from recorder.cleanup.settings import CleanupConfig, parse_cleanup
from recorder.db.backend import database_url
from recorder.protocol.policy import PolicyError

ENV_CONFIG = "RECORDER_CONFIG"
ENV_TOKEN = "RECORDER_DAEMON_TOKEN"
ENV_API_KEY = "RECORDER_DAEMON_API_KEY"
ENV_DATABASE_URL = "RECORDER_DATABASE_URL"
ENV_PROXY_TOKEN = "RECORDER_PROXY_TOKEN"
ENV_METRICS_TOKEN = "RECORDER_METRICS_TOKEN"

MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration problem, phrased as one line naming the file and the key."""


@dataclass(frozen=True)
class DaemonConfig:
    url: str = "ws://localhost:8787"
    token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    max_frame_bytes: int = 64 * MiB
    open_timeout: float = 10.0


@dataclass(frozen=True)
class ReconnectConfig:
    base: float = 3.0
    factor: float = 2.0
    cap: float = 30.0
    max_attempts: int = 0
    stable_after: float = 60.0


@dataclass(frozen=True)
class HeartbeatConfig:
    interval: float = 30.0
    timeout: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    url: str = ""
    commit_interval: float = 1.0
    batch_size: int = 2000
    queue_max_frames: int = 20000
    queue_max_bytes: int = 64 * MiB
    shutdown_timeout: float = 30.0
    # This recorder's name in the database: several recorders may share one
    # PostgreSQL database, one instance name each.
    instance: str = "default"
    # Purge finished sessions older than this (a duration, "30d"); empty: keep all.
    retention: str = ""
    # Purge the oldest finished sessions while the database is larger ("20GiB").
    max_db_size: str = ""

    @property
    def retention_s(self) -> float | None:
        from recorder.protocol.policy import parse_duration

        return parse_duration(self.retention) if self.retention else None

    @property
    def max_db_bytes(self) -> int | None:
        from recorder.protocol.policy import parse_size

        return parse_size(self.max_db_size) if self.max_db_size else None


@dataclass(frozen=True)
class ProxyConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:8788"
    # Empty: the same daemon as daemon.url.
    upstream: str = ""
    token: str | None = field(default=None, repr=False)
    inject_auth: bool = False
    allow_remote_without_auth: bool = False
    max_clients: int = 64

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True)
class MetricsConfig:
    # host:port for GET /metrics when the proxy is off; with the proxy on, /metrics is
    # on the proxy's port. Empty: only there.
    listen: str = ""
    # Scrapers send it as Authorization: Bearer; wanted wherever it is set, and on every
    # address other machines reach (where the proxy's token is taken too).
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = DaemonConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    storage: StorageConfig = StorageConfig()
    proxy: ProxyConfig = ProxyConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    # Where the settings came from, for messages.
    source: str = "<defaults>"

    @property
    def database_url(self) -> str:
        return self.storage.url


SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "reconnect": ReconnectConfig,
    "heartbeat": HeartbeatConfig,
    "storage": StorageConfig,
    "proxy": ProxyConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "cleanup": CleanupConfig,
}

POSITIVE = {
    "daemon.max_frame_bytes",
    "daemon.open_timeout",
    "reconnect.base",
    "reconnect.cap",
    "heartbeat.interval",
    "heartbeat.timeout",
    "storage.commit_interval",
    "storage.batch_size",
    "storage.queue_max_frames",
    "storage.queue_max_bytes",
    "storage.shutdown_timeout",
    "proxy.max_clients",
}
NON_NEGATIVE = {"reconnect.max_attempts", "reconnect.stable_after"}
# Durations of the link's schedule: at most a day, so that no delay overflows a clock.
MAX_SECONDS = 86_400.0
AT_MOST_A_DAY = {
    "reconnect.base",
    "reconnect.cap",
    "reconnect.stable_after",
    "heartbeat.interval",
    "heartbeat.timeout",
}
# The growth of the reconnect delay per attempt (the cap bounds the delay itself).
MAX_FACTOR = 1000.0
CHOICES = {
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("auto", "console", "json"),
}


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
        sections[key] = _build_section(source, key, SECTIONS[key], value)
    config = Config(**sections, source=source)
    config = _apply_env(config, env)
    return _finish(config, env)


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
)


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    # Blank values are no values: RECORDER_PROXY_TOKEN=" " must not count as a token.
    env = {k: v.strip() for k, v in env.items() if k.startswith("RECORDER_")}
    for variable, name, key in ENV_OVERRIDES:
        if env.get(variable):
            section = dataclasses.replace(getattr(config, name), **{key: env[variable]})
            config = dataclasses.replace(config, **{name: section})
    return config


def _finish(config: Config, env: Mapping[str, str]) -> Config:
    src = config.source
    name = config.storage.instance
    if not name.strip() or len(name) > 64 or not name.isprintable():
        # It names the recorder in rows, locks and `recorder status`: it must be seen.
        raise ConfigError(
            f"{src}: storage.instance: must be 1 to 64 printable characters, got {name!r}"
        )
    for name in SECTIONS:
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            dotted = f"{name}.{f.name}"
            value = getattr(section, f.name)
            if dotted in POSITIVE and not value > 0:
                raise ConfigError(f"{src}: {dotted}: must be greater than 0, got {value!r}")
            if dotted in NON_NEGATIVE and value < 0:
                raise ConfigError(f"{src}: {dotted}: must not be negative, got {value!r}")
            if dotted in AT_MOST_A_DAY and not (math.isfinite(value) and value <= MAX_SECONDS):
                raise ConfigError(
                    f"{src}: {dotted}: must be at most {MAX_SECONDS:g} seconds (a day), "
                    f"got {value!r}"
                )
            if dotted in CHOICES and value not in CHOICES[dotted]:
                allowed = ", ".join(CHOICES[dotted])
                raise ConfigError(f"{src}: {dotted}: must be one of {allowed}, got {value!r}")
    if not 1 <= config.reconnect.factor <= MAX_FACTOR:
        raise ConfigError(
            f"{src}: reconnect.factor: must be between 1 and {MAX_FACTOR:g}, "
            f"got {config.reconnect.factor!r}"
        )
    for key, parse in (("retention", "retention_s"), ("max_db_size", "max_db_bytes")):
        try:
            getattr(config.storage, parse)
        except PolicyError as exc:
            raise ConfigError(f"{src}: storage.{key}: {exc}") from None
    if config.reconnect.cap < config.reconnect.base:
        raise ConfigError(f"{src}: reconnect.cap: must be at least reconnect.base")
    _check_ws_url(src, "daemon.url", config.daemon.url)
    if config.daemon.ca_file is not None:
        _check_ca_file(src, config.daemon.ca_file)
    _check_proxy(src, config)
    storage = dataclasses.replace(
        config.storage, url=normalize_database_url(src, config.storage.url, env)
    )
    return dataclasses.replace(config, storage=storage)


def _check_proxy(src: str, config: Config) -> None:
    proxy, metrics = config.proxy, config.metrics
    host = _listen_host(src, "proxy.listen", proxy.listen, "127.0.0.1:8788")
    if proxy.upstream:
        _check_ws_url(src, "proxy.upstream", proxy.upstream)
    if proxy.enabled and proxy.inject_auth and not proxy.token:
        raise ConfigError(
            f"{src}: proxy.inject_auth: lends the recorder's credentials to proxy clients, so "
            "it needs proxy.token (or RECORDER_PROXY_TOKEN): only clients presenting it get them"
        )
    if metrics.listen:
        metrics_host = _listen_host(src, "metrics.listen", metrics.listen, "127.0.0.1:9464")
        if not is_loopback(metrics_host) and not metrics.token:
            raise ConfigError(
                f"{src}: metrics.listen: {metrics.listen} is reachable from other machines; "
                "set metrics.token (or RECORDER_METRICS_TOKEN)"
            )
    if (
        proxy.enabled
        and not is_loopback(host)
        and not proxy.token
        and not proxy.allow_remote_without_auth
    ):
        raise ConfigError(
            f"{src}: proxy.listen: {proxy.listen} is reachable from other machines; set proxy.token "
            "(or RECORDER_PROXY_TOKEN), or proxy.allow_remote_without_auth = true"
        )


def _listen_host(src: str, dotted: str, listen: str, example: str) -> str:
    try:
        return split_listen(listen)[0]
    except ValueError:
        raise ConfigError(
            f"{src}: {dotted}: expected host:port (like {example}), got {listen!r}"
        ) from None


def _check_ws_url(src: str, dotted: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(f"{src}: {dotted}: not a valid URL: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(
            f"{src}: {dotted}: must start with ws:// or wss://, got {redact_url(url)!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"{src}: {dotted}: no host in {redact_url(url)!r}")


def normalize_database_url(src: str, url: str, env: Mapping[str, str]) -> str:
    """:func:`recorder.db.backend.database_url`, its refusal a ConfigError naming ``src``."""
    try:
        return database_url(url, default_state_dir(env))
    except ValueError as exc:
        raise ConfigError(f"{src}: storage.url: {exc}") from None


def _check_ca_file(src: str, path: str) -> None:
    """The file the link trusts for wss://: read now, so that a wrong one is a config
    error, not a TLS traceback at the first connection."""
    if not Path(path).is_file():
        raise ConfigError(f"{src}: daemon.ca_file: no such file {path!r}")
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError, OSError):
        raise ConfigError(
            f"{src}: daemon.ca_file: {path!r} holds no certificate (PEM) to trust"
        ) from None
