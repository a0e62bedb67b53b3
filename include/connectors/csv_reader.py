"""Streaming CSV → Arrow batches of the segment's fields, shared by the file and Amplitude
sources.

Only the needed columns are read, all as strings (ids with leading zeros, phone numbers), so a
stray value in an unrelated column can never fail a refresh. Parse errors are reported without
the offending row: Arrow quotes it, and it holds personal data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from include.connectors.base import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig

Opener = Callable[[], IO[bytes]]  # a fresh binary stream of the (decompressed) CSV each call
Resolver = Callable[[str, list[str]], "str | None"]  # segment field → CSV column, or None


def exact(field: str, header: list[str]) -> str | None:
    return field if field in header else None


def read_csv_batches(
    open_csv_bytes: Opener, segment: SegmentConfig, where: str, resolve: Resolver = exact
) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open_csv_bytes() as handle:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        header = next(csv.reader(io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")), [])
    columns = {field: resolve(field, header) for field in segment.source_fields}
    missing = [field for field, column in columns.items() if column is None]
    if missing:
        raise SourceError(
            f"segment {segment.id!r}: field(s) {missing} (from user_key/identifiers) are not in "
            f"the {where}; it has {header}"
        )
    wanted = list(dict.fromkeys(columns.values()))
    options = pacsv.ConvertOptions(
        include_columns=wanted,
        column_types={name: pa.string() for name in wanted},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    with open_csv_bytes() as handle:
        try:
            reader = pacsv.open_csv(
                handle,
                read_options=pacsv.ReadOptions(block_size=1 << 22),  # skips a BOM itself
                convert_options=options,
            )
            for batch in reader:
                yield pa.RecordBatch.from_arrays(
                    [batch.column(columns[f]) for f in segment.source_fields],
                    names=segment.source_fields,
                )
        except pa.ArrowInvalid as exc:
            raise SourceError(
                f"segment {segment.id!r}: malformed CSV in the {where}: {_redact(exc)}"
            ) from None


def _redact(exc: Exception) -> str:
    """Keep Arrow's diagnosis ("Expected 3 columns, got 2"), drop the quoted row after it."""
    text = str(exc)
    if "CSV parse error" in text and text.count(": ") >= 2:
        return text.rsplit(": ", 1)[0]
    return text
