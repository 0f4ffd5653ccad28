"""Addresses as the recorder reads and shows them: ``host:port`` to listen on,
whether a host is this machine, and URLs with their secrets masked (for logs,
rows and errors) or, for databases, named the way people name them; and the
database URL a configuration means."""

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


def display_database(url: str) -> str:
    """A database URL as a person names it: a SQLite file's path, or the URL without
    the driver and with the password masked."""
    scheme, _, rest = url.partition("://")
    backend = scheme.split("+")[0]
    if backend == "sqlite":
        path = rest.partition("?")[0]
        return path[1:] if path.startswith("/") else path
    return redact_url(f"{backend}://{rest}")


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


_SCHEME = re.compile(r"^([a-z][a-z0-9]*)(?:\+([a-z0-9_]+))?$")


def database_url(url: str, state_dir: Path) -> str:
    """Turn what a user writes (``sqlite:///x.db``, ``postgresql://...``) into an async
    URL; empty is the default file in ``state_dir``. ValueError says what is wrong.

    Parsed here rather than with SQLAlchemy's make_url so that the service's own
    process never loads SQLAlchemy (only its writer process does).
    """
    if not url:
        return f"sqlite+aiosqlite:///{state_dir / 'recorder.db'}"
    scheme, sep, rest = url.partition("://")
    match = _SCHEME.match(scheme.lower())
    if not sep or match is None:
        raise ValueError(f"not a database URL: {redact_url(url)!r}")
    backend, driver = match.group(1), match.group(2)
    if backend == "sqlite":
        if driver not in (None, "aiosqlite"):
            raise ValueError(f"SQLite needs the aiosqlite driver, got {scheme!r}")
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise ValueError("SQLite needs a file path (sqlite:///path/recorder.db)")
        return f"sqlite+aiosqlite://{rest}"
    if backend in ("postgresql", "postgres"):
        if driver not in (None, "asyncpg"):
            raise ValueError(f"PostgreSQL needs the asyncpg driver, got {scheme!r}")
        try:
            urlsplit(url).port  # noqa: B018 (read for its check)
        except ValueError:
            # Else the writer's start failed on it: Python's words, and exit 1, not 2.
            raise ValueError(f"the port is not a number 0-65535: {redact_url(url)!r}") from None
        return f"postgresql+asyncpg://{rest}"
    raise ValueError(f"unsupported database {backend!r} (use sqlite or postgresql)")
