"""One refresh of a connector segment, step by step, as the DAG runs it.

    start → extract → match → validate → publish

Each step takes the segment config and the run key (the Airflow run id) and talks to the
connector, the staging folder, the matcher, GX and the store. Nothing here imports Airflow
except through `include.connections`; the DAG file only wires these steps together.
Task logs get counts and reasons, never identifiers.
"""

from __future__ import annotations

import logging
from typing import Any

from include import staging
from include.config import SegmentConfig
from include.connections import NETMERA_CONN_ID, get_connection, netmera_database
from include.staging import AUDIENCE_FILE, run_dir

log = logging.getLogger(__name__)


class DataValidationError(RuntimeError):
    """A data expectation failed: the run is Failed and cannot be approved."""


def _store():
    return netmera_database().store


def start(config: SegmentConfig, run_key: str, *, dry_run: bool, approve: bool) -> None:
    _store().start_run(config, run_key, dry_run=dry_run, approve=approve)
    staging.remove_other_runs(config.id, run_key)
    log.info(
        "segment %s: run %s started (dry_run=%s, approve=%s)", config.id, run_key, dry_run, approve
    )


def extract(config: SegmentConfig, run_key: str) -> dict[str, Any]:
    """Source → staged Parquet, batch by batch."""
    from include.connectors import read_source
    from include.staging import stage_audience

    folder = run_dir(config.id, run_key)
    staged = stage_audience(
        read_source(config, get_connection, folder),
        fields=config.source_fields,
        user_key=config.user_key,
        destination=folder / AUDIENCE_FILE,
    )
    _store().record_run(config.id, run_key, refused_rows=staged.refused_no_user_key)
    log.info(
        "segment %s: staged %d source rows (%d refused: no %r)",
        config.id,
        staged.rows,
        staged.refused_no_user_key,
        config.user_key,
    )
    return {"rows": staged.rows, "refused_no_user_key": staged.refused_no_user_key}


def match(config: SegmentConfig, run_key: str) -> dict[str, Any]:
    """Staged audience x Netmera user table → members Parquet and counts on the run record."""
    import pyarrow.parquet as pq

    from include.matching.paths import choose_path, match_segment

    db = netmera_database()
    engine, info, users, folder = db.engine, db.info, db.users, run_dir(config.id, run_key)
    staged = folder / AUDIENCE_FILE
    # extra "match_path": database | worker | auto (by the audience's size against the table,
    # and on SQLite by the indexes this segment's kinds need)
    rows = pq.ParquetFile(staged).metadata.num_rows
    kinds = {i.kind for i in config.identifiers}
    path = choose_path(engine, info.extra, users, rows, kinds)
    log.info("segment %s: matching on the %s path", config.id, path)
    result = match_segment(config, staged, engine, users, folder, path)
    _store().record_run(
        config.id,
        run_key,
        connector_users=result.connector_users,
        netmera_users=result.netmera_users,
        matched_source_users=result.matched_source_users,
        reachable=result.reachable,
        reasons=result.reasons,
        matched_by=result.matched_by,
    )
    log.info(
        "segment %s: Connector Users %d, Netmera Users %d, reachable %s, matched by %s, "
        "unmatched %s",
        config.id,
        result.connector_users,
        result.netmera_users,
        result.reachable,
        result.matched_by,
        result.reasons,
    )
    return result.to_dict()


def validate(
    config: SegmentConfig,
    run_key: str,
    matched: dict[str, Any],
    *,
    dry_run: bool,
    approve: bool,
) -> str:
    """Run the GX suites. Returns "publish" or "held"; raises on a data failure."""
    from include.matching.matcher import MatchResult
    from include.validation.checks import FAIL, HOLD, approval_gaps, describe_holds
    from include.validation.checks import validate as run_checks

    store = _store()
    current = store.segment(config.id)
    published = current["netmera_users"] if current and current["current_version"] else None
    decision = run_checks(MatchResult(**matched), config.guardrails, published)
    summary = dict(decision.summary)
    hold_reason = describe_holds(decision, config.guardrails) if decision.holds else None
    if decision.holds and approve:
        # An approval covers what the held refresh showed, not whatever this one brings.
        held = store.last_run_with_status(config.id, "held", before=run_key)
        gaps = approval_gaps(decision, held and held["validation"])
        if gaps:
            approve = False
            hold_reason += f"; approve=true does not cover: {', '.join(gaps)}"
        else:
            summary["approved"] = decision.holds
            summary["approved_run"] = held["airflow_run_id"]
    store.record_run(config.id, run_key, validation=summary, hold_reason=hold_reason)
    if decision.outcome == FAIL:
        raise DataValidationError(
            f"segment {config.id!r}: data expectations failed: {', '.join(decision.failures)}"
        )
    if decision.outcome == HOLD and not approve and not dry_run:
        store.hold_run(config.id, run_key, hold_reason)
        staging.remove_run(config.id, run_key)  # an approval extracts again
        log.warning(
            "segment %s: HELD, not published: %s. Trigger with approve=true to publish.",
            config.id,
            hold_reason,
        )
        return "held"
    if decision.outcome == HOLD:
        log.warning(
            "segment %s: guardrail tripped (%s) but %s",
            config.id,
            hold_reason,
            "approved" if approve else "dry run",
        )
    return "publish"


def publish(
    config: SegmentConfig, run_key: str, matched: dict[str, Any], *, dry_run: bool
) -> dict[str, Any]:
    """The new membership becomes current in one transaction (rolled back on a dry run)."""
    import pyarrow.parquet as pq

    def batches():
        members = pq.ParquetFile(matched["members_path"])
        for batch in members.iter_batches(batch_size=10_000, columns=["user_id", "matched_by"]):
            yield batch.to_pylist()

    outcome = _store().publish(config.id, run_key, batches(), counts=matched, dry_run=dry_run)
    log.info(
        "segment %s: %s version %s: +%s added, -%s removed",
        config.id,
        "dry run, would publish" if dry_run else "published",
        outcome["version"],
        outcome["added"],
        outcome["removed"],
    )
    # Staged files hold personal data: drop them once the run has done its job.
    staging.remove_run(config.id, run_key)
    return outcome


def record_failure(segment_id: str, run_key: str, step: str, error: BaseException | str) -> None:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = _store().fail_run(segment_id, run_key, step, text)  # as recorded: redacted
    staging.remove_run(segment_id, run_key)  # retries are over: nothing will resume from it
    log.error("segment %s: %s failed; previous membership kept. %s", segment_id, step, text)


def abandon_run(segment_id: str, run_key: str) -> None:
    """Called when the Airflow run failed: a record still "calculating" becomes Failed."""
    _store().abandon_run(segment_id, run_key, "the Airflow run failed before a step reported")
    staging.remove_run(segment_id, run_key)


def send_message(config: SegmentConfig, run_key: str, params: dict[str, Any]) -> dict[str, Any]:
    """Send Message to the published membership (after this run's publish, or without a
    refresh): `include/netmera/campaign.py`."""
    from include.netmera.campaign import send_message as send_campaign
    from include.netmera.client import NetmeraClient

    def client() -> NetmeraClient:
        return NetmeraClient(get_connection(NETMERA_CONN_ID))

    return send_campaign(config, run_key, params, netmera_database(), client)
