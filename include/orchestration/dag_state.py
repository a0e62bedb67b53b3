"""What Airflow's metadata DB says about the segments' DAGs, and the runs the page's actions
trigger: this runs inside the API server (the UI's JSON API), on Airflow's own session."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from include.store.views import DagState, iso

# Runs whose failure makes a segment Failed (a failed send, dry run or restore does not), and
# how many of a DAG's newest ended runs are searched for the newest of them.
REFRESH_KINDS = ("refresh", "approve")
ENDED_RUNS = 10


def run_kind(conf: dict[str, Any] | None) -> str:
    """What a run of a segment's DAG does, from its conf (the trigger form's params): restore,
    send (Send Message alone), dry_run, approve or refresh (a scheduled run has no conf)."""
    conf = conf or {}
    if conf.get("restore_version") is not None:
        return "restore"
    if conf.get("refresh") is False:
        return "send"
    if conf.get("dry_run"):
        return "dry_run"
    return "approve" if conf.get("approve") else "refresh"


class DagNotReady(LookupError):
    """The DAG is unknown to Airflow (not parsed yet, or its YAML is invalid) or paused."""


def dag_states(dag_ids: list[str] | None = None) -> dict[str, DagState]:
    """Paused and the oldest active run of each segment DAG Airflow knows (of `dag_ids`, or
    all of them): two queries, whatever the number of DAGs."""
    import sqlalchemy as sa
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    dags = sa.select(DagModel.dag_id, DagModel.is_paused)
    active = sa.select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.conf).where(
        DagRun.state.in_([DagRunState.QUEUED, DagRunState.RUNNING])
    )
    if dag_ids is None:
        dags = dags.where(DagModel.dag_id.startswith("connector_segment_"))
    else:
        dags = dags.where(DagModel.dag_id.in_(dag_ids))
        active = active.where(DagRun.dag_id.in_(dag_ids))
    with create_session() as session:
        paused = dict(session.execute(dags).all())
        runs: dict[str, dict[str, str]] = {}
        for dag_id, run_id, state, conf in session.execute(active.order_by(DagRun.id.desc())):
            # the oldest wins
            runs[dag_id] = {"dag_run_id": run_id, "state": str(state), "kind": run_kind(conf)}
    return {dag_id: DagState(bool(p), runs.get(dag_id)) for dag_id, p in paused.items()}


def refresh_failures(dag_ids: list[str]) -> dict[str, dict[str, str | None]]:
    """For each of `dag_ids` (a page of the list: bounded) whose newest ended refresh failed:
    that run (`{"dag_run_id", "kind", "ended_at"}`). A Send Message or a dry run ending after
    it does not hide it; a refresh whose only failed task is its send is no failure (the
    membership was published). One query over those DAGs' newest ended runs."""
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    if not dag_ids:
        return {}

    def failed_task(send: bool) -> sa.Exists:
        return sa.exists().where(
            TaskInstance.dag_id == DagRun.dag_id,
            TaskInstance.run_id == DagRun.run_id,
            TaskInstance.state == TaskInstanceState.FAILED,
            (TaskInstance.task_id == "send_message")
            if send
            else (TaskInstance.task_id != "send_message"),
        )

    ended = (
        sa.select(
            DagRun.dag_id,
            DagRun.run_id,
            DagRun.state,
            DagRun.conf,
            DagRun.end_date,
            (~failed_task(send=False) & failed_task(send=True)).label("send_only"),
            sa.func.row_number()
            .over(partition_by=DagRun.dag_id, order_by=DagRun.id.desc())
            .label("newest"),
        )
        .where(
            DagRun.dag_id.in_(dag_ids),
            DagRun.state.in_([DagRunState.SUCCESS, DagRunState.FAILED]),
        )
        .subquery()
    )
    seen: set[str] = set()
    failures: dict[str, dict[str, str | None]] = {}
    query = sa.select(ended).where(ended.c.newest <= ENDED_RUNS).order_by(ended.c.newest)
    with create_session() as session:
        for run in session.execute(query):
            kind = run_kind(run.conf)
            if run.dag_id in seen or kind not in REFRESH_KINDS:
                continue
            seen.add(run.dag_id)
            if str(run.state) == DagRunState.FAILED and not run.send_only:
                failures[run.dag_id] = {
                    "dag_run_id": run.run_id,
                    "kind": kind,
                    "ended_at": iso(run.end_date),
                }
    return failures


