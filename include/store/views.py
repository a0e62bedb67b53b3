"""The Connector Segments objects read from the store, as `list --json` and `details --json`
print them and the UI's JSON API answers them: one builder for both, so they cannot drift."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.config.catalog import SegmentSummary
from include.config.segments import SegmentConfigError, find_segment, load_segments
from include.store.repository import CALCULATING, FAILED, HELD, READY, RUN_RESULTS
from include.store.run_history import run_history
from include.store.staleness import Staleness, in_words
from include.store.staleness import grace as stale_grace

if TYPE_CHECKING:
    from include.store.repository import SegmentStore

# A run as `details` shows it: who/when, then everything the run records (see the store).
RUN_FIELDS = ["airflow_run_id", "status", "dry_run", "approve", "started_at", *RUN_RESULTS]


def iso(value: datetime | None) -> str | None:
    """UTC, as ISO 8601 with a Z. A value with a zone (PostgreSQL answers in its session's
    zone) is converted; one without (SQLite keeps none) is UTC as the store wrote it."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DagState:
    """What Airflow says of a segment's DAG, as the page reads it. Plain data: built from
    Airflow's metadata DB by `include.orchestration.dag_state` (the layer above), defined here
    where it is read, so that the store never imports orchestration."""

    paused: bool
    active_run: dict[str, str] | None  # {"dag_run_id", "state", "kind"}: queued or running


@dataclass(frozen=True)
class Listed:
    """One segment of the list: what search and sort read, and where its row comes from (the
    store's row and the YAML's config; either may be missing)."""

    id: str
    name: str
    status: str | None
    stale: bool
    source_type: str
    row: dict[str, Any] | None
    config: SegmentSummary | None

    def entry(self) -> dict[str, Any]:
        """Its `list --json` object."""
        row, config = self.row, self.config
        return {
            "id": self.id,
            "name": self.name,
            "connector_users": row["connector_users"] if row else 0,
            "netmera_users": row["netmera_users"] if row else 0,
            "message_sent": row["message_sent"] if row else 0,
            "description": config.description if config else row["description"],
            "last_update_date": iso(row["last_update_date"]) if row else None,
            "status": self.status,
            "stale": self.stale,
            "source_type": self.source_type,
        }


def listed(store: SegmentStore, configs: list[SegmentSummary] | None = None) -> list[Listed]:
    """Every configured segment (never-run ones too) and every segment the store knows, by
    name. `configs`: the valid YAMLs, read from the segments folder when not given."""
    stored = {row["id"]: row for row in store.list_segments()}
    if configs is None:
        configs = [SegmentSummary.of(c) for c in load_segments().segments]
    configured = {c.id: c for c in configs}
    stale = Staleness(datetime.now(UTC), stale_grace())
    found = []
    for segment_id in stored.keys() | configured.keys():
        row, config = stored.get(segment_id), configured.get(segment_id)
        found.append(
            Listed(
                id=segment_id,
                name=config.name if config else row["name"],
                status=row["status"] if row else None,
                stale=stale(
                    config.schedule if config else None, row["last_update_date"] if row else None
                ),
                source_type=config.source_type if config else row["source_type"],
                row=row,
                config=config,
            )
        )
    return sorted(found, key=lambda s: (s.name.lower(), s.id))


def list_rows(store: SegmentStore) -> list[dict[str, Any]]:
    """The Connector Segments table, as `list --json`."""
    return [segment.entry() for segment in listed(store)]


