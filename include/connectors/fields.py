"""The segment as a connector sees it, and picking its fields out of what a source has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.connectors.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class SegmentFields:
    """What a connector knows of its segment: the id its errors name, and the fields to select
    (`SegmentConfig.source_fields`: the user key, then identifier fields, each once)."""

    id: str
    source_fields: list[str]


def require_fields(names: list[str], segment: SegmentFields, where: str) -> list[str]:
    """Fail naming every user_key/identifier field that the source does not have."""
    missing = [name for name in segment.source_fields if name not in names]
    if missing:
        raise SourceError(
            f"segment {segment.id!r}: field(s) {missing} (from user_key/identifiers) are not in "
            f"the {where}; it has {names}"
        )
    return segment.source_fields


def select_fields(batch: pa.RecordBatch, segment: SegmentFields) -> pa.RecordBatch:
    """Select the segment's fields, in order; a missing field is a named error.

    Columns keep their type here: `read_source` turns every non-text column into exact text
    (`exact_text`), knowing the row numbers across batches for its error messages.
    """
    import pyarrow as pa

    names = require_fields(batch.schema.names, segment, "source")
    return pa.RecordBatch.from_arrays([batch.column(name) for name in names], names=names)
