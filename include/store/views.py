"""The Connector Segments objects read from the store, as `list --json` and `details --json`
print them and the UI's JSON API answers them: one builder for both, so they cannot drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.config.segments import SegmentConfigError, find_segment, load_segments
from include.store.repository import RUN_RESULTS
from include.store.staleness import grace as stale_grace
from include.store.staleness import is_stale

if TYPE_CHECKING:
    from include.config.segments import SegmentConfig
    from include.store.repository import SegmentStore

# A run as `details` shows it: who/when, then everything the run records (see the store).
RUN_FIELDS = ["airflow_run_id", "status", "dry_run", "approve", "started_at", *RUN_RESULTS]


def iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _listed(
    store: SegmentStore,
) -> list[tuple[dict[str, Any], dict[str, Any] | None, SegmentConfig | None]]:
    """Every configured segment (never-run ones too) and every segment the store knows, by
    name: its `list` row, its store row and its config (either may be missing)."""
    stored = {row["id"]: row for row in store.list_segments()}
    configured = {c.id: c for c in load_segments().segments}
    now, grace = datetime.now(UTC), stale_grace()
    listed = []
    for segment_id in sorted(stored.keys() | configured.keys()):
        row, config = stored.get(segment_id), configured.get(segment_id)
        entry = {
            "id": segment_id,
            "name": config.name if config else row["name"],
            "connector_users": row["connector_users"] if row else 0,
            "netmera_users": row["netmera_users"] if row else 0,
            "message_sent": row["message_sent"] if row else 0,
            "description": config.description if config else row["description"],
            "last_update_date": iso(row["last_update_date"]) if row else None,
            "status": row["status"] if row else None,
            "stale": is_stale(
                config.schedule if config else None,
                row["last_update_date"] if row else None,
                now,
                grace,
            ),
        }
        listed.append((entry, row, config))
    return sorted(listed, key=lambda item: item[0]["name"].lower())


def list_rows(store: SegmentStore) -> list[dict[str, Any]]:
    """The Connector Segments table, as `list --json`."""
    return [entry for entry, _, _ in _listed(store)]


def listed_segments(
    store: SegmentStore, paused_dags: Callable[[list[str]], Mapping[str, bool]]
) -> list[dict[str, Any]]:
    """`list_rows`, each also with what the page filters and shows: the source type and
    schedule of its YAML (the store's source type if the YAML is gone), reachable users and
    whether its DAG is paused, by `paused_dags` (None: no DAG, or not parsed yet)."""
    listed = _listed(store)
    paused = paused_dags([config.dag_id for _, _, config in listed if config])
    return [
        {
            **entry,
            "source_type": config.source.type if config else row["source_type"],
            "schedule": config.schedule if config else None,
            "reachable": row["reachable"] if row else None,
            "paused": paused.get(config.dag_id) if config else None,
        }
        for entry, row, config in listed
    ]


def search(
    rows: list[dict[str, Any]],
    q: str | None = None,
    status: str | None = None,
    source_type: str | None = None,
) -> list[dict[str, Any]]:
    """The rows whose name or id contains `q` (any case) and whose status and source type
    are the ones given (status in any case); None matches all."""
    needle = q.casefold() if q else None
    return [
        r
        for r in rows
        if (needle is None or needle in r["name"].casefold() or needle in r["id"].casefold())
        and (status is None or (r["status"] or "").casefold() == status.casefold())
        and (source_type is None or r["source_type"] == source_type)
    ]


def is_known(store: SegmentStore, segment_id: str) -> bool:
    """Whether the store or a valid YAML knows the segment."""
    if store.segment(segment_id) is not None:
        return True
    try:
        find_segment(segment_id)
    except SegmentConfigError:
        return False
    return True


def details(store: SegmentStore, segment_id: str, limit: int) -> dict[str, Any] | None:
    """The segment and its last `limit` runs, as `details --json`; None if it never ran."""
    row = store.segment(segment_id)
    if row is None:
        return None
    runs = [
        {k: (iso(r[k]) if k.endswith("_at") else r[k]) for k in RUN_FIELDS}
        for r in store.runs(segment_id, limit)
    ]
    version = row["current_version"]
    current = (
        store.last_run_with_status(segment_id, "published", version=version) if version else None
    )
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "source_type": row["source_type"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "current_version": row["current_version"],
        "connector_users": row["connector_users"],
        "netmera_users": row["netmera_users"],
        "reachable": row["reachable"],
        "message_sent": row["message_sent"],
        "last_update_date": iso(row["last_update_date"]),
        # Why Connector Users and Netmera Users differ, for the published version.
        "matched_source_users": current["matched_source_users"] if current else None,
        "refused_rows": current["refused_rows"] if current else None,
        "reasons": current["reasons"] if current else {},
        "matched_by": current["matched_by"] if current else {},
        "runs": runs,
    }


def never_ran(segment_id: str) -> str:
    """Why `details` has nothing for the segment (the CLI and the API say the same)."""
    return f"segment {segment_id!r} has never run (or does not exist)"
