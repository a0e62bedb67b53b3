"""One refresh of a connector segment, step by step, as the DAG runs it.

    start → extract → match → validate → publish
    start → restore  (a rollback to an earlier kept version, instead of a refresh)

The DAG runs several steps in one Airflow task (`segment_dags.py`; docs/decisions.md, "Task
layout"), so each step records its own duration on the run record, and an exception leaving a
step names it (`failed_step`): the run record says which step failed, not only which task.

Each step takes the segment config and the run key (the Airflow run id) and talks to the
connector, the run's staging (`include/staging.py`: a local folder, or object storage and a
private scratch folder per step), the matcher, GX and the store. `start` records the config its
run starts with, and every later step is given that one (`config_for_run`), whatever the YAML
says by then. Nothing here imports Airflow except through `include.orchestration.connections`
and `staging_store`; the DAG file only wires these steps together. Task logs get counts and
reasons, never identifiers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from include.config.segments import SegmentConfig
from include.orchestration import alerts, metrics
from include.orchestration.connections import (
    get_connection,
    netmera_client,
    netmera_database,
    webhook_state,
)
from include.orchestration.staging_store import staging
from include.staging import AUDIENCE_FILE, StagedAudience

if TYPE_CHECKING:
    import pyarrow as pa

    from include.matching.result import MatchResult
    from include.staging import StepFolder
    from include.store.repository import MemberChange, Publication

log = logging.getLogger(__name__)


class DataValidationError(RuntimeError):
    """A data expectation failed: the run is Failed and cannot be approved."""


def _store():
    return netmera_database().store


_P = ParamSpec("_P")
_R = TypeVar("_R")
STEP_ATTRIBUTE = "connector_segments_step"  # set on an exception by the step it left


def _step(
    function: Callable[Concatenate[SegmentConfig, str, _P], _R],
) -> Callable[Concatenate[SegmentConfig, str, _P], _R]:
    """A step (called with the config and the run id): once it returns, its duration goes on
    the run record and to the metrics; an exception leaving it is marked with its name."""
    return _named(function, timed=True)


def _named(function: Callable[..., _R], *, timed: bool) -> Callable[..., _R]:
    name = function.__name__

    @functools.wraps(function)
    def step(config: SegmentConfig, run_id: str, *args: Any, **kwargs: Any) -> _R:
        began = time.monotonic()
        try:
            result = function(config, run_id, *args, **kwargs)
        except Exception as exc:
            if getattr(exc, STEP_ATTRIBUTE, None) is None:  # the innermost step is the one
                setattr(exc, STEP_ATTRIBUTE, name)
            raise
        if timed:
            took = time.monotonic() - began
            _store().record_step(config.id, run_id, name, took)
            metrics.step_took(config, name, timedelta(seconds=took))
        return result

    return step


def failed_step(error: BaseException | None) -> str | None:
    """The step an exception left (or the one it was raised from), if a step marked it."""
    while error is not None:
        step = getattr(error, STEP_ATTRIBUTE, None)
        if step:
            return step
        error = error.__cause__
    return None


@functools.partial(_named, timed=False)  # a failure names it; its time is no step's work
def start(
    config: SegmentConfig,
    run_id: str,
    *,
    dry_run: bool,
    approve: bool,
    restore_version: int | None = None,
) -> None:
    _store().start_run(
        config, run_id, dry_run=dry_run, approve=approve, restore_version=restore_version
    )
    staging().remove_other_runs(config.id, run_id, "start")
    log.info(
        "segment %s: run %s started (dry_run=%s, approve=%s, restore_version=%s)",
        config.id,
        run_id,
        dry_run,
        approve,
        restore_version,
    )


def config_for_run(config: SegmentConfig, run_id: str) -> SegmentConfig:
    """The config the run started with, recorded by `start`: Airflow 3 parses the DAG file
    again for every task, so `config` is what the YAML says now, and a file edited mid-run
    would have the later steps match, validate, publish and send with other settings than the
    audience was staged with. `config` itself when the run recorded none (a send-only run has
    no start step; a run from before snapshots were kept). One row read."""
    snapshot = _store().run_config(config.id, run_id)
    if snapshot is None:
        return config
    if snapshot != config.snapshot():
        log.warning(
            "segment %s: config file %s changed after this run started; the run keeps the "
            "config it started with, the next run uses the edited file",
            config.id,
            config.config_path or "(none)",
        )
    # Validated again on every step, not only after an edit: a snapshot that no longer
    # round-trips fails every run at once instead of the rare one that meets an edit.
    return SegmentConfig.from_snapshot(snapshot)


def _parquet_batches(path: str | Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A step's Parquet output, batch by batch, for the store's bulk inserts."""
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=50_000, columns=columns)


