"""The connector interface and the dispatch from a source `type` to its module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig

BATCH_ROWS = 50_000


@dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow Connection a connector may use (no Airflow import needed)."""

    conn_id: str
    conn_type: str
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ConnectionGetter = Callable[[str], ConnectionInfo]


class SourceError(RuntimeError):
    """The source cannot be read completely; the run must fail rather than publish part of it."""


def read_source(
    segment: SegmentConfig,
    get_connection: ConnectionGetter,
    workdir: Path,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Yield batches whose columns are `segment.source_fields`, every value a string or null.

    `workdir` belongs to this run: a connector may keep checkpoints there, so that a retried
    task resumes instead of starting over. A connector that cannot read its source completely
    raises SourceError; it never ends early as if the audience were complete. Values that are
    not text become text exactly, or the read fails naming the field (see `exact_text`).
    """
    from include.connectors.exact_text import exact_text_batches

    return exact_text_batches(
        _connector_batches(segment, get_connection, workdir, batch_rows), segment
    )


def _connector_batches(
    segment: SegmentConfig, get_connection: ConnectionGetter, workdir: Path, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    source = segment.source
    if source.type == "file":
        from include.connectors.file import read_file

        return read_file(segment, batch_rows)
    if source.type == "sql":
        from include.connectors.sql import read_sql

        return read_sql(segment, get_connection(source.conn_id), batch_rows)
    if source.type == "mixpanel":
        from include.connectors.mixpanel import read_mixpanel

        return read_mixpanel(segment, get_connection(source.conn_id), workdir)
    if source.type == "mixpanel_webhook":
        from include.connectors.mixpanel_webhook import read_mixpanel_webhook

        return read_mixpanel_webhook(segment, batch_rows)
    if source.type == "amplitude":
        from include.connectors.amplitude import read_amplitude

        return read_amplitude(segment, get_connection(source.conn_id), workdir)
    raise SourceError(f"segment {segment.id!r}: field 'source.type': unsupported {source.type!r}")


def require_fields(names: list[str], segment: SegmentConfig, where: str) -> list[str]:
    """Fail naming every user_key/identifier field that the source does not have."""
    missing = [name for name in segment.source_fields if name not in names]
    if missing:
        raise SourceError(
            f"segment {segment.id!r}: field(s) {missing} (from user_key/identifiers) are not in "
            f"the {where}; it has {names}"
        )
    return segment.source_fields


def select_fields(batch: pa.RecordBatch, segment: SegmentConfig) -> pa.RecordBatch:
    """Select the segment's fields, in order; a missing field is a named error.

    Columns keep their type here: `read_source` turns every non-text column into exact text
    (`exact_text`), knowing the row numbers across batches for its error messages.
    """
    import pyarrow as pa

    names = require_fields(batch.schema.names, segment, "source")
    return pa.RecordBatch.from_arrays([batch.column(name) for name in names], names=names)