# The steps in the order a run takes them: the first failed one is the run's failure.
# Pipeline order, today's tasks and those of runs from before the layout had fewer.
TASK_ORDER = (
    "start",
    "extract",
    "refresh",
    "restore",
    "match",
    "validate",
    "publish",
    "send_message",
)


def recent_runs(dag_id: str, limit: int) -> list[dict[str, Any]]:
    """The DAG's newest `limit` runs as Airflow knows them, newest first: id, state, kind,
    who triggered it, when it was queued, started and ended, and each task's state and
    whether a worker ever began it. Two queries."""
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    query = (
        sa.select(
            DagRun.run_id,
            DagRun.state,
            DagRun.conf,
            DagRun.triggering_user_name,
            DagRun.run_type,
            DagRun.queued_at,
            DagRun.start_date,
            DagRun.end_date,
        )
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.id.desc())
        .limit(limit)
    )
    with create_session() as session:
        found = session.execute(query).all()
        tasks: dict[str, list[dict[str, Any]]] = {run.run_id: [] for run in found}
        if found:
            rows = session.execute(
                sa.select(
                    TaskInstance.run_id,
                    TaskInstance.task_id,
                    TaskInstance.state,
                    TaskInstance.hostname,
                    TaskInstance.try_number,
                ).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id.in_(list(tasks)))
            )
            for run_id, task_id, state, hostname, tries in rows:
                tasks[run_id].append(
                    {
                        "task_id": task_id,
                        "state": str(state) if state else None,
                        # A worker that began the task recorded its host (the execution API's
                        # `run`); a task failed by the scheduler or by hand never did.
                        "began": bool(hostname),
                        "try_number": tries,
                    }
                )
    order = {task: n for n, task in enumerate(TASK_ORDER)}
    return [
        {
            "dag_run_id": run.run_id,
            "state": str(run.state),
            "kind": run_kind(run.conf),
            "triggered_by": run.triggering_user_name or str(run.run_type),
            "queued_at": iso(run.queued_at),
            "started_at": iso(run.start_date),
            "ended_at": iso(run.end_date),
            "tasks": sorted(tasks[run.run_id], key=lambda t: order.get(t["task_id"], 99)),
        }
        for run in found
    ]


def trigger_run(
    dag_id: str, *, action: str, user: str, conf: dict[str, Any], note: str, exclusive: bool
) -> str:
    """Trigger a run of the DAG as `user` and return its run id. The run's triggering user and
    an entry of Airflow's audit log (`trigger_dag_run`, as the core API writes: its
    `action_logging` runs only on the core routes) name them. `exclusive`: refuse
    (RunInProgress) while another run is queued or running. The check holds the DAG's row
    (on PostgreSQL; SQLite has no row locks: two requests at the same instant may both
    trigger, and `max_active_runs=1` runs them one after the other) until the new run is
    committed. The lock lives in a session of its own: Airflow's helpers commit the thread's
    scoped session on their way (`DagRun.find_duplicate` inside `trigger_dag`), which would
    release it before the run exists."""
    import sqlalchemy as sa
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType

    with create_session(scoped=False) as lock, create_session() as session:
        dag = lock.execute(
            sa.select(DagModel.is_paused).where(DagModel.dag_id == dag_id).with_for_update()
        ).first()
        if dag is None:
            raise DagNotReady(
                f"{dag_id} is not known to Airflow yet (not parsed, or its YAML "
                "is invalid: see `python -m include.cli validate`)"
            )
        if dag.is_paused:
            raise DagNotReady(f"{dag_id} is paused (Not Active): unpause it in Airflow first")
        if exclusive:
            running = lock.scalars(
                sa.select(DagRun.run_id).where(
                    DagRun.dag_id == dag_id,
                    DagRun.state.in_([DagRunState.QUEUED, DagRunState.RUNNING]),
                )
            ).first()
            if running:
                raise RunInProgress(f"{dag_id} already has a run in progress ({running})")
        run = trigger_dag(
            dag_id,
            triggered_by=DagRunTriggeredByType.UI,
            triggering_user_name=user,
            run_id=f"{action}__{datetime.now(UTC).isoformat()}",
            conf=conf,
            note=note,
            session=session,
        )
        extra = {"action": action, "conf": conf, "method": "POST", "via": "connector-segments"}
        session.add(
            Log(
                event="trigger_dag_run",
                owner=user,
                owner_display_name=user,
                extra=json.dumps(extra),
                dag_id=dag_id,
                run_id=run.run_id,
            )
        )
        return run.run_id


class RunInProgress(RuntimeError):
    """Another run of the segment's DAG is queued or running."""
