"""`amplitude` source: a cohort export from `AmplitudeClient` (request, wait, download), read as
CSV.

The file is a CSV with a header row, gzip or plain (told by its first bytes), with
`amplitude_id`, `user_id` and the requested properties (as `email` or `gp:email`: the layout is
not pinned down by the vendor, so both are accepted).

The request id and the finished download are checkpointed in the run folder: a retried task
polls the same export, or reuses the downloaded file, instead of starting over.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.clients.amplitude import ExportError
from include.clients.http import HTTPStatusError
from include.connectors.csv_reader import read_csv_batches
from include.connectors.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from include.clients.amplitude import AmplitudeClient
    from include.config.segments import AmplitudeSource
    from include.connectors.checkpoint import Checkpoint
    from include.connectors.fields import SegmentFields

log = logging.getLogger(__name__)

BUILTIN_COLUMNS = {"amplitude_id", "user_id"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_amplitude(
    source: AmplitudeSource,
    segment: SegmentFields,
    client: AmplitudeClient,
    checkpoint: Checkpoint,
) -> Iterator[pa.RecordBatch]:
    cohort_file = checkpoint.folder / "cohort.download"
    if not (checkpoint.load().get("downloaded") and cohort_file.exists()):
        try:
            _download(source, segment, client, checkpoint, cohort_file)
        except ExportError as exc:
            raise SourceError(f"segment {segment.id!r}: {exc}") from None
    return _forget_on_error(_read_csv(segment, cohort_file), checkpoint)


def _download(
    source: AmplitudeSource,
    segment: SegmentFields,
    client: AmplitudeClient,
    checkpoint: Checkpoint,
    cohort_file: Path,
) -> None:
    """Request (or pick up the earlier try's request), wait until ready, download."""
    request_id = checkpoint.load().get("request_id")
    if request_id and not client.export_known(request_id):
        log.info("segment %s: earlier Amplitude export expired; requesting again", segment.id)
        request_id = None
    if not request_id:
        request_id = _request(source, segment, client)
        checkpoint.save(request_id=request_id, downloaded=False)
    polls = client.wait_until_ready(request_id)
    log.info("segment %s: Amplitude export ready after %d polls", segment.id, polls)
    client.download(request_id, cohort_file)
    checkpoint.add(cohort_file)
    checkpoint.save(request_id=request_id, downloaded=True)


def _request(source: AmplitudeSource, segment: SegmentFields, client: AmplitudeClient) -> str:
    prop_keys = [f for f in segment.source_fields if f not in BUILTIN_COLUMNS]
    try:
        request_id = client.request_export(source.cohort_id, prop_keys)
    except HTTPStatusError as exc:
        raise SourceError(
            f"segment {segment.id!r}: Amplitude cohort {source.cohort_id!r}: {exc}"
        ) from None
    log.info("segment %s: Amplitude export of cohort %s requested", segment.id, source.cohort_id)
    return request_id


def _forget_on_error(batches: Iterator[pa.RecordBatch], checkpoint: Checkpoint):
    """A download that will not parse is not reused by the task's retry: it downloads anew."""
    try:
        yield from batches
    except SourceError:
        checkpoint.reset()
        raise


def _read_csv(segment: SegmentFields, path: Path) -> Iterator[pa.RecordBatch]:
    with path.open("rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC

    def open_bytes():
        return gzip.open(path, "rb") if gzipped else path.open("rb")

    return read_csv_batches(open_bytes, segment, "Amplitude cohort file", _amplitude_column)


def _amplitude_column(field: str, header: list[str]) -> str | None:
    """The vendor does not pin down property columns: `email`, `gp:email` or `x.email`."""
    candidates = [field, f"gp:{field}"] + [n for n in header if n.endswith(f".{field}")]
    return next((c for c in candidates if c in header), None)
