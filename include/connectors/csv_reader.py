"""Streaming CSV → Arrow batches of the segment's fields, shared by the file and Amplitude
sources.

Only the needed columns are read, all as strings (ids with leading zeros, phone numbers), so a
stray value in an unrelated column can never fail a refresh. Parse errors are reported without
the offending row: Arrow quotes it, and it holds personal data.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING

from include.connectors.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from include.connectors.fields import SegmentFields

Opener = Callable[[], IO[bytes]]  # a fresh binary stream of the (decompressed) CSV each call
MAX_HEADER_BYTES = 1 << 20
Resolver = Callable[[str, list[str]], "str | None"]  # segment field → CSV column, or None


def exact(field: str, header: list[str]) -> str | None:
    return field if field in header else None


def read_csv_batches(
    open_csv_bytes: Opener, segment: SegmentFields, where: str, resolve: Resolver = exact
) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _read_header(open_csv_bytes, segment, where)
    columns = {field: resolve(field, header) for field in segment.source_fields}
    missing = [field for field, column in columns.items() if column is None]
    if missing:
        # The header is not quoted: in a file without a header row it is a person's data.
        raise SourceError(
            f"segment {segment.id!r}: field(s) {missing} (from user_key/identifiers) are not "
            f"in the header row of the {where} ({len(header)} columns; names match exactly)"
            f"{_near_misses(missing, header)}; does the file start with a header row?"
        )
    wanted = list(dict.fromkeys(columns.values()))
    options = pacsv.ConvertOptions(
        include_columns=wanted,
        column_types={name: pa.string() for name in wanted},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    with open_csv_bytes() as handle, _read_errors(segment, where):
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


def _read_header(open_csv_bytes: Opener, segment: SegmentFields, where: str) -> list[str]:
    field = f"segment {segment.id!r}: field 'source'"
    with open_csv_bytes() as handle, _read_errors(segment, where):
        head = handle.read(MAX_HEADER_BYTES + 1)  # bounded: `/dev/zero` has no first line
    if len(head) > MAX_HEADER_BYTES and b"\n" not in head:
        raise SourceError(
            f"{field}: the first line of the {where} is longer than "
            f"{MAX_HEADER_BYTES // 1024} KiB: not a CSV header row"
        )
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    text = io.TextIOWrapper(io.BytesIO(head), encoding="utf-8-sig", newline="")
    try:
        return next(csv.reader(text), [])
    except UnicodeDecodeError:
        raise SourceError(
            f"{field}: the header row of the {where} is not UTF-8 text; save it as UTF-8"
        ) from None
    except csv.Error as exc:  # e.g. a NUL byte: not a text file
        raise SourceError(f"{field}: the {where} is not a CSV file: {exc}") from None


@contextmanager
def _read_errors(segment: SegmentFields, where: str) -> Iterator[None]:
    """A truncated or corrupt download (gzip, network) is named, never a bare EOFError."""
    try:
        yield
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(
            f"segment {segment.id!r}: field 'source': cannot read the {where} to its end "
            f"(truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None


def _near_misses(missing: list[str], header: list[str]) -> str:
    """Columns equal to a missing field but for case or a leading `$`: a field name, not data."""
    canonical = {column.strip().lower().lstrip("$"): column for column in header}
    hints = [
        f"{field!r} -> {canonical[key]!r}"
        for field in missing
        if (key := field.lower().lstrip("$")) in canonical
    ]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _redact(exc: Exception) -> str:
    """Keep Arrow's diagnosis ("Expected 3 columns, got 2"), drop the quoted row after it."""
    text = str(exc)
    if "CSV parse error" in text and text.count(": ") >= 2:
        return text.rsplit(": ", 1)[0]
    return text
