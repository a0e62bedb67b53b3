"""SQLAlchemy engines from connection details (the Airflow glue supplies those details).

`engine_for` is the read-write engine of the segment store and the Netmera user table; `sql`
sources get read-only ones from `include/sources/read_only.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.clients.connection import ConnectionInfo

# Airflow conn_type -> SQLAlchemy driver name.
_DRIVERS = {
    "sqlite": "sqlite",
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
}


def sqlalchemy_url(conn: ConnectionInfo) -> sa.URL:
    """Build the URL. A `sqlite` connection's host is the database file's path."""
    import sqlalchemy as sa

    driver = _DRIVERS.get(conn.conn_type)
    if driver is None:
        raise ValueError(
            f"connection {conn.conn_id!r}: conn_type {conn.conn_type!r} is not supported "
            f"(use one of {sorted(_DRIVERS)})"
        )
    if driver == "sqlite":
        if not conn.host:
            raise ValueError(f"connection {conn.conn_id!r}: a sqlite connection needs host=<file>")
        return sa.URL.create("sqlite", database=conn.host)
    return sa.URL.create(
        driver,
        username=conn.login or None,
        password=conn.password or None,
        host=conn.host or None,
        port=conn.port or None,
        database=conn.schema or None,
    )


def engine_for(conn: ConnectionInfo) -> sa.Engine:
    import sqlalchemy as sa

    url = sqlalchemy_url(conn)
    # Bound parameters (identifiers, user ids) never reach error messages, hence task logs.
    if url.get_backend_name() == "sqlite":
        # Writers wait for each other instead of failing at once ("database is locked").
        engine = sa.create_engine(url, connect_args={"timeout": 60}, hide_parameters=True)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
