"""`mixpanel_webhook` source: the audience Mixpanel pushed to our webhook, read from the store.

The webhook (include/webhooks) stages every page in the `netmera_db` database; this reads the
current audience from that state (latest complete `members` export plus the later diffs) with
a server-side cursor. Without a complete export there is no audience to publish: SourceError.
The state is handed in (`PushedAudience`): the webhooks layer sits above the connectors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from include.connectors.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.connectors.fields import SegmentFields

USER_KEY = "mixpanel_distinct_id"


class PushedAudience(Protocol):
    """What the webhook staged for a segment (`include.webhooks.state.WebhookState`)."""

    def has_complete_export(self, segment_id: str) -> bool:
        """Whether every page of one `members` export has arrived."""

    def audience(self, segment_id: str, batch_rows: int) -> Iterator[Sequence[Any]]:
        """The current audience as (distinct_id, properties) rows, in partitions."""


def read_mixpanel_webhook(
    segment: SegmentFields, state: PushedAudience, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """`state`: where the webhook keeps what Mixpanel pushed (the source's "client")."""
    import sqlalchemy as sa

    try:
        if not state.has_complete_export(segment.id):
            raise SourceError(
                f"segment {segment.id!r}: no complete Mixpanel `members` export has been "
                f"received at /connector-segments/webhooks/mixpanel/{segment.id} yet; nothing "
                "to publish until Mixpanel has delivered every page of one"
            )
        for rows in state.audience(segment.id, batch_rows):
            yield to_batch(rows, segment.source_fields)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(
            f"segment {segment.id!r}: reading the staged webhook state failed: "
            f"{type(exc).__name__}: {exc.orig if getattr(exc, 'orig', None) else exc}"
        ) from exc


def to_batch(rows: Sequence[sa.Row], fields: list[str]) -> pa.RecordBatch:
    """(distinct_id, properties) rows → the segment's fields as strings; absent → null."""
    import pyarrow as pa

    columns: dict[str, list[str | None]] = {name: [] for name in fields}
    for distinct_id, properties in rows:
        for name, values in columns.items():
            values.append(distinct_id if name == USER_KEY else _text(properties.get(name)))
    return pa.RecordBatch.from_pydict(
        {name: pa.array(values, type=pa.string()) for name, values in columns.items()}
    )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
