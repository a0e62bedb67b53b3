"""`mixpanel` source: a cohort's members through the Engage query API, paced and resumable.

Pagination (reference/external-apis.md): POST /api/query/engage with `filter_by_cohort`,
`output_properties` and `page`; page 0 opens a `session_id` that later pages must send; the last
page is the first with fewer than `page_size` results. `total` is shown as an estimate only.

Every page is checkpointed in the run folder before the next is asked for, so a retried task
resumes at the next page while its session is valid, and restarts from page 0 when Mixpanel no
longer knows the session. Only a cohort read to its last page is returned: a partial audience
never reaches matching.

Connection (`mixpanel_default` or the segment's `conn_id`): host = base URL (residency hosts and
test servers), login/password = service account, extras `project_id` (required),
`workspace_id`, `queries_per_hour` (60), `timeout`, `max_attempts`, `backoff_base`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.connectors.base import ConnectionInfo, SourceError
from include.connectors.checkpoint import Checkpoint
from include.connectors.http import ClientSettings, HTTPStatusError, VendorClient

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config import SegmentConfig

log = logging.getLogger(__name__)

DEFAULT_URL = "https://mixpanel.com"
DISTINCT_ID = "$distinct_id"
MAX_SESSION_RESTARTS = 3


class SessionExpired(Exception):
    pass


def mixpanel_client(conn: ConnectionInfo) -> tuple[VendorClient, dict[str, Any]]:
    """The client and the query parameters every call carries."""
    if "project_id" not in conn.extra:
        raise SourceError(
            f"connection {conn.conn_id!r}: extra 'project_id' is required for Mixpanel"
        )
    params = {"project_id": conn.extra["project_id"]}
    if conn.extra.get("workspace_id"):
        params["workspace_id"] = conn.extra["workspace_id"]
    per_hour = float(conn.extra.get("queries_per_hour", 60))
    settings = ClientSettings.from_extra(conn.extra, requests_per_hour=per_hour)
    return VendorClient("mixpanel", conn, DEFAULT_URL, settings), params


def list_cohorts(conn: ConnectionInfo) -> list[dict[str, Any]]:
    client, params = mixpanel_client(conn)
    return client.call("POST", "/api/query/cohorts/list", params=params).data


def read_mixpanel(
    segment: SegmentConfig, conn: ConnectionInfo, workdir: Path
) -> Iterator[pa.RecordBatch]:
    client, params = mixpanel_client(conn)
    checkpoint = Checkpoint(workdir / "mixpanel")
    _fetch_all(segment, client, params, checkpoint)
    return checkpoint.pages()


def _fetch_all(
    segment: SegmentConfig, client: VendorClient, params: dict, checkpoint: Checkpoint
) -> None:
    for _ in range(MAX_SESSION_RESTARTS + 1):
        state = checkpoint.load()
        if state.get("done"):
            log.info(
                "segment %s: Mixpanel cohort already read in an earlier try (%d users)",
                segment.id,
                state["users"],
            )
            return
        try:
            _fetch_from(segment, client, params, checkpoint, state)
            return
        except SessionExpired:
            log.warning(
                "segment %s: Mixpanel session expired at page %s; restarting from page 0",
                segment.id,
                state.get("next_page", "?"),
            )
            checkpoint.reset()
    raise SourceError(
        f"segment {segment.id!r}: Mixpanel session expired {MAX_SESSION_RESTARTS + 1} times; "
        "the cohort could not be read completely"
    )


def _fetch_from(segment, client, params, checkpoint, state) -> None:
    cohort = segment.source.cohort_id
    properties = [f for f in segment.source_fields if f != DISTINCT_ID]
    page = state.get("next_page", 0)
    session_id = state.get("session_id")
    users = state.get("users", 0)
    if page:
        log.info(
            "segment %s: resuming Mixpanel cohort %s at page %d (%d users staged)",
            segment.id,
            cohort,
            page,
            users,
        )
    started, first_page, users_before = time.monotonic(), page, users
    while True:
        form = {
            "filter_by_cohort": json.dumps({"id": cohort}),
            "output_properties": json.dumps(properties),
            "page": page,
        }
        if session_id:
            form["session_id"] = session_id
        answer = _engage(client, params, form, segment)
        results, page_size = answer["results"], int(answer["page_size"])
        session_id = answer.get("session_id") or session_id
        checkpoint.write_page(page, _batch(results, segment))
        users += len(results)
        last = len(results) < page_size
        checkpoint.save(session_id=session_id, next_page=page + 1, users=users, done=last)
        _progress(
            segment,
            page,
            users,
            answer.get("total"),
            started,
            page - first_page + 1,
            users - users_before,
        )
        if last:
            return
        page += 1


def _engage(client: VendorClient, params: dict, form: dict, segment: SegmentConfig) -> dict:
    try:
        answer = client.call("POST", "/api/query/engage", params=params, data=form).data
    except HTTPStatusError as exc:
        if "session_id" in form and "session" in exc.body.lower():
            raise SessionExpired from None
        raise SourceError(
            f"segment {segment.id!r}: Mixpanel cohort {segment.source.cohort_id}: {exc}"
        ) from None
    if (
        not isinstance(answer, dict)
        or answer.get("status") != "ok"
        or not isinstance(answer.get("results"), list)
        or "page_size" not in answer
    ):
        raise SourceError(
            f"segment {segment.id!r}: unexpected Mixpanel engage answer "
            f"(keys {sorted(answer) if isinstance(answer, dict) else type(answer).__name__})"
        )
    return answer


def _batch(results: list[dict], segment: SegmentConfig) -> pa.RecordBatch:
    import pyarrow as pa

    from include.connectors.exact_text import exact_text_values

    def value(raw: Any) -> Any:
        # A list or object property is kept as its JSON (an identifier it never is); numbers
        # become exact text below (a JSON 905321234567.0 is a phone, not "905321234567.0").
        return json.dumps(raw) if isinstance(raw, list | dict) else raw

    where = f"Mixpanel cohort {segment.source.cohort_id}"
    columns = {}
    for name in segment.source_fields:
        if name == DISTINCT_ID:
            values = [value(r.get(DISTINCT_ID)) for r in results]
        else:
            values = [value((r.get("$properties") or {}).get(name)) for r in results]
        columns[name] = pa.array(exact_text_values(values, name, segment, where), pa.string())
    return pa.RecordBatch.from_pydict(columns)


def _progress(
    segment, page: int, users: int, total: Any, started: float, pages: int, fetched: int
) -> None:
    """Pages, users so far, rate and an estimate of the time left (from this try's pace)."""
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = fetched / elapsed
    eta = ""
    if isinstance(total, int) and total > users and rate > 0:
        eta = f", ~{(total - users) / rate / 60:.1f} min left (Mixpanel reports {total:,})"
    log.info(
        "segment %s: Mixpanel page %d: %d users so far, %.1f pages/min%s",
        segment.id,
        page,
        users,
        pages / elapsed * 60,
        eta,
    )
