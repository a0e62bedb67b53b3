"""SQLAlchemy engines from connection details (the Airflow glue supplies those details).

`engine_for` is the read-write engine of the segment store and the Netmera user table; `sql`
sources get read-only ones from `include/connectors/read_only.py`.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
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


def copy_batch(conn: sa.Connection, table: str, batch: pa.RecordBatch) -> None:
    """PostgreSQL: COPY one Arrow batch into `table` (its columns in the table's order), as CSV
    with nulls unquoted and strings quoted (so an empty string stays one)."""
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    pcsv.write_csv(batch, buffer, pcsv.WriteOptions(include_header=False))
    buffer.seek(0)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(f"COPY {table} FROM STDIN WITH (FORMAT csv)", buffer)
    finally:
        cursor.close()


def read_arrow(conn: sa.Connection, query: sa.Select, schema: pa.Schema | None = None) -> pa.Table:
    """`query`'s rows as an Arrow table of `schema` (default: every column text). On
    PostgreSQL through COPY ... TO STDOUT (a million rows in about a second, where fetching
    them takes several), elsewhere fetched. COPY writes a null unquoted and an empty text
    quoted, a boolean as t or f: each is read back as it was."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if schema is None:
        schema = pa.schema([(c.name, pa.string()) for c in query.selected_columns])
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name != "postgresql":
        # The driver's tuples, not SQLAlchemy's rows (a third of the time for a million);
        # Arrow casts what the driver gives (SQLite's 0/1 for a boolean) to the schema.
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(sql)
            columns = list(zip(*cursor.fetchall(), strict=True)) or [()] * len(schema)
        finally:
            cursor.close()
        arrays = [pa.array(c).cast(f.type) for c, f in zip(columns, schema, strict=True)]
        return pa.table(arrays, schema=schema)
    buffer = io.BytesIO()
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", buffer)
    finally:
        cursor.close()
    if not buffer.tell():
        return schema.empty_table()
    buffer.seek(0)
    return pcsv.read_csv(
        buffer,
        read_options=pcsv.ReadOptions(column_names=schema.names),
        convert_options=pcsv.ConvertOptions(
            column_types=schema,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
