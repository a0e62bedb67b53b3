"""`mixpanel` source: a cohort's members from `MixpanelClient.engage_pages`, resumable.

Every page is checkpointed in the run folder before the next is asked for, so a retried task
resumes at the next page while its session is valid, and restarts from page 0 when Mixpanel no
longer knows the session. Only a cohort read to its last page is returned: a partial audience
never reaches matching.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from include.clients.http import HTTPStatusError, UnexpectedAnswer
from include.clients.mixpanel import EngageCursor, SessionExpired
from include.connectors.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from include.clients.mixpanel import MixpanelClient
    from include.config.segments import MixpanelSource
    from include.connectors.checkpoint import Checkpoint
    from include.connectors.fields import SegmentFields

log = logging.getLogger(__name__)

DISTINCT_ID = "$distinct_id"
MAX_SESSION_RESTARTS = 3


def read_mixpanel(
    source: MixpanelSource,
    segment: SegmentFields,
    client: MixpanelClient,
    checkpoint: Checkpoint,
) -> Iterator[pa.RecordBatch]:
    _forget_incomplete(segment, checkpoint)
    for _ in range(MAX_SESSION_RESTARTS + 1):
        state = checkpoint.load()
        if state.get("done"):
            log.info(
                "segment %s: Mixpanel cohort already read in an earlier try (%d users)",
                segment.id,
                state["users"],
            )
            return checkpoint.pages()
        try:
            _read_from(source, segment, client, checkpoint, state)
            return checkpoint.pages()
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


def _forget_incomplete(segment: SegmentFields, checkpoint: Checkpoint) -> None:
    """A checkpoint whose pages are not all there (a kept copy expired or was removed) would
    resume into a partial audience: the cohort is read again from page 0."""
    read = checkpoint.load().get("next_page", 0)
    missing = set(range(read)) - checkpoint.page_numbers()
    if missing:
        log.warning(
            "segment %s: %d of the %d Mixpanel pages read in an earlier try are missing; "
            "reading the cohort again from page 0",
            segment.id,
            len(missing),
            read,
        )
        checkpoint.reset()


def _read_from(
    source: MixpanelSource,
    segment: SegmentFields,
    client: MixpanelClient,
    checkpoint: Checkpoint,
    state: dict[str, Any],
) -> None:
    """Pages from where `state` stands to the last, each staged and checkpointed as it comes."""
    cohort = source.cohort_id
    properties = [f for f in segment.source_fields if f != DISTINCT_ID]
    start = EngageCursor(state.get("next_page", 0), state.get("session_id"))
    users = state.get("users", 0)
    if start.page:
        log.info(
            "segment %s: resuming Mixpanel cohort %s at page %d (%d users staged)",
            segment.id,
            cohort,
            start.page,
            users,
        )
    started, users_before = time.monotonic(), users
    try:
        for pages, page in enumerate(client.engage_pages(cohort, properties, start), 1):
            checkpoint.write_page(page.number, _batch(page.results, cohort, segment))
            users += len(page.results)
            checkpoint.save(
                session_id=page.next.session_id,
                next_page=page.next.page,
                users=users,
                done=page.last,
            )
            _progress(segment, page.number, users, page.total, started, pages, users - users_before)
    except HTTPStatusError as exc:
        raise SourceError(f"segment {segment.id!r}: Mixpanel cohort {cohort}: {exc}") from None
    except UnexpectedAnswer as exc:
        raise SourceError(f"segment {segment.id!r}: {exc}") from None


def _batch(results: list[dict], cohort: int, segment: SegmentFields) -> pa.RecordBatch:
    import pyarrow as pa

    from include.connectors.exact_text import exact_text_values

    def value(raw: Any) -> Any:
        # A list or object property is kept as its JSON (an identifier it never is); numbers
        # become exact text below (a JSON 905321234567.0 is a phone, not "905321234567.0").
        return json.dumps(raw) if isinstance(raw, list | dict) else raw

    where = f"Mixpanel cohort {cohort}"
    columns = {}
    for name in segment.source_fields:
        if name == DISTINCT_ID:
            values = [value(r.get(DISTINCT_ID)) for r in results]
        else:
            values = [value((r.get("$properties") or {}).get(name)) for r in results]
        columns[name] = pa.array(exact_text_values(values, name, segment, where), pa.string())
    return pa.RecordBatch.from_pydict(columns)


def _progress(
    segment: SegmentFields,
    page: int,
    users: int,
    total: Any,
    started: float,
    pages: int,
    fetched: int,
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
