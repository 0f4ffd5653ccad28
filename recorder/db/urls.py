"""Database URLs as users write them, made into the async URLs the backends take.

Parsed here rather than with SQLAlchemy's make_url so that the service's own process
never loads SQLAlchemy (only its writer process does).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from recorder.addresses import redact_url

_SCHEME = re.compile(r"^([a-z][a-z0-9]*)(?:\+([a-z0-9_]+))?$")


def canonical(scheme: str) -> str:
    """A URL scheme's database name (``postgres`` is PostgreSQL's other spelling)."""
    return "postgresql" if scheme == "postgres" else scheme


def database_url(url: str, state_dir: Path) -> str:
    """Turn what a user writes (``sqlite:///x.db``, ``postgresql://...``) into an async
    URL; empty is the default file in ``state_dir``. ValueError says what is wrong."""
    if not url:
        return f"sqlite+aiosqlite:///{state_dir / 'recorder.db'}"
    scheme, sep, rest = url.partition("://")
    match = _SCHEME.match(scheme.lower())
    if not sep or match is None:
        raise ValueError(f"not a database URL: {redact_url(url)!r}")
    name, driver = canonical(match.group(1)), match.group(2)
    if name == "sqlite":
        if driver not in (None, "aiosqlite"):
            raise ValueError(f"SQLite needs the aiosqlite driver, got {scheme!r}")
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise ValueError("SQLite needs a file path (sqlite:///path/recorder.db)")
        return f"sqlite+aiosqlite://{rest}"
    if name == "postgresql":
        if driver not in (None, "asyncpg"):
            raise ValueError(f"PostgreSQL needs the asyncpg driver, got {scheme!r}")
        try:
            urlsplit(url).port  # noqa: B018 (read for its check)
        except ValueError:
            # Else the writer's start failed on it: Python's words, and exit 1, not 2.
            raise ValueError(f"the port is not a number 0-65535: {redact_url(url)!r}") from None
        return f"postgresql+asyncpg://{rest}"
    raise ValueError(f"unsupported database {name!r} (use sqlite or postgresql)")


_LOOKS_LIKE_A_URL = re.compile(r"^(postgres|postgresql|sqlite)(\+\w+)?:", re.IGNORECASE)


def url_of_argument(text: str) -> str:
    """What a user gave as a database (``--database``): a URL, or a SQLite file's path.
    ValueError for what reads like a mistyped URL: ``postgresql:/u:pw@h/x`` is not a
    file to create (`db upgrade` made that directory tree, errors showed the password)."""
    if "://" in text:
        return text
    if _LOOKS_LIKE_A_URL.match(text):
        raise ValueError(
            f"not a database URL: {redact_url(text)!r}"
            " (like postgresql://user@host/db, sqlite:///path/recorder.db, or a file path)"
        )
    return f"sqlite:///{text}"
