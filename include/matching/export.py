"""A query's result → Parquet, streamed, one batch in memory at a time.

PostgreSQL streams through `COPY (query) TO STDOUT` into Arrow's streaming CSV reader (several
times faster than fetching rows through the driver); other databases through a server-side
cursor. Values arrive as text, or booleans for boolean columns of the schema, as the matcher
compares them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

BATCH_ROWS = 100_000


def export_query(conn: sa.Connection, sql: str, schema: pa.Schema, destination: Path) -> Path:
    """Write the rows of `sql` (columns in `schema` order) to `destination`."""
    import pyarrow.parquet as pq

    with pq.ParquetWriter(destination, schema) as writer:
        for batch in stream_query(conn, sql, schema):
            writer.write_batch(batch)
    return destination


def fetch_query(conn: sa.Connection, sql: str, schema: pa.Schema) -> pa.Table:
    """The rows of `sql` as one Arrow table (for audience-sized results)."""
    import pyarrow as pa

    return pa.Table.from_batches(list(stream_query(conn, sql, schema)), schema=schema)


def stream_query(conn: sa.Connection, sql: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    if conn.dialect.name == "postgresql":
        return _copy_out(conn, sql, schema)
    return _fetch_out(conn, sql, schema)


def _fetch_out(conn: sa.Connection, sql: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    result = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS).exec_driver_sql(sql)
    for rows in result.partitions(BATCH_ROWS):
        columns = list(zip(*rows, strict=True))
        yield pa.RecordBatch.from_arrays(
            [_to_arrow(col, field.type) for col, field in zip(columns, schema, strict=True)],
            schema=schema,
        )


def _to_arrow(values: tuple, type_: Any) -> Any:
    import pyarrow as pa

    if type_ == pa.bool_():
        return pa.array([None if v is None else bool(v) for v in values], pa.bool_())
    if pa.types.is_integer(type_):
        return pa.array(values, type_)
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def _copy_out(conn: sa.Connection, sql: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """COPY out as CSV through a pipe: a thread writes it on this connection (its session's
    temporary tables included), Arrow reads it. A failure on either side ends both."""
    import pyarrow.csv as pcsv

    read_end, write_end = os.pipe()
    failed: list[BaseException] = []
    cursor = conn.connection.dbapi_connection.cursor()

    def produce() -> None:
        try:
            with os.fdopen(write_end, "wb") as sink:
                cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", sink)
        except BaseException as exc:  # re-raised in the caller's thread below
            failed.append(exc)

    producer = threading.Thread(target=produce, name="copy-out", daemon=True)
    producer.start()
    options = pcsv.ConvertOptions(
        column_types=schema,
        strings_can_be_null=True,  # COPY writes NULL unquoted and empty, ''
        null_values=[""],  # ... only that: "NA", "n/a", "null" are values like any other
        quoted_strings_can_be_null=False,  # ... and an empty string as ""
        true_values=["t"],
        false_values=["f"],
    )
    try:
        with os.fdopen(read_end, "rb") as source:
            if source.peek(1):
                yield from pcsv.open_csv(
                    source,
                    read_options=pcsv.ReadOptions(column_names=schema.names),
                    convert_options=options,
                )
    finally:
        producer.join()
        cursor.close()
    if failed:
        raise failed[0]
