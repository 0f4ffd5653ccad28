"""Addresses as the recorder reads and shows them: ``host:port`` to listen on,
whether a host is this machine, URLs with their secrets masked (for logs, rows and
errors), and where the default database lives. What a database URL names is
:mod:`recorder.db.backend`'s."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (host, port); ValueError if it is neither."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(listen)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_USERINFO = re.compile(r":[^:@/\s]+@")
SECRET_QUERY_KEYS = {"token", "apikey", "api_key", "access_token", "key", "password"}


def redact_url(url: str) -> str:
    """The URL with credentials (userinfo password, ?token=, ?apiKey=) replaced, for logs and rows."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and _USERINFO.search(url):
        # Not parsed as a URL with a password (postgresql:/u:pw@h, u:pw@h), yet
        # it reads like one: mask what stands between ':' and '@' all the same.
        return _USERINFO.sub(":***@", url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, sep, _ = piece.partition("=")
            pieces.append(f"{name}=***" if sep and name.lower() in SECRET_QUERY_KEYS else piece)
        query = "&".join(pieces)
    if netloc == parts.netloc and query == parts.query:
        # Rebuilding would turn sqlite:////abs/path into sqlite://abs/path.
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where the default SQLite file lives: systemd's StateDirectory, else XDG state home."""
    state = env.get("STATE_DIRECTORY")
    if state:
        # systemd joins several directories with ':'; the first one is ours.
        return Path(state.split(":")[0])
    xdg = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME") or Path.home()) / ".local" / "state"
    )
    return Path(xdg) / "orchestrator-recorder"