def _members(run: StepFolder) -> Iterator[pa.RecordBatch]:
    """The matched members, batch by batch, fetched from staging when first read (a publish
    retried after its commit reads none: the members may be gone by then)."""
    from include.matching.decide import MEMBERS_FILE

    yield from _parquet_batches(run.fetch(MEMBERS_FILE), ["user_id", "matched_by"])


def _member_change(run: StepFolder, matched: MatchResult) -> MemberChange | None:
    """The match's members' change against the previous match's members, if it made one;
    fetched from staging when first read, as the members are."""
    from include.matching.decide import ENTERED_FILE, LEFT_FILE
    from include.store.repository import MemberChange

    if not matched.changed_since:
        return None
    return MemberChange(
        matched.changed_since, lambda: (str(run.fetch(ENTERED_FILE)), str(run.fetch(LEFT_FILE)))
    )


@_step
def extract(config: SegmentConfig, run_id: str) -> StagedAudience:
    """Source → staged Parquet, batch by batch; kept for match once complete."""
    from include.connectors import read_source
    from include.staging import stage_audience

    # The connectors are handed the state every worker shares, kept in the Netmera database:
    # the vendors' budgets and what the Mixpanel webhook staged.
    budgets, pushed = netmera_database().budgets, webhook_state()
    with staging().step(config.id, run_id, "extract") as run:
        written = stage_audience(
            read_source(
                config, get_connection, run.folder, kept=run, budgets=budgets, pushed=pushed
            ),
            fields=config.source_fields,
            user_key=config.user_key,
            destination=run.folder / AUDIENCE_FILE,
        )
        staged = dataclasses.replace(written, path=run.keep(Path(written.path)))
    _store().record_run(config.id, run_id, refused_rows=staged.refused_no_user_key)
    log.info(
        "segment %s: staged %d source rows (%d refused: no %r)",
        config.id,
        staged.rows,
        staged.refused_no_user_key,
        config.user_key,
    )
    return staged


@_step
def match(
    config: SegmentConfig, run_id: str, staged: StagedAudience, *, full_refresh: bool = False
) -> MatchResult:
    """Staged audience x Netmera user table → members Parquet beside it, kept for validate and
    publish; the unmatched source users (key, reason) and the counts on the run record
    (unmatched first: until the counts land, readers see the refresh before). The path
    (database or worker) follows the `netmera_db` extra `match_path`. Incremental when it can
    be (`include/matching/carry.py`): the resolutions it made are kept for the next match
    before anything else is recorded; `full_refresh` asks for a full match."""

    from include.matching.decide import ENTERED_FILE, LEFT_FILE
    from include.matching.pipeline import match_audience
    from include.store.resolutions import SegmentResolutions

    db = netmera_database()
    store = db.store
    kept = SegmentResolutions(store.engine, config.id)
    with staging().step(config.id, run_id, "match") as run:
        audience = run.fetch(AUDIENCE_FILE)  # the lookups and members are written beside it
        result = match_audience(
            config,
            audience,
            db.engine,
            db.users,
            db.info.extra,
            run.folder,
            kept,
            full_refresh=full_refresh,
        )
        if result.resolutions is not None:
            kept.save(result.resolutions, run_id)
        members = run.keep(Path(result.members_path))
        if result.changed_since:  # the members' change, for publish (decide.ENTERED_FILE)
            for name in (ENTERED_FILE, LEFT_FILE):
                run.keep(Path(result.members_path).with_name(name))
        store.record_unmatched(
            config.id, run_id, _parquet_batches(result.unmatched_path, ["user_key", "reason"])
        )
        # Recorded above; a scratch folder's copy goes with the step.
        unmatched = result.unmatched_path if run.is_run_folder else ""
    result = dataclasses.replace(
        result, members_path=members, unmatched_path=unmatched, resolutions=None
    )
    store.record_run(
        config.id,
        run_id,
        connector_users=result.connector_users,
        netmera_users=result.netmera_users,
        matched_source_users=result.matched_source_users,
        reachable=result.reachable,
        reasons=result.reasons,
        matched_by=result.matched_by,
        mode=result.mode,
        rematched=result.rematched,
    )
    log.info(
        "segment %s: %s match (%d source users matched again): Connector Users %d, "
        "Netmera Users %d, reachable %s, matched by %s, unmatched %s",
        config.id,
        result.mode,
        result.rematched,
        result.connector_users,
        result.netmera_users,
        result.reachable,
        result.matched_by,
        result.reasons,
    )
    return result


