"""`amplitude` source: request a cohort export, poll until it is ready, download, stream the CSV.

Flow (reference/external-apis.md): GET /api/5/cohorts/request/{cohort_id}?props=1&propKeys=...
→ `request_id`; poll GET /api/5/cohorts/request-status/{request_id} until "JOB COMPLETED";
GET /api/5/cohorts/request/{request_id}/file answers with the file, or with a 302 to a
short-lived pre-signed URL on another host. That link gets no credentials; when it has expired,
the API is asked for a fresh one. The file is a CSV with a header row, gzip or plain (told by
its first bytes), with `amplitude_id`, `user_id` and the requested properties (as `email` or
`gp:email`: the layout is not pinned down by the vendor, so both are accepted).

The request id and the finished download are checkpointed in the run folder: a retried task
polls the same export, or reuses the downloaded file, instead of starting over.

Connection (`amplitude_default` or the segment's `conn_id`): host = base URL (EU residency and
test servers), login/password = API key / secret key, extras `poll_interval` (5 s), `max_wait`
(3600 s), `link_attempts` (5), `requests_per_hour` (360), `timeout`, `max_attempts`,
`backoff_base`.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.connectors.base import ConnectionInfo, SourceError
from include.connectors.checkpoint import Checkpoint
from include.connectors.csv_reader import read_csv_batches
from include.connectors.http import ClientSettings, HTTPStatusError, VendorClient

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig

log = logging.getLogger(__name__)

DEFAULT_URL = "https://amplitude.com"
BUILTIN_COLUMNS = {"amplitude_id", "user_id"}
_GZIP_MAGIC = b"\x1f\x8b"


def amplitude_client(conn: ConnectionInfo) -> VendorClient:
    # ~60 requests per 10 minutes; polls count too.
    settings = ClientSettings.from_extra(conn.extra, requests_per_hour=360)
    return VendorClient("amplitude", conn, DEFAULT_URL, settings)


def read_amplitude(
    segment: SegmentConfig, conn: ConnectionInfo, workdir: Path
) -> Iterator[pa.RecordBatch]:
    client = amplitude_client(conn)
    checkpoint = Checkpoint(workdir / "amplitude")
    cohort_file = checkpoint.folder / "cohort.download"
    state = checkpoint.load()
    if not state.get("downloaded"):
        request_id = state.get("request_id")
        if request_id and not _still_known(segment, client, request_id, conn.extra):
            request_id = None  # the earlier try's export is gone: request a new one
        request_id = request_id or _request(segment, client, checkpoint)
        _wait_until_ready(segment, client, request_id, conn.extra)
        _download(segment, client, request_id, cohort_file, conn.extra)
        checkpoint.save(request_id=request_id, downloaded=True)
    return _forget_on_error(_read_csv(segment, cohort_file), checkpoint)


def _forget_on_error(batches: Iterator[pa.RecordBatch], checkpoint: Checkpoint):
    """A download that will not parse is not reused by the task's retry: it downloads anew."""
    try:
        yield from batches
    except SourceError:
        checkpoint.reset()
        raise


def _still_known(segment, client: VendorClient, request_id: str, extra: dict) -> bool:
    try:
        client.call("GET", f"/api/5/cohorts/request-status/{request_id}")
    except HTTPStatusError as exc:
        if exc.status == 404:
            log.info("segment %s: earlier Amplitude export expired; requesting again", segment.id)
            return False
        raise
    return True


def _request(segment: SegmentConfig, client: VendorClient, checkpoint: Checkpoint) -> str:
    prop_keys = [f for f in segment.source_fields if f not in BUILTIN_COLUMNS]
    params = {"props": 1 if prop_keys else 0, "propKeys": prop_keys}
    try:
        answer = client.call(
            "GET", f"/api/5/cohorts/request/{segment.source.cohort_id}", params=params
        ).data
    except HTTPStatusError as exc:
        raise SourceError(
            f"segment {segment.id!r}: Amplitude cohort {segment.source.cohort_id!r}: {exc}"
        ) from None
    request_id = str(answer["request_id"])
    checkpoint.save(request_id=request_id, downloaded=False)
    log.info(
        "segment %s: Amplitude export of cohort %s requested", segment.id, segment.source.cohort_id
    )
    return request_id


def _wait_until_ready(segment, client: VendorClient, request_id: str, extra: dict) -> None:
    interval = float(extra.get("poll_interval", 5))
    deadline = time.monotonic() + float(extra.get("max_wait", 3600))
    polls = 0
    while True:
        answer = client.call("GET", f"/api/5/cohorts/request-status/{request_id}")
        status = str(answer.data.get("async_status", "")).upper()
        polls += 1
        if answer.status == 200 and "COMPLETED" in status:
            log.info("segment %s: Amplitude export ready after %d polls", segment.id, polls)
            return
        if "FAIL" in status or "ERROR" in status:
            raise SourceError(f"segment {segment.id!r}: Amplitude export failed: {status}")
        if time.monotonic() > deadline:
            raise SourceError(
                f"segment {segment.id!r}: Amplitude export not ready after {polls} polls "
                f"({extra.get('max_wait', 3600)} s); last status {status or answer.status}"
            )
        time.sleep(interval)


def _download(segment, client: VendorClient, request_id: str, dest: Path, extra: dict) -> None:
    """Body or redirect; an expired pre-signed link is replaced by a fresh one."""
    attempts = int(extra.get("link_attempts", 5))
    for attempt in range(1, attempts + 1):
        location = client.download(f"/api/5/cohorts/request/{request_id}/file", dest)
        if location is None:
            return
        try:
            if client.download(location, dest, auth=False) is None:
                return
            raise SourceError(
                f"segment {segment.id!r}: the Amplitude download link redirected "
                "again; refusing to follow"
            )
        except HTTPStatusError as exc:
            if exc.status not in (400, 401, 403, 404, 410):
                raise
            log.warning(
                "segment %s: Amplitude download link refused (HTTP %d, %s); asking for "
                "a fresh one (%d/%d)",
                segment.id,
                exc.status,
                "expired" if "expired" in exc.body.lower() else "denied",
                attempt,
                attempts,
            )
    raise SourceError(
        f"segment {segment.id!r}: no Amplitude download link worked after {attempts} tries"
    )


def _read_csv(segment: SegmentConfig, path: Path) -> Iterator[pa.RecordBatch]:
    with path.open("rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC

    def open_bytes():
        return gzip.open(path, "rb") if gzipped else path.open("rb")

    return read_csv_batches(open_bytes, segment, "Amplitude cohort file", _amplitude_column)


def _amplitude_column(field: str, header: list[str]) -> str | None:
    """The vendor does not pin down property columns: `email`, `gp:email` or `x.email`."""
    candidates = [field, f"gp:{field}"] + [n for n in header if n.endswith(f".{field}")]
    return next((c for c in candidates if c in header), None)
