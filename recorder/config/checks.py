"""What a typed configuration must also be: values in range, addresses and URLs that
parse, secrets that fit in a header, a CA file that holds a certificate. Each problem
is one line naming the file and the key."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from recorder.addresses import default_state_dir, is_loopback, redact_url, split_listen
from recorder.config.sections import SECTIONS, Config, ConfigError
from recorder.db.urls import database_url
from recorder.protocol.policy import PolicyError

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


def checked(config: Config, env: Mapping[str, str]) -> Config:
    """``config`` once every value is in range and every address, URL, secret and file
    is usable, its database URL completed; else the first problem as a ConfigError."""
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
    _check_secrets(src, config)
    if config.daemon.ca_file is not None:
        _check_ca_file(src, config.daemon.ca_file)
    _check_proxy(src, config)
    if config.web.listen:
        web_needs_token(src, "web.listen", config.web.listen, config.web.token)
    if config.web.public_url:
        _check_public_url(src, config.web.public_url)
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


# Secrets travel in HTTP headers, which carry ASCII: a token with other characters
# would be sent and compared as different bytes by different clients, and fail for ever.
# otel.headers are secrets too: recorder.config.otel checks them as it reads them.
SECRETS = (
    "daemon.token",
    "daemon.api_key",
    "proxy.token",
    "metrics.token",
    "web.token",
)
# Alert targets' URLs are secrets too, of any shape: recorder.config.alerts checks them
# without repeating them, and recorder.alerts.spec.mask_url is how one is shown.


def _check_secrets(src: str, config: Config) -> None:
    for dotted in SECRETS:
        name, key = dotted.split(".")
        secret = getattr(getattr(config, name), key)
        if secret is not None and not (secret.isascii() and secret.isprintable()):
            # The value is a secret: it is not repeated.
            raise ConfigError(
                f"{src}: {dotted}: must be printable ASCII (it is sent in an HTTP header)"
            )


def web_needs_token(src: str, dotted: str, listen: str, token: str | None) -> None:
    """Refuse a console other machines reach without a token: it shows every recorded
    byte, the daemon's credentials in spawn requests included."""
    host = _listen_host(src, dotted, listen, "127.0.0.1:8789")
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"{src}: {dotted}: {listen} is reachable from other machines; "
            "set web.token (or RECORDER_WEB_TOKEN)"
        )


def _listen_host(src: str, dotted: str, listen: str, example: str) -> str:
    try:
        return split_listen(listen)[0]
    except ValueError:
        raise ConfigError(
            f"{src}: {dotted}: expected host:port (like {example}), got {listen!r}"
        ) from None


def _check_public_url(src: str, url: str) -> None:
    """The console's address, which notifications carry to phones and chat rooms:
    a plain http(s) URL, with no credentials to carry along."""
    parts = split_url(f"{src}: web.public_url", url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{src}: web.public_url: expected http(s)://host[/path], got {redact_url(url)!r}"
        )
    if "@" in parts.netloc or parts.query or parts.fragment:
        # Every notification would hand the credentials or the token to its readers.
        raise ConfigError(
            f"{src}: web.public_url: no credentials, query or fragment: it is sent in "
            "every notification"
        )


def split_url(where: str, url: str) -> SplitResult:
    """``url``'s parts; a ConfigError naming ``where`` if it does not parse, its port
    included (urlsplit checks the port only when asked for it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid URL: {exc}") from None
    return parts


def _check_ws_url(src: str, dotted: str, url: str) -> None:
    parts = split_url(f"{src}: {dotted}", url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(
            f"{src}: {dotted}: must start with ws:// or wss://, got {redact_url(url)!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"{src}: {dotted}: no host in {redact_url(url)!r}")


def normalize_database_url(src: str, url: str, env: Mapping[str, str]) -> str:
    """:func:`recorder.db.urls.database_url`, its refusal a ConfigError naming ``src``."""
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
