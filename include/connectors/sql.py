"""`sql` source: a query streamed with a server-side cursor, on an engine whose connections can
only read (`read_only.py`; `read_source` builds it from the source's Connection)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from include.connectors.errors import SourceError
from include.connectors.exact_text import exact_text_values
from include.connectors.fields import SegmentFields, require_fields, select_fields
from include.connectors.read_only import (
    READS,
    NotReadOnly,
    read_only_connection,
    read_only_problem,
    refused_as_a_write,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import SqlSource


def read_sql(
    source: SqlSource, segment: SegmentFields, engine: sa.Engine, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """`engine`: from `read_only.source_engine_for`; the caller disposes of it."""
    import pyarrow as pa
    import sqlalchemy as sa

    query, conn_id = source.query, source.conn_id
    field = f"segment {segment.id!r}: field 'source.query' on connection {conn_id!r}"
    problem = read_only_problem(query)
    if problem:
        raise SourceError(f"{field} was refused before it ran: {problem}; {READS}")
    where = f"the query on connection {conn_id!r}"
    try:
        with read_only_connection(engine) as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                sa.text(query)
            )
            names = list(result.keys())
            require_fields(names, segment, f"result of the query on {conn_id!r}")
            # Only the segment's fields are converted: an odd unrelated column never fails.
            wanted = {name: names.index(name) for name in segment.source_fields}
            done = 0
            for rows in result.partitions(batch_rows):
                columns = {
                    name: pa.array(
                        exact_text_values(
                            [row[i] for row in rows], name, segment, where, first_row=done
                        ),
                        type=pa.string(),
                    )
                    for name, i in wanted.items()
                }
                done += len(rows)
                yield select_fields(pa.RecordBatch.from_pydict(columns), segment)
    except NotReadOnly as exc:  # the driver-level guard, or a connection not read-only
        raise SourceError(f"{field} was refused: {exc}; {READS}") from exc
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        reason = f"{type(orig).__name__}: {str(orig).strip()}"
        if refused_as_a_write(exc):
            raise SourceError(
                f"{field} was refused by the database, which runs it read-only ({reason}); {READS}"
            ) from exc
        raise SourceError(
            f"segment {segment.id!r}: query on connection {conn_id!r} failed: "
            f"{type(exc).__name__}: {orig}"
        ) from exc
