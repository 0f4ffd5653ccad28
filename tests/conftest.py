from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from recorder.config import Config, load_config
from recorder.service.lifecycle import Service

TIMEOUT = 20

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def pg_admin(sql: str, url: str = ADMIN) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"recorder_test_{os.getpid()}"
    try:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def either_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The writer's URL of a SQLite file under tmp_path, then of a PostgreSQL database:
    a test taking it runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recorder.db'}"
    pg: str = request.getfixturevalue("pg_url")
    return pg.replace("postgresql://", "postgresql+asyncpg://")


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Commands run in this process (CliRunner) configure structlog for themselves;
    the next test starts from the defaults again."""
    yield
    structlog.reset_defaults()


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML file from plain dicts (strings, numbers, booleans)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                rendered = repr(value)
            lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    return path


def proxy_recording_config(
    tmp: Path, daemon_url: str, db: Path, **sections: dict[str, Any]
) -> Config:
    """The service recording ``daemon_url`` into the SQLite file ``db``, its proxy on a
    free port, quick commits, JSON logs; ``sections`` add or override keys."""
    base: dict[str, dict[str, Any]] = {
        "daemon": {"url": daemon_url},
        "storage": {"url": f"sqlite:///{db}", "commit_interval": 0.05},
        "proxy": {"listen": "127.0.0.1:0"},
        "log": {"format": "json"},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return load_config(write_config(tmp / "config.toml", base), env={})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "recorder.db"


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[..., Path]:
    """A config file for `recorder run` as a process: a dead daemon, fast retries,
    JSON logs; sections override any key, ``name`` makes a second file."""

    def make(name: str = "config", **sections: dict[str, Any]) -> Path:
        base: dict[str, dict[str, Any]] = {
            "daemon": {"url": "ws://127.0.0.1:9", "open_timeout": 2.0},
            "reconnect": {"base": 0.05, "cap": 0.2},
            "storage": {"url": f"sqlite:///{tmp_path / 'recorder.db'}", "commit_interval": 0.05},
            "proxy": {"listen": "127.0.0.1:0"},
            "log": {"format": "json"},
        }
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        return write_config(tmp_path / f"{name}.toml", base)

    return make


@pytest.fixture
def make_config(tmp_path: Path, db_path: Path) -> Callable[..., Config]:
    """A Config for a daemon URL, fast timings for tests; sections override any key."""

    def make(url: str, **sections: dict[str, Any]) -> Config:
        base: dict[str, dict[str, Any]] = {
            "daemon": {"url": url, "open_timeout": 2.0},
            "reconnect": {"base": 0.05, "factor": 2.0, "cap": 0.5, "stable_after": 60.0},
            "heartbeat": {"interval": 30.0, "timeout": 10.0},
            "storage": {"url": f"sqlite:///{db_path}", "commit_interval": 0.05},
            "proxy": {"listen": "127.0.0.1:0"},
            "log": {"format": "json"},
        }
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        return load_config(write_config(tmp_path / "config.toml", base), env={})

    return make


class RunningService(Service):
    """The real service, plus what its ``run()`` returned once ``running()`` stopped it."""

    exit_code: int


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[RunningService]:
    """The real service in this event loop; stopped (and drained) on exit."""
    service = RunningService(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    async with asyncio.timeout(TIMEOUT):
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
    try:
        yield service
    finally:
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            service.exit_code = await task
