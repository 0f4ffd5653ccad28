"""Alembic migrations, run from code: the writer migrates at start-up, the CLI on request."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from recorder.db.engine import StoreError

if TYPE_CHECKING:
    # Imported where used: alembic is about 10 MB that the long-running database
    # process never needs (a short-lived process migrates).
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.ext.asyncio import AsyncEngine


class NewerSchema(StoreError):
    """The database was migrated by a newer recorder: starting again cannot help."""


def migrations_dir() -> Path:
    """The alembic scripts: packaged as recorder/migrations in the wheel, or the
    top-level alembic/ directory of a source checkout (editable installs too)."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "migrations"
    return packaged if packaged.is_dir() else package.parent / "alembic"


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revision(revision: str) -> bool:
    """Whether this recorder's migrations include ``revision``."""
    from alembic.script import ScriptDirectory

    return any(
        script.revision == revision
        for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    )


def _upgrade_sync(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    from alembic import command

    command.upgrade(cfg, revision)


def _current_sync(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade_sync(connection: Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Run migrations up to ``revision`` in one transaction; returns (before, after)."""
    with connection.begin():
        if connection.dialect.name == "postgresql":
            # Recorders starting at once on a new database: one migrates, the others
            # wait for it and find the schema done.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(5151780155011)")
        before = _current_sync(connection)
        try:
            _upgrade_sync(connection, revision)
        except Exception:
            if before is not None and not known_revision(before):
                # Alembic's traceback says "Can't locate revision"; what it means is this.
                raise NewerSchema(
                    f"the database's schema is revision {before!r}, which this recorder"
                    f" does not know (its newest is {head_revision()}): a newer recorder"
                    " wrote it"
                ) from None
            raise
        after = _current_sync(connection)
    return before, after


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Run migrations up to ``revision``; returns (before, after)."""
    async with engine.connect() as conn:
        return await conn.run_sync(upgrade_sync, revision)


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_sync)