def page_rows(
    segments: list[Listed],
    states: Mapping[str, DagState],
    failures: Mapping[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """`list_rows`' objects, each also with what the page shows and may do: the schedule of
    its YAML (in words too), reachable users, its DAG, whether that is paused and its active
    run (from `states`; paused None: no DAG, or not parsed yet), the actions its state allows
    now, when it refreshes next and, unless it is Ready, why not (`status_reason`).

    `failures` (`dag_state.refresh_failures`, by DAG id): a refresh that failed where no step
    could record it (a run failed by hand, a callback lost) is newer than the store knows:
    unless a run is active now, the row says Failed, naming the run."""
    freshness = Staleness(datetime.now(UTC), stale_grace())
    rows = []
    for segment in segments:
        config, row = segment.config, segment.row
        state = states.get(config.dag_id) if config else None
        schedule = config.schedule if config else None
        last_update = row["last_update_date"] if row else None
        entry = {
            **segment.entry(),
            "schedule": schedule,
            "schedule_text": in_words(schedule),
            # A paused DAG refreshes at no time.
            "next_refresh_at": None
            if state and state.paused
            else iso(freshness.next_refresh(schedule)),
            "overdue_since": iso(freshness.overdue_since(schedule, last_update)),
            "reachable": row["reachable"] if row else None,
            "dag_id": config.dag_id if config else None,
            "paused": state.paused if state else None,
            "active_run": state.active_run if state else None,
            "actions": allowed_actions(row, state),
        }
        failure = unrecorded_failure(
            segment.status, state, (failures or {}).get(config.dag_id) if config else None
        )
        if failure:
            entry["status"] = FAILED
        entry["status_reason"] = status_reason(entry, row, failure)
        rows.append(entry)
    return rows


def unrecorded_failure(
    status: str | None, state: DagState | None, failure: dict[str, Any] | None
) -> dict[str, Any] | None:
    """`failure` (the DAG's newest ended refresh, failed), if the store does not say Failed
    (no step or callback could record it) and no run is active now (it is the news)."""
    if failure is None or status == FAILED or (state and state.active_run):
        return None
    return failure


def status_reason(
    entry: dict[str, Any], row: dict[str, Any] | None, failure: dict[str, Any] | None
) -> str | None:
    """Why the segment is not Ready, in a sentence, for the badge the page shows (the same
    precedence: Not Active, then Failed and Held, then Stale); None when Ready, Calculating or
    never run."""
    if entry["paused"]:
        return "Its DAG is paused in Airflow: nothing refreshes it until someone unpauses it."
    if entry["active_run"] or entry["status"] == CALCULATING:
        return None
    if failure:
        return (
            f"Run {failure['dag_run_id']} failed before any step could record why (Airflow "
            "state failed); Segment Details names the task and links its log. The published "
            "membership is unchanged."
        )
    recorded = row["status_reason"] if row else None
    if entry["status"] == FAILED:
        return (
            f"The last refresh failed in {recorded or 'a step'}. The published membership is "
            "unchanged."
        )
    if entry["status"] == HELD:
        return (
            f"Held by a guardrail, not published: {recorded or 'see Segment Details'}. "
            "Approve publishes it."
        )
    if entry["stale"]:
        since = entry["overdue_since"].replace("T", " ").replace("Z", " UTC")
        return (
            f"Overdue since {since}: the scheduled refresh has not published; the members are "
            "from the Last Update Date."
        )
    return None


def allowed_actions(row: dict[str, Any] | None, state: DagState | None) -> list[str]:
    """What the page offers now: nothing without an active DAG or while a run is queued or
    running; Send Message only when Ready; Approve only when Held; Restore once a version
    before the current one is kept (every version number below the current was published)."""
    if state is None or state.paused or state.active_run:
        return []
    status = row["status"] if row else None
    if status == CALCULATING:
        return []
    version = row["current_version"] if row else None
    actions = ["refresh"]
    if status == READY and version:
        actions.append("send")
    if status == HELD:
        actions.append("approve")
    if version and version > 1:
        actions.append("restore")
    return actions


# The page's status filter also takes the two states that are not the store's.
STALE, NOT_ACTIVE = "stale", "not active"


def search(
    segments: list[Listed],
    states: Mapping[str, DagState],
    q: str | None = None,
    status: str | None = None,
    source_type: str | None = None,
) -> list[Listed]:
    """The segments whose name or id contains `q` (any case) and whose status and source
    type are the ones given (status in any case; Stale and Not Active select the stale and
    the paused ones, by `states`); None matches all."""
    needle = q.casefold() if q else None
    wanted = status.casefold() if status else None

    def has_status(s: Listed) -> bool:
        if wanted == STALE:
            return s.stale
        if wanted == NOT_ACTIVE:
            state = states.get(s.config.dag_id) if s.config else None
            return bool(state and state.paused)
        return (s.status or "").casefold() == wanted

    return [
        s
        for s in segments
        if (needle is None or needle in s.name.casefold() or needle in s.id.casefold())
        and (wanted is None or has_status(s))
        and (source_type is None or s.source_type == source_type)
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


def details(
    store: SegmentStore,
    segment_id: str,
    limit: int,
    airflow_runs: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The segment and its last `limit` runs, as `details --json`; None if it never ran.
    With `airflow_runs` (`dag_state.recent_runs`: the API has them), the runs are joined with
    Airflow's (`run_history`): those no step recorded are listed too, and a segment whose only
    runs are such is no longer "never ran"."""
    row = store.segment(segment_id)
    if row is None and not airflow_runs:
        return None
    runs = [
        {k: (iso(r[k]) if k.endswith("_at") else r[k]) for k in RUN_FIELDS}
        for r in store.runs(segment_id, limit)
    ]
    if airflow_runs is not None:
        runs = run_history(runs, airflow_runs, limit)
    if row is None:
        return {**_unrecorded_segment(segment_id), "runs": runs, "versions": []}
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
        # The run whose unmatched source users explain the current version (unmatched.csv).
        "unmatched_run": store.unmatched_run(segment_id),
        "runs": runs,
        "versions": kept_versions(store, segment_id, version),
    }


def _unrecorded_segment(segment_id: str) -> dict[str, Any]:
    """`details`' fields for a segment the store has no row of (its runs never recorded)."""
    try:
        config = find_segment(segment_id)
    except SegmentConfigError:
        config = None
    empty = ("current_version", "connector_users", "netmera_users", "reachable")
    return {
        "id": segment_id,
        "name": config.name if config else segment_id,
        "description": config.description if config else "",
        "source_type": config.source.type if config else None,
        "status": None,
        "status_reason": None,
        **dict.fromkeys(empty),
        "message_sent": 0,
        "last_update_date": None,
        "matched_source_users": None,
        "refused_rows": None,
        "reasons": {},
        "matched_by": {},
        "unmatched_run": None,
    }


# A kept version as `details` lists it, from the run that published it.
VERSION_FIELDS = (
    "connector_users",
    "netmera_users",
    "reachable",
    "added",
    "removed",
    "restored_from",
)


def kept_versions(store: SegmentStore, segment_id: str, current: int | None) -> list[dict]:
    """The kept published versions, newest first (one query): their counts, when each was
    published, which is `current` and which Restore accepts (any other kept one)."""
    return [
        {
            "version": run["version"],
            "published_at": iso(run["finished_at"]),
            **{k: run[k] for k in VERSION_FIELDS},
            "current": run["version"] == current,
            "restorable": run["version"] != current,
        }
        for run in store.kept_versions(segment_id)
    ]


def never_ran(segment_id: str) -> str:
    """Why `details` has nothing for the segment (the CLI and the API say the same)."""
    return f"segment {segment_id!r} has never run (or does not exist)"


def history(store: SegmentStore, segment_id: str, user_id: str) -> dict[str, Any] | None:
    """When the Netmera user entered and left the segment, over the kept versions (the CLI's
    `history` and the API's answer); None for a segment that never ran."""
    from include.store.repository import oldest_kept_version

    row = store.segment(segment_id)
    if row is None:
        return None
    current = row["current_version"]
    events: list[dict[str, Any]] = []
    stays = store.stays(segment_id, user_id)
    for stay in stays:
        events.append(
            {
                "version": stay["entered_version"],
                "at": iso(stay["entered_at"]),
                "change": "entered",
                "matched_by": stay["matched_by"],
            }
        )
        if stay["left_version"] is not None:
            events.append(
                {"version": stay["left_version"], "at": iso(stay["left_at"]), "change": "left"}
            )
    return {
        "segment_id": segment_id,
        "user_id": user_id,
        "member": bool(stays) and stays[-1]["left_version"] is None,
        "current_version": current,
        "oldest_kept_version": oldest_kept_version(current),
        "events": events,
    }
