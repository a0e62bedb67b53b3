"""Connector segments: one DAG `connector_segment_<id>` per YAML file in the segments folder,
built by the shard files `dags/connector_segments_<NN>.py`: each builds the segments whose id
falls in its shard (`include.config.segments.shard_of`, a stable hash of the id, out of
`SHARDS`), so that no file builds thousands of DAGs within Airflow's `dagbag_import_timeout`,
the DAG processor parses the shards in parallel; a worker running a task reads only its own
segment's YAML file (Airflow's parsing context).

Thin glue: the steps live in `include/orchestration/refresh.py`; this module only reads the
configs (pydantic + YAML, no heavy imports) and wires them into as few task processes as keep
what a task boundary is for (docs/decisions.md, "Task layout"):

    refresh ─┬─ restore ─┐          file, sql, mixpanel_webhook: the whole refresh is one task
             └───────────┴─ send_message
    start ─┬─ extract ── refresh ─┐  mixpanel, amplitude: the extract alone holds the vendor's
           ├─ restore ────────────┤  pool, and a retry of what follows never calls the vendor
           └──────────────────────┴─ send_message

The first task is a branch: from the trigger's params it opens the run's record and names the
tasks that follow (a restore, the refresh, the send only when one is asked); the scheduler
skips the others without starting a process for them.

Airflow 3 parses the DAG file again for every task, so the bound config is what the YAML says
when the task runs: the first task records the config its run starts with, and every later step runs
with that one (`refresh.config_for_run`); an edited YAML takes effect from the next run.
A YAML that fails validation is skipped here and reported as an import error of
`connector_segments_config_check.py` (naming the file and field); every other segment's DAG loads.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from airflow.sdk import (
    DAG,
    Asset,
    AssetAlias,
    Param,
    ParamsDict,
    dag,
    get_current_context,
    get_parsing_context,
    task,
)

from include.config.segments import (
    MAX_HOLDOUT_PERCENT,
    SEND_AUDIENCES,
    SegmentConfig,
    SegmentConfigError,
    find_segment,
    load_segments,
    segment_of_dag,
    shard_of,
)
from include.orchestration.access import access_control, synced_roles
from include.orchestration.pools import pool_for

log = logging.getLogger(__name__)
RETRIES_ENV = "CONNECTOR_SEGMENTS_RETRIES"
RETRY_DELAY_ENV = "CONNECTOR_SEGMENTS_RETRY_DELAY"  # seconds before the first retry

# Each Param names its JSON Schema draft: jsonschema checks a schema against its draft's
# metaschema on every validation (each Param of each DAG, at every parse), and the default
# draft's (2020-12) takes ~4x longer than draft-07's, a fifth of parsing 500 segments. The
# keywords used here mean the same in both drafts.
SCHEMA_DRAFT = {"$schema": "http://json-schema.org/draft-07/schema#"}
PARAMS = {
    "dry_run": Param(
        False,
        type="boolean",
        title="Dry run",
        description="Run everything but publish; the run record shows what would change.",
        **SCHEMA_DRAFT,
    ),
    "approve": Param(
        False,
        type="boolean",
        title="Approve a held refresh",
        description="Publish even if a guardrail (shrink, growth, match rate, empty) trips.",
        **SCHEMA_DRAFT,
    ),
    "refresh": Param(
        True,
        type="boolean",
        title="Refresh",
        description="Extract, match and publish. Off with send_message on: Send Message to the "
        "current membership without refreshing it.",
        **SCHEMA_DRAFT,
    ),
    "send_message": Param(
        False,
        type="boolean",
        title="Send Message",
        description="Send the campaign to the published members (at most once per version "
        "and message).",
        **SCHEMA_DRAFT,
    ),
    "message_title": Param(
        None,
        type=["null", "string"],
        title="Message title",
        description="Overrides the YAML campaign's title.",
        **SCHEMA_DRAFT,
    ),
    "message_text": Param(
        None,
        type=["null", "string"],
        title="Message text",
        description="Overrides the YAML campaign's text.",
        **SCHEMA_DRAFT,
    ),
    "send_key": Param(
        None,
        type=["null", "string"],
        title="Send key",
        description="Only to send the same message to the same version again: any new value.",
        **SCHEMA_DRAFT,
    ),
    "holdout_percent": Param(
        None,
        type=["null", "number"],
        minimum=0,
        maximum=MAX_HOLDOUT_PERCENT,
        title="Holdout percent",
        description="Share of the addressable members (0-50) that Send Message holds out: "
        "recorded, never messaged. Empty: the YAML campaign's (default 0).",
        **SCHEMA_DRAFT,
    ),
    "audience": Param(
        None,
        type=["null", "string"],
        enum=[None, *SEND_AUDIENCES],
        title="Audience",
        description="Who Send Message messages: all members, or those who entered since the "
        "version this message was last sent to (all the first time). Empty: the YAML "
        "campaign's (default all).",
        **SCHEMA_DRAFT,
    ),
    "full_refresh": Param(
        False,
        type="boolean",
        title="Full refresh",
        description="Match every source user again instead of only those whose data or "
        "Netmera users changed (the result is the same; it takes longer).",
        **SCHEMA_DRAFT,
    ),
    "restore_version": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Restore version",
        description="Instead of refreshing, make this earlier kept version current again "
        "(a rollback, published as a new version). `details` lists the kept versions.",
        **SCHEMA_DRAFT,
    ),
}


def _on_failure(context) -> None:
    """Final failure of a step: status Failed with the error; the membership is untouched.
    A failed send is recorded in its ledger instead (and counted): the membership is still
    Ready."""
    from include.orchestration import metrics
    from include.orchestration.dag_state import run_kind
    from include.orchestration.refresh import failed_step, record_failure
    from include.store.run_history import NO_EXCEPTION

    ti = context["ti"]
    segment_id = ti.dag_id.removeprefix("connector_segment_")
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    if ti.task_id == "send_message" or run_kind(conf) == "send":
        metrics.send_failed(segment_id)  # a Send Message alone whose start never began too
        return
    exception = context.get("exception")
    step = failed_step(exception) or ti.task_id  # a task runs several steps: the one that failed
    record_failure(segment_id, ti.run_id, step, exception or NO_EXCEPTION, conf)


# Every task's, set on each task: in `default_args` Airflow would serialise the callback as
# its source code (`inspect.getsource`) for every DAG at every parse. A task's dict result is
# one XCom: `multiple_outputs`, which a `-> dict` annotation turns on, would push each key as
# an XCom of its own, a call to the API server each.
STEP = {"on_failure_callback": _on_failure, "multiple_outputs": False}


# The segments with an `alerts` block, by DAG id: what the run-failure callback looks up (the
# Slack and SMTP providers load only when an alert fires, never while parsing).
_ALERTING: dict[str, SegmentConfig] = {}


def _on_run_failure(context) -> None:
    """Once per failed run. A run that failed without a step reporting it (a killed worker, a
    state set from the UI): a run record left "calculating" becomes Failed, so the status
    never sticks. Then the `failed` metric and the segment's Failed alert, if it has one (both
    only if the run left it Failed)."""
    from include.orchestration import metrics
    from include.orchestration.refresh import abandon_run

    run = context["dag_run"]
    segment_id = run.dag_id.removeprefix("connector_segment_")
    try:
        abandon_run(segment_id, run.run_id)
    finally:
        metrics.run_failed(segment_id, run.run_id)
        config = _ALERTING.get(run.dag_id)
        if config is not None:
            from include.orchestration.alerts import alert_failed_run

            alert_failed_run(config, run.run_id)


def _run() -> tuple[str, dict]:
    context = get_current_context()
    return context["run_id"], context["params"]


def _sent_by() -> str:
    """Who a send is for Message Report: the run's triggering user (the page, Airflow's UI and
    API set it), else what started the run ("schedule" for a scheduled one)."""
    run = get_current_context()["dag_run"]
    if run.triggering_user_name:
        return run.triggering_user_name
    kind = str(getattr(run.run_type, "value", run.run_type))  # DagRunType, or its value
    return "schedule" if kind == "scheduled" else kind


# Steps hand each other frozen dataclasses (include/orchestration/refresh.py); through XCom they
# travel as their fields. Airflow would serialise the dataclass itself but deserialises only
# the classes `[core] allowed_deserialization_classes` names (default `airflow.*`).
_to_xcom = dataclasses.asdict


def build_dag(config: SegmentConfig, synced: frozenset[str] | None = None) -> DAG:
    """One segment's DAG. The config is bound here, not read from a loop variable at run time;
    the steps after `start` run with the config their run started with, not this parse's.
    `synced`: under FAB, the team roles that exist (`access.synced_roles`)."""
    if config.alerts is not None:
        _ALERTING[config.dag_id] = config
    doc = (
        f"### {config.name}\n\n{config.description}\n\nSource: `{config.source.type}`, "
        f"config `{config.config_path.name if config.config_path else config.id}`."
    )

    vendor_pool = pool_for(config.source.type)
    # Downstream DAGs schedule on the segment's Asset: an event only when a membership is
    # published (a refresh or a restore), not for a held or dry run, hence the alias.
    published = AssetAlias(f"connector_segment_published:{config.id}")

    def announce() -> None:
        events = get_current_context()["outlet_events"]
        events[published].add(Asset(f"connector_segment://{config.id}"))

    @dag(
        dag_id=config.dag_id,
        dag_display_name=config.name,
        description=config.description[:200] or config.name,
        doc_md=doc,
        schedule=config.schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        access_control=access_control(config, synced),  # None without `access`
        tags=list(dict.fromkeys(["connector-segment", config.source.type, *config.tags])),
        on_failure_callback=_on_run_failure,
        default_args={
            "owner": config.owner,
            "retries": int(os.environ.get(RETRIES_ENV, "2")),
            "retry_delay": timedelta(seconds=float(os.environ.get(RETRY_DELAY_ENV, "60"))),
            "retry_exponential_backoff": 2.0,  # a multiplier in Airflow 3: 1 min, 2 min, 4 min
            "max_retry_delay": timedelta(minutes=30),
        },
    )
    def segment_dag():
        def follows(params: dict[str, Any], refresh_task: str) -> list[str]:
            """The tasks that follow the first one; the scheduler skips the others without
            starting them."""
            from include.campaign.message import send_asked

            restoring = params["restore_version"] is not None
            follow = ["restore"] if restoring else [refresh_task] if params["refresh"] else []
            return follow + (["send_message"] if send_asked(config, params) else [])

        def open_run(params: dict[str, Any]) -> None:
            """The run's record, for a refresh or a restore (a send alone has none)."""
            from include.orchestration import refresh

            if params["refresh"] or params["restore_version"] is not None:
                refresh.start(
                    config,
                    _run()[0],
                    dry_run=params["dry_run"],
                    approve=params["approve"],
                    restore_version=params["restore_version"],
                )

        def refresh_rest(staged: dict) -> str:
            from airflow.sdk.exceptions import AirflowFailException

            from include.orchestration import refresh
            from include.staging import StagedAudience

            run_id, params = _run()
            try:
                outcome = refresh.match_validate_publish(
                    refresh.config_for_run(config, run_id),
                    run_id,
                    StagedAudience(**staged),
                    dry_run=params["dry_run"],
                    approve=params["approve"],
                    full_refresh=bool(params.get("full_refresh")),
                )
            except refresh.DataValidationError as exc:
                raise AirflowFailException(str(exc)) from exc  # retrying cannot fix the data
            if outcome == "held":
                log.warning("Held by a guardrail: nothing published; trigger with approve=true")
            elif outcome == "published":
                announce()
            return outcome

        @task(outlets=[published], **STEP)
        def restore() -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from include.orchestration import refresh
            from include.store.repository import RestoreRefused

            run_id, params = _run()
            if params["restore_version"] is None:  # only if the first task was marked done
                raise AirflowSkipException("no restore_version: a refresh")
            try:
                outcome = refresh.restore(
                    refresh.config_for_run(config, run_id),
                    run_id,
                    params["restore_version"],
                    dry_run=params["dry_run"],
                )
            except RestoreRefused as exc:
                raise AirflowFailException(str(exc)) from exc  # a retry cannot fix it
            announce()
            return _to_xcom(outcome)

        @task(trigger_rule="none_failed", **STEP)
        def send_message() -> dict:
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

            from include.campaign.send import SendRefused
            from include.clients.netmera import NetmeraError
            from include.orchestration import refresh

            run_id, params = _run()
            try:
                started_with = refresh.config_for_run(config, run_id)
                return refresh.send_message(started_with, run_id, params, _sent_by())
            except SendRefused as exc:
                raise AirflowSkipException(str(exc)) from None
            except (NetmeraError, ValueError) as exc:
                raise AirflowFailException(str(exc)) from None  # a retry cannot fix these

        restored, sent = restore(), send_message()
        restored >> sent  # a send asked with a restore goes to the restored version

        if vendor_pool is None:
            # One task for the whole refresh: nothing in it waits on a vendor's budget.
            @task.branch(outlets=[published], **STEP)
            def refresh() -> list[str]:
                from include.orchestration import refresh as steps

                run_id, params = _run()
                follow = follows(params, "refresh")
                if "refresh" not in follow:
                    open_run(params)
                    return follow
                follow.remove("refresh")
                outcome = steps.finished(config.id, run_id)
                if outcome is None:  # not a retry of an attempt that finished the refresh
                    open_run(params)
                    started_with = steps.config_for_run(config, run_id)
                    outcome = refresh_rest(_to_xcom(steps.extract(started_with, run_id)))
                elif outcome == "published":
                    announce()  # the attempt that published died before reporting it
                if outcome == "held" and "send_message" in follow:
                    log.warning("nothing sent: this refresh did not publish (held)")
                    follow.remove("send_message")
                return follow

            refresh() >> [restored, sent]
            return

        # A vendor's extract is a task of its own: it alone holds the vendor's pool, and a
        # retry of what follows reads the staged audience, never the vendor again.
        @task.branch(**STEP)
        def start() -> list[str]:
            params = _run()[1]
            open_run(params)
            return follows(params, "extract")

        @task(pool=vendor_pool, **STEP)
        def extract() -> dict:
            from include.orchestration import refresh as steps

            run_id = _run()[0]
            return _to_xcom(steps.extract(steps.config_for_run(config, run_id), run_id))

        @task(outlets=[published], **STEP)
        def refresh(staged: dict) -> str:
            return refresh_rest(staged)

        staged = extract()
        start() >> [staged, restored, sent]
        refresh(staged) >> sent

    with warnings.catch_warnings():
        # `access_control` warns that airflow.security.permissions is deprecated: it is FAB's
        # per-DAG access, read only under FAB's auth manager, and has no successor in 3.x.
        warnings.filterwarnings("ignore", message=".*airflow.security.permissions.*")
        built = segment_dag()
    # The trigger form is set once the tasks are built: Airflow deep-copies a DAG's Params into
    # every task it creates (four copies a task: a third of parsing 500 segments), while a task
    # reads the DAG's Params at run time anyway (`process_params`: the DAG's, the task's, then
    # the run's conf). tests/test_config_and_dags.py checks what a task sees. Each DAG gets
    # its own Param objects (sharing the schemas): a run's conf is written into them. Their
    # defaults are checked once, at import (below): attrs' validator would run every
    # Param's JSON Schema check again for each DAG, 40 % of building one.
    with attrs.validators.disabled():
        built.params = _params()
    return built


