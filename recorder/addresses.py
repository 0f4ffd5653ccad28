"""Addresses as the recorder reads and shows them: ``host:port`` to listen on,
whether a host is this machine, and URLs with their secrets masked (for logs,
rows and errors) or, for databases, named the way people name them."""

from __future__ import annotations

import ipaddress
import re
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
