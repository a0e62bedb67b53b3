"""Source values as exact text: identifiers must reach matching exactly as the source meant
them, whatever type a Parquet file or a database column gives them.

Strings stay as they are; integers become their decimal digits; floats and decimals that hold
a whole number, exactly (for floats: at most 2**11 / 2**24 / 2**53 in magnitude for float16 /
float32 / float64), become that integer's digits (905321234567.0 -> "905321234567"); NaN is
missing (pandas writes missing values of a float column as NaN). Anything else fails the read,
naming the segment, the field, the source and the first row, never the value (personal data).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from include.connectors.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from include.connectors.fields import SegmentFields


def exact_text_batches(
    batches: Iterator[pa.RecordBatch], segment: SegmentFields, where: str
) -> Iterator[pa.RecordBatch]:
    """Every batch with its non-text columns as exact text; `where` names the source."""
    import pyarrow as pa

    rows = 0
    for batch in batches:
        if any(t != pa.string() for t in batch.schema.types):
            batch = pa.RecordBatch.from_arrays(
                [
                    exact_text(batch.column(i), name, segment, where, first_row=rows)
                    for i, name in enumerate(batch.schema.names)
                ],
                names=batch.schema.names,
            )
        rows += batch.num_rows
        yield batch


NOT_WHOLE = "holds non-integer numbers"
NOT_FINITE = "holds infinite numbers"
RULE = "identifiers must be text or whole numbers"
_FLOAT_EXACT = {16: 2**11, 32: 2**24, 64: 2**53}


def _not_exact(segment: SegmentFields, name: str, where: str, problem: str, row: int | None):
    at = f" (e.g. row {row})" if row is not None else ""
    return SourceError(f"segment {segment.id!r}: field {name!r} of {where} {problem}{at}; {RULE}")


def _too_large(bits: int | None) -> str:
    if bits is None:
        return "holds whole numbers too long to convert"
    limit = _FLOAT_EXACT[bits].bit_length() - 1
    return f"holds whole numbers beyond 2**{limit}, more than a {bits}-bit float holds exactly"


def exact_text(
    column: pa.Array, name: str, segment: SegmentFields, where: str, first_row: int = 0
) -> pa.Array:
    """One Arrow column as exact text (see above), vectorised. `first_row`: how many source
    rows came before this column's first, for the row number in an error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        return exact_text(column.dictionary_decode(), name, segment, where, first_row)

    def first(mask: pa.Array) -> int | None:
        index = pc.index(pc.fill_null(mask, False), True).as_py()
        return None if index < 0 else first_row + index + 1

    def refuse(problem: str, mask: pa.Array | None = None) -> SourceError:
        return _not_exact(segment, name, where, problem, None if mask is None else first(mask))

    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.cast(pa.string())
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.string())
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_floating(kind):
        bits = kind.bit_width
        if bits == 16:  # no kernels for halffloat; widening is exact
            column = column.cast(pa.float32())
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)
        infinite = pc.invert(pc.is_finite(column))
        if pc.any(infinite).as_py():
            raise refuse(NOT_FINITE, infinite)
        fraction = pc.not_equal(pc.floor(column), column)
        if pc.any(fraction).as_py():
            raise refuse(NOT_WHOLE, fraction)
        large = pc.greater(pc.abs(column), _FLOAT_EXACT[bits])
        if pc.any(large).as_py():
            raise refuse(_too_large(bits), large)
        return pc.cast(pc.cast(column, pa.int64()), pa.string())
    if pa.types.is_decimal(kind):
        return _decimal_text(column, refuse)
    if (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    ):
        try:
            return column.cast(pa.string())
        except pa.ArrowInvalid:
            bad = [v is not None and not _is_utf8(v) for v in column.to_pylist()]
            raise refuse("holds bytes that are not UTF-8 text", pa.array(bad)) from None
    raise refuse(f"is of type {kind} ({_kind_name(kind)})")


def _decimal_text(column: pa.Array, refuse) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    precision, scale = column.type.precision, column.type.scale
    wide = pa.decimal128 if precision - min(scale, 0) <= 38 else pa.decimal256
    if scale > 0:
        column = column.cast(wide(precision, scale))  # decimal32/64 have no floor kernel
        fraction = pc.not_equal(pc.floor(column), column)
        if pc.any(fraction).as_py():
            raise refuse(NOT_WHOLE, fraction)
    digits = precision - min(scale, 0)  # a negative scale adds zeros
    if digits > 76:
        raise refuse(_too_large(None), pc.is_valid(column))
    # Whole numbers only now, so dropping the scale loses nothing (the cast would say if it did).
    return column.cast(wide(max(digits, 1), 0)).cast(pa.string())


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _kind_name(kind) -> str:
    import pyarrow as pa

    checks = (
        (pa.types.is_boolean, "true/false"),
        (pa.types.is_temporal, "date/time"),
        (pa.types.is_nested, "a list or structure"),
    )
    return next((label for check, label in checks if check(kind)), "not text or a number")


def exact_text_values(
    values: Sequence[Any], name: str, segment: SegmentFields, where: str, first_row: int = 0
) -> list[str | None]:
    """The same rules for Python values (a SQL result: SQLite may mix types in one column).
    UUIDs (PostgreSQL `uuid`) become their canonical text."""
    out: list[str | None] = []
    append = out.append
    for index, value in enumerate(values):
        if value is None or type(value) is str:
            append(value)
            continue
        text, problem = _python_text(value)
        if problem:
            raise _not_exact(segment, name, where, problem, first_row + index + 1)
        append(text)
    return out


def _python_text(value: Any) -> tuple[str | None, str | None]:
    """(text, None) or (None, None) for missing, or (None, why it is refused)."""
    import decimal
    import math
    import uuid

    if isinstance(value, str):
        return value, None
    if isinstance(value, bool):
        return None, "holds true/false values"
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, float):
        if math.isnan(value):
            return None, None
        if math.isinf(value):
            return None, NOT_FINITE
        if not value.is_integer():
            return None, NOT_WHOLE
        if abs(value) > _FLOAT_EXACT[64]:
            return None, _too_large(64)
        return str(int(value)), None
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return None, None
        if value.is_infinite():
            return None, NOT_FINITE
        if value != value.to_integral_value():
            return None, NOT_WHOLE
        if value.adjusted() >= 76:  # more digits than any identifier (and than decimal256)
            return None, _too_large(None)
        return str(int(value)), None
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "holds bytes that are not UTF-8 text"
    if isinstance(value, uuid.UUID):
        return str(value), None
    # Dates and times, lists and JSON (dict), anything else: named by its type, never shown.
    return None, f"holds {type(value).__name__} values"