def _params() -> dict[str, Param]:
    return {name: copy.copy(param) for name, param in PARAMS.items()}


ParamsDict(_params()).validate()  # what DAG.params' validator checks: every default is valid


SHARDS = 16  # the number of dags/connector_segments_<NN>.py files; changing it moves DAGs
DAG_FILES = Path(__file__).resolve().parents[2] / "dags"


def dag_file(segment_id: str) -> Path:
    """The shard file that builds the segment's DAG."""
    return DAG_FILES / f"connector_segments_{shard_of(segment_id, SHARDS):02d}.py"


def shard_dags(path: str) -> dict[str, DAG]:
    """The DAGs of the shard file at `path` (`connector_segments_<NN>.py`): every valid segment
    of shard NN. Invalid YAML files are skipped here and reported by
    `connector_segments_config_check.py`: an import error on a shard file would make Airflow
    mark every DAG of that shard stale."""
    shard = int(Path(path).stem.rsplit("_", 1)[1])
    if not 0 <= shard < SHARDS:
        raise ValueError(f"{path}: shard {shard} is not one of 0..{SHARDS - 1}")
    wanted = get_parsing_context().dag_id  # set when a worker runs one task: build only that DAG
    # A task's run needs no access_control: only the DAG processor's write reads it.
    synced = synced_roles() if wanted is None else None
    if wanted is None:
        configs = load_segments(shard=(shard, SHARDS)).segments
    else:
        configs = _own_segment(wanted, shard)
    built = {}
    for config in configs:
        try:
            dag_ = build_dag(config, synced)
        except Exception:  # a config the validation let through: lose this DAG, not all
            log.exception("segment %s: its DAG cannot be built; every other DAG is", config.id)
            continue
        dag_.fileloc = path  # @dag records its caller, this module: the DAG is the shard's
        built[config.dag_id] = dag_
    return built


def _own_segment(dag_id: str, shard: int) -> list[SegmentConfig]:
    """A task's parse: its own segment's YAML alone (not the shard's, ~600 files at 10,000
    segments), if it is a segment of this shard with a valid file; none otherwise, as the
    shard's load would (an invalid file is reported by `connector_segments_config_check.py`)."""
    segment_id = segment_of_dag(dag_id)
    if segment_id is None or shard_of(segment_id, SHARDS) != shard:
        return []
    try:
        return [find_segment(segment_id)]
    except SegmentConfigError:
        return []
