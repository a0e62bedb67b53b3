"""Alembic environment for the segment store: runs on a connection handed in by `migrate.py`."""

from alembic import context

from include.store.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