@_step
def validate(
    config: SegmentConfig,
    run_id: str,
    matched: MatchResult,
    *,
    dry_run: bool,
    approve: bool,
) -> str:
    """Run the GX suites on the members match kept. Returns "publish" or "held"; raises on a
    data failure."""
    from include.matching.decide import MEMBERS_FILE

    with staging().step(config.id, run_id, "validate") as run:
        here = dataclasses.replace(matched, members_path=str(run.fetch(MEMBERS_FILE)))
        return _validated(config, run_id, here, run, dry_run=dry_run, approve=approve)


def _validated(
    config: SegmentConfig,
    run_id: str,
    matched: MatchResult,
    run: StepFolder,
    *,
    dry_run: bool,
    approve: bool,
) -> str:
    from include.validation.checks import FAIL, HOLD, approval_gaps, describe_holds
    from include.validation.checks import validate as run_checks

    store = _store()
    current = store.segment(config.id)
    published = current["netmera_users"] if current and current["current_version"] else None
    decision = run_checks(matched, config.guardrails, published)
    summary = dict(decision.summary)
    hold_reason = describe_holds(decision, config.guardrails) if decision.holds else None
    if decision.holds and approve:
        # An approval covers what the held refresh showed, not whatever this one brings.
        held = store.last_run_with_status(config.id, "held", before=run_id)
        gaps = approval_gaps(decision, held and held["validation"])
        if gaps:
            approve = False
            hold_reason += f"; approve=true does not cover: {', '.join(gaps)}"
        else:
            summary["approved"] = decision.holds
            summary["approved_run"] = held["airflow_run_id"]
    store.record_run(config.id, run_id, validation=summary, hold_reason=hold_reason)
    if decision.outcome == FAIL:
        raise DataValidationError(
            f"segment {config.id!r}: data expectations failed: {', '.join(decision.failures)}"
        )
    if decision.outcome == HOLD and not approve and not dry_run:
        # What Approve would change, on the held run: the publish's own work, rolled back.
        added, removed = store.preview(config.id, _members(run))
        base = current["current_version"] if current else None
        store.record_run(config.id, run_id, base_version=base, added=added, removed=removed)
        store.hold_run(config.id, run_id, hold_reason)
        run.remove_run()  # an approval extracts again
        log.warning(
            "segment %s: HELD, not published: %s (publishing would add %d, remove %d). "
            "Trigger with approve=true to publish.",
            config.id,
            hold_reason,
            added,
            removed,
        )
        alerts.alert_held(config, run_id, hold_reason)  # logs, never raises, if undelivered
        metrics.held(config)
        return "held"
    if decision.outcome == HOLD:
        log.warning(
            "segment %s: guardrail tripped (%s) but %s",
            config.id,
            hold_reason,
            "approved" if approve else "dry run",
        )
    return "publish"


@_step
def publish(
    config: SegmentConfig, run_id: str, matched: MatchResult, *, dry_run: bool
) -> Publication:
    """The new membership becomes current in one transaction (rolled back on a dry run)."""
    with staging().step(config.id, run_id, "publish") as run:
        outcome = _store().publish(
            config.id,
            run_id,
            _members(run),
            counts=matched,
            dry_run=dry_run,
            change=_member_change(run, matched),
        )
        log.info(
            "segment %s: %s version %s: +%s added, -%s removed",
            config.id,
            "dry run, would publish" if dry_run else "published",
            outcome.version,
            outcome.added,
            outcome.removed,
        )
        # Staged files hold personal data: drop them once the run has done its job.
        run.remove_run()
    if not dry_run:
        metrics.published(config, run_id)
    if config.source.type == "mixpanel_webhook" and not dry_run:
        _compact_webhook_state(config.id)
    return outcome


# A run record's status once its refresh has finished, as the refresh's outcome.
_FINISHED = {"published": "published", "held": "held", "dry_run": "dry run"}


def finished(segment_id: str, run_id: str) -> str | None:
    """The outcome of the run's refresh if an earlier attempt of its task finished it (the
    worker died before reporting success): a retry then does nothing again."""
    run = _store().run(segment_id, run_id)
    return _FINISHED.get(run["status"]) if run else None


