"""Bring the store's schema to the latest migration, once per process and engine.

Runs on first use by any task or CLI command, so a new deployment needs no manual DDL. On
PostgreSQL an advisory lock serialises concurrent first runs; on SQLite a file lock does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "cs_alembic_version"
_ADVISORY_LOCK_KEY = 0x6E6D5F6373  # "nm_cs"
_done: set[str] = set()


def _alembic_config(connection: sa.Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def heads_and_pending(current: set[str]) -> tuple[set[str], list[str]]:
    """The latest revisions of include/store/migrations and those missing on top of `current`,
    oldest first (what `doctor` reports; it never writes)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    heads = set(script.get_heads())
    newest_first = script.iterate_revisions(list(heads), list(current) or "base")
    return heads, [
        rev.revision for rev in reversed(list(newest_first)) if rev.revision not in current
    ]


@contextlib.contextmanager
def _sqlite_file_lock(engine: sa.Engine) -> Iterator[None]:
    """An exclusive lock on `<database>.cs-migrate.lock` for a SQLite file: its DDL is not
    transactional under pysqlite, so first runs racing each other (several refreshes starting
    at once on a new store) would each create half the tables. SQLite is local: flock is
    enough. Anything else passes through."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    try:
        lock = open(f"{database}.cs-migrate.lock", "a")  # noqa: SIM115 (closed below)
    except OSError:  # no such folder, read-only: SQLite's own error says it better
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(engine: sa.Engine) -> None:
    key = engine.url.render_as_string(hide_password=True)
    if key in _done:
        return
    from alembic import command

    logging.getLogger("alembic").setLevel(logging.WARNING)  # keeps CLI stdout clean

    with _sqlite_file_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_KEY}
            )
        command.upgrade(_alembic_config(connection), "head")
    _done.add(key)
