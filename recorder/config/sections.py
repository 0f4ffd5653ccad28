"""The configuration's shape: one frozen dataclass per TOML section, every key with
its default, and the environment variables that supply secrets and the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recorder.addresses import split_listen
from recorder.alerts.spec import AlertsConfig
from recorder.cleanup.settings import CleanupConfig
from recorder.otel.settings import OtelConfig

ENV_CONFIG = "RECORDER_CONFIG"
ENV_TOKEN = "RECORDER_DAEMON_TOKEN"
ENV_API_KEY = "RECORDER_DAEMON_API_KEY"
ENV_DATABASE_URL = "RECORDER_DATABASE_URL"
ENV_PROXY_TOKEN = "RECORDER_PROXY_TOKEN"
ENV_METRICS_TOKEN = "RECORDER_METRICS_TOKEN"
ENV_WEB_TOKEN = "RECORDER_WEB_TOKEN"

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
class WebConfig:
    # host:port of the web console; empty: `recorder web` listens on DEFAULT_WEB_LISTEN.
    listen: str = ""
    # Browsers present it as Authorization: Bearer, or once as ?token= (then a cookie);
    # wanted on every address other machines reach.
    token: str | None = field(default=None, repr=False)
    # The console's address as people reach it ("https://recorder.example.net"): alert
    # notifications link to a session's page under it. Empty: they carry no link.
    public_url: str = ""


# Where `recorder web` listens unless told: loopback, beside the proxy's 8788.
DEFAULT_WEB_LISTEN = "127.0.0.1:8789"


@dataclass(frozen=True)
class ReportConfig:
    # When the service sends `recorder report` as a digest: cron, in UTC ("0 8 * * *").
    # Empty: never.
    schedule: str = ""
    # Its targets: names from [alerts.targets].
    notify: tuple[str, ...] = ()
    # The window it covers, up to when it is sent (seconds; "1d" in the file).
    since: float = 86400.0


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
    web: WebConfig = WebConfig()
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    report: ReportConfig = ReportConfig()
    otel: OtelConfig = field(default_factory=OtelConfig)
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
    "web": WebConfig,
    "cleanup": CleanupConfig,
    "alerts": AlertsConfig,
    "report": ReportConfig,
    "otel": OtelConfig,
}
