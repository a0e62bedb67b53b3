"""Alembic environment for the segment store: runs on a connection handed in by `migrate.py`."""

from alembic import context

VERSION_TABLE = "cs_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
