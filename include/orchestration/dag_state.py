"""What Airflow's metadata DB says about the segments' DAGs, and the runs the page's actions
trigger: this runs inside the API server (the UI's JSON API), on Airflow's own session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class DagState:
    paused: bool
    active_run: dict[str, str] | None  # {"dag_run_id", "state"} of a queued or running run


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
    active = sa.select(DagRun.dag_id, DagRun.run_id, DagRun.state).where(
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
        for dag_id, run_id, state in session.execute(active.order_by(DagRun.id.desc())).all():
            runs[dag_id] = {"dag_run_id": run_id, "state": str(state)}  # the oldest wins
    return {dag_id: DagState(bool(p), runs.get(dag_id)) for dag_id, p in paused.items()}


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
