"""`file` source: a CSV or Parquet file, local or any fsspec URL, streamed in record batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.connectors.csv_reader import read_csv_batches
from include.connectors.errors import SourceError
from include.connectors.fields import SegmentFields, require_fields, select_fields

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config.segments import FileSource


def resolve_location(source: FileSource, config_path: Path | None) -> str:
    """A URL is used as is; a relative local path is relative to the segment's YAML folder
    (`config_path`: the YAML file, None for a config not read from one)."""
    path = source.path
    if "://" in path or Path(path).is_absolute() or config_path is None:
        return path
    return str(config_path.parent / path)


def _format(source: FileSource, segment: SegmentFields, location: str) -> str:
    if source.format:
        return source.format
    name = location.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise SourceError(
        f"segment {segment.id!r}: field 'source.path': cannot tell CSV from Parquet by the name "
        f"{location!r}; set 'source.format'"
    )


def read_file(
    source: FileSource, config_path: Path | None, segment: SegmentFields, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    location = resolve_location(source, config_path)
    fmt = _format(source, segment, location)

    def open_bytes():
        try:
            return fsspec.open(location, "rb", compression="infer").open()
        except (OSError, ValueError) as exc:
            raise SourceError(f"segment {segment.id!r}: field 'source.path': {exc}") from exc

    if fmt == "csv":
        yield from read_csv_batches(open_bytes, segment, f"file {location}")
        return
    with open_bytes() as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            raise SourceError(
                f"segment {segment.id!r}: field 'source.path': {location} is not a Parquet file "
                f"({exc}); if it is CSV, set 'source.format: csv'"
            ) from None
        columns = require_fields(parquet.schema_arrow.names, segment, "file")
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                yield select_fields(batch, segment)
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            raise SourceError(f"segment {segment.id!r}: malformed file {location}: {exc}") from None
