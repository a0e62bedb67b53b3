"""Queue a refresh of the segment's DAG when pushed data completes an export or a diff.

Runs inside the Airflow API server, so it uses Airflow's core trigger function on the metadata
DB. At most one queued refresh per DAG: a refresh already waiting will read the newest staged
state when it starts. A failure to trigger never loses data: the page is stored, and the next
scheduled or manual run reads it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from include.config.segments import SegmentConfig
from include.webhooks.logsafe import first_line

log = logging.getLogger(__name__)

TRIGGERING_USER = "mixpanel-webhook"


def trigger_refresh(segment: SegmentConfig, why: str) -> str | None:
    """Queue a run of the segment's DAG unless one is queued; return its run id. Never raises.

    `why` goes into the run's note (rendered as Markdown) and the logs: the caller builds it
    from validated values only (the action, page numbers, `CohortSyncCall.session_label`)."""
    try:
        return _trigger(segment.dag_id, why)
    except Exception as exc:  # DAG not parsed yet, metadata DB down, ...: the page is stored
        log.warning(
            "segment %s: staged data is complete (%s) but triggering %s failed (%s: %s); the "
            "next scheduled or manual run will pick it up",
            segment.id,
            why,
            segment.dag_id,
            type(exc).__name__,
            first_line(exc),  # the cause, not the SQL that followed it
        )
        return None


def _refreshes(conf: dict | None) -> bool:
    conf = conf or {}
    return conf.get("refresh", True) is not False and not conf.get("dry_run")


def _trigger(dag_id: str, why: str) -> str | None:
    import sqlalchemy as sa
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType

    with create_session() as session:
        queued = session.scalars(
            sa.select(DagRun.conf).where(
                DagRun.dag_id == dag_id, DagRun.state == DagRunState.QUEUED
            )
        ).all()
        # Only a queued run that will refresh and publish reads the new state; a Send Message
        # (refresh: false) or a dry run does not.
        if any(_refreshes(conf) for conf in queued):
            log.info("%s already has a queued run; not triggering another (%s)", dag_id, why)
            return None
        run = trigger_dag(
            dag_id,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=TRIGGERING_USER,
            run_id=f"mixpanel_webhook__{datetime.now(UTC).isoformat()}",
            conf={},
            note=f"Mixpanel cohort sync: {why}",
            session=session,
        )
        run_id = run.run_id if run else None
    log.info("%s: triggered run %s (%s)", dag_id, run_id, why)
    return run_id
