"""`file` source: a CSV or Parquet file, local or any fsspec URL, streamed in record batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.connectors.base import SourceError, as_string_batch, require_fields

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig


def resolve_location(segment: SegmentConfig) -> str:
    """A URL is used as is; a relative local path is relative to the segment's YAML folder."""
    path = segment.source.path
    if "://" in path or Path(path).is_absolute() or segment.config_path is None:
        return path
    return str(segment.config_path.parent / path)


def _format(segment: SegmentConfig, location: str) -> str:
    if segment.source.format:
        return segment.source.format
    name = location.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise SourceError(
        f"segment {segment.id!r}: field 'source.path': cannot tell CSV from Parquet by the name "
        f"{location!r}; set 'source.format'"
    )


def read_file(segment: SegmentConfig, batch_rows: int) -> Iterator[pa.RecordBatch]:
    import fsspec
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    location = resolve_location(segment)
    fmt = _format(segment, location)
    try:
        opened = fsspec.open(location, "rb", compression="infer")
        handle = opened.open()
    except (OSError, ValueError) as exc:
        raise SourceError(f"segment {segment.id!r}: field 'source.path': {exc}") from exc
    with handle:
        if fmt == "parquet":
            parquet = pq.ParquetFile(handle)
            columns = require_fields(parquet.schema_arrow.names, segment, "file")
            reader = parquet.iter_batches(batch_size=batch_rows, columns=columns)
        else:
            # Every column as a string: ids with leading zeros and phone numbers must survive.
            convert = pacsv.ConvertOptions(
                column_types={name: pa.string() for name in segment.source_fields},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            )
            try:
                reader = pacsv.open_csv(
                    handle,
                    read_options=pacsv.ReadOptions(block_size=1 << 22),
                    convert_options=convert,
                )
            except pa.ArrowInvalid as exc:
                raise SourceError(
                    f"segment {segment.id!r}: cannot read CSV {location}: {_redact(exc)}"
                ) from None
        try:
            for batch in reader:
                yield as_string_batch(batch, segment)
        except pa.ArrowInvalid as exc:
            raise SourceError(
                f"segment {segment.id!r}: malformed file {location}: {_redact(exc)}"
            ) from None


def _redact(exc: Exception) -> str:
    """Arrow quotes the offending CSV row ("Expected 3 columns, got 2: ann@x.com,..."): keep the
    diagnosis, drop the row, so no personal data reaches task logs or the run record."""
    text = str(exc)
    if "CSV parse error" in text and text.count(": ") >= 2:
        return text.rsplit(": ", 1)[0]
    return text
