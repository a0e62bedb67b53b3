"""Staged audience → normalised identifier rows, the input of both matching paths.

One row per present identifier, `(user_key, priority, kind, value, raw)`, value null when it
failed normalisation; a source user with no identifier at all gets one row with a null priority
so that it is still counted. Batches are normalised on all cores (Arrow kernels release the GIL)
and read in order, a few batches in flight: memory stays bounded whatever the audience size.

Deferred: a phone that is not the segment's first identifier keeps its trimmed text in `raw`
and no value yet. Phones are the costly kind to normalise, and a phone can only change the
result of a source user that no earlier identifier matched, so the lookup (`lookup.py`)
normalises them for those users only (all of them when there are few).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from include.matching.normalize import normalize_or_defer, normalize_trimmed

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config.segments import SegmentConfig

BATCH_ROWS = 100_000
T = TypeVar("T")
R = TypeVar("R")


def identifier_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("user_key", pa.string()),
            ("priority", pa.int16()),
            ("kind", pa.string()),
            ("value", pa.string()),
            ("raw", pa.string()),
        ]
    )


def identifier_reader(
    segment: SegmentConfig, staged: Path, *, defer: bool = True
) -> pa.RecordBatchReader:
    """The identifier rows of the staged audience (see module doc), normalised batch by batch
    as they are read, in order; `defer=False` normalises every value now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    batches = pq.ParquetFile(staged).iter_batches(batch_size=BATCH_ROWS)
    tables = in_order(partial(identifier_rows, segment, defer=defer), batches)
    rows = (b for table in tables for b in table.to_batches())
    return pa.RecordBatchReader.from_batches(identifier_schema(), rows)


def write_identifiers(identifiers: pa.RecordBatchReader, destination: Path) -> Path:
    """Identifier rows → Parquet at `destination`."""
    import pyarrow.parquet as pq

    # Read by the next step only once, at once: compressing it would cost more than it saves.
    with pq.ParquetWriter(destination, identifier_schema(), compression="none") as writer:
        for batch in identifiers:
            writer.write_batch(batch)
    release_memory()
    return destination


def release_memory() -> None:
    """Hand memory Arrow's allocator keeps after a phase back to the OS, so that the next
    phase (DuckDB's, within its own limit) does not stack on top of it."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def identifier_rows(segment: SegmentConfig, batch: pa.RecordBatch, *, defer: bool) -> pa.Table:
    """One staged batch → its identifier rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pc.utf8_trim_whitespace(batch.column(segment.user_key))
    any_present = np.zeros(batch.num_rows, bool)
    parts = []
    for priority, ident in enumerate(segment.identifiers):
        trimmed = pc.utf8_trim_whitespace(batch.column(ident.field))
        present = pc.fill_null(pc.not_equal(trimmed, ""), False)
        any_present |= present.to_numpy(zero_copy_only=False)
        kept = trimmed.filter(present)
        if defer and priority:
            value, raw = normalize_or_defer(ident.kind, kept, segment.default_region)
        else:
            value, raw = normalize_trimmed(ident.kind, kept, segment.default_region), None
        parts.append(_rows(keys.filter(present), priority, ident.kind.value, value, raw))
    parts.append(_rows(keys.filter(pa.array(~any_present)), None, None, None, None))
    return pa.concat_tables(parts)


def _rows(
    keys: pa.Array,
    priority: int | None,
    kind: str | None,
    value: pa.Array | None,
    raw: pa.Array | None,
) -> pa.Table:
    import pyarrow as pa

    n = len(keys)

    def text(values: pa.Array | str | None) -> pa.Array:
        if values is None:
            return pa.nulls(n, pa.string())
        return pa.repeat(pa.scalar(values), n) if isinstance(values, str) else values

    return pa.table(
        [
            keys,
            pa.nulls(n, pa.int16())
            if priority is None
            else pa.repeat(pa.scalar(priority, pa.int16()), n),
            text(kind),
            text(value),
            text(raw),
        ],
        schema=identifier_schema(),
    )


def in_order(work: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """`map(work, items)` on a thread per core, results in input order, a bounded number of
    items in flight (so a large input never sits in memory at once)."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