def match_validate_publish(
    config: SegmentConfig,
    run_id: str,
    staged: StagedAudience,
    *,
    dry_run: bool,
    approve: bool,
    full_refresh: bool = False,
) -> str:
    """The rest of a refresh once its audience is staged, in this process: "published",
    "dry run" (nothing published) or "held" (a guardrail tripped). `full_refresh`: match in
    full even if an incremental match could."""
    done = finished(config.id, run_id)
    if done:
        log.info("segment %s: an earlier attempt of this run finished it: %s", config.id, done)
        return done
    matched = match(config, run_id, staged, full_refresh=full_refresh)
    if validate(config, run_id, matched, dry_run=dry_run, approve=approve) == "held":
        return "held"
    publish(config, run_id, matched, dry_run=dry_run)
    return "dry run" if dry_run else "published"


def _compact_webhook_state(segment_id: str) -> None:
    """Published: fold the webhook diffs into the base export, so the staged state stays one
    audience plus what arrived since. It changes no audience, so a failure only warns."""
    try:
        folded = webhook_state().compact(segment_id)
    except Exception as exc:  # the publish has committed; the next one compacts again
        log.warning("segment %s: compacting the webhook state failed: %s", segment_id, exc)
        return
    if folded:
        log.info("segment %s: %d webhook diff sessions folded into the export", segment_id, folded)


@_step
def restore(
    config: SegmentConfig, run_id: str, version: int, *, dry_run: bool = False
) -> Publication:
    """Kept version `version` becomes current again, as a new version, in one transaction.
    Raises RestoreRefused (nothing changed) for a version that cannot be restored, and for a
    dry run: `details` already shows each kept version's counts."""
    from include.store.repository import RestoreRefused

    if dry_run:
        raise RestoreRefused(
            f"segment {config.id!r}: restore_version cannot be a dry run; nothing restored "
            "(details lists each kept version's counts)"
        )
    outcome = _store().restore(config.id, run_id, version)
    log.info(
        "segment %s: restored version %d as version %s: +%s added, -%s removed",
        config.id,
        version,
        outcome.version,
        outcome.added,
        outcome.removed,
    )
    metrics.published(config, run_id)
    return outcome


def record_failure(
    segment_id: str,
    run_id: str,
    step: str,
    error: BaseException | str,
    params: dict[str, Any] | None = None,
) -> None:
    """A step failed for good. `params`: the run's trigger parameters, for a record the run
    never opened (its `start` failed before it began): a dry run's or a restore's failure
    must not make the segment Failed."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    params = params or {}
    text = _store().fail_run(  # as recorded: redacted
        segment_id,
        run_id,
        step,
        text,
        dry_run=bool(params.get("dry_run")),
        approve=bool(params.get("approve")),
        restored_from=params.get("restore_version"),
    )
    # Retries are over: nothing will resume from the staged files.
    _remove_staged(segment_id, run_id, f"{step} (failed)")
    log.error("segment %s: %s failed; previous membership kept. %s", segment_id, step, text)


def abandon_run(
    segment_id: str, run_id: str, why: str = "the Airflow run failed before a step reported"
) -> bool:
    """Called when the Airflow run failed: a record still "calculating" becomes Failed.
    Returns whether it was still calculating."""
    abandoned = _store().abandon_run(segment_id, run_id, why)
    _remove_staged(segment_id, run_id, "abandoned run")
    return abandoned


def _remove_staged(segment_id: str, run_id: str, step: str) -> None:
    """A run that failed: its staged files (personal data) go. Never raises: the failure is
    recorded already, and staging that cannot even be built is what it names."""
    try:
        staging().remove_run(segment_id, run_id, step)
    except Exception as exc:
        log.warning("segment %s: the run's staged files were not removed: %s", segment_id, exc)


@_step
@metrics.counts_sends
def send_message(
    config: SegmentConfig, run_id: str, params: dict[str, Any], sent_by: str | None = None
) -> dict[str, Any]:
    """Send Message to the published membership (after this run's publish, or without a
    refresh): `include/campaign/message.py`. `sent_by`: who triggered the run."""
    from include.campaign.message import send_message as send_campaign

    if params.get("restore_version") is not None:
        # A restore is no refresh: `send_on_refresh` does not apply, and an asked send goes to
        # the current version, the restored one (the DAG runs the send after the restore).
        params = {**params, "refresh": False}

    return send_campaign(config, run_id, params, netmera_database(), netmera_client, sent_by)
