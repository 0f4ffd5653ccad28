"""The database: schema, engines and URLs, migrations, the write side and the read side.

One MetaData, one alembic history, two dialects (SQLite, PostgreSQL). Only the
database process writes; the CLI reads.
"""
