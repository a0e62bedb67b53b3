"""`sql` source: a query run through an Airflow Connection, streamed with a server-side cursor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from include.connectors.base import ConnectionInfo, SourceError, as_string_batch, require_fields
from include.db import engine_for

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig


def read_sql(
    segment: SegmentConfig, connection: ConnectionInfo, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import sqlalchemy as sa

    engine = engine_for(connection)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                sa.text(segment.source.query)
            )
            names = list(result.keys())
            require_fields(names, segment, f"result of the query on {connection.conn_id!r}")
            for rows in result.partitions(batch_rows):
                columns = list(zip(*rows, strict=True))
                batch = pa.RecordBatch.from_pydict(
                    {
                        name: pa.array(
                            [None if v is None else str(v) for v in col], type=pa.string()
                        )
                        for name, col in zip(names, columns, strict=True)
                    }
                )
                yield as_string_batch(batch, segment)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(
            f"segment {segment.id!r}: query on connection {connection.conn_id!r} failed: "
            f"{type(exc).__name__}: {exc.orig if getattr(exc, 'orig', None) else exc}"
        ) from exc
    finally:
        engine.dispose()
