"""Alembic environment for orchestrator-recorder.

The service runs migrations itself at start-up (``recorder.db.migrations``), handing
this script an open connection through ``config.attributes["connection"]``. The
``alembic`` command-line tool works too, for developers writing new revisions:
it reads ``sqlalchemy.url`` from ``alembic.ini`` or ``RECORDER_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from recorder.db.schema import metadata

config = context.config


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone(url: str) -> None:
    # Imported here: the service's database process migrates through run_with() and
    # never needs the asyncio extension (about 8 MB).
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(run_with)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run_with(connection)
elif context.is_offline_mode():
    context.configure(
        url=os.environ.get("RECORDER_DATABASE_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    url = os.environ.get("RECORDER_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set RECORDER_DATABASE_URL or sqlalchemy.url in alembic.ini")
    asyncio.run(run_standalone(url))
