"""### Connector Segments: stale check

Every hour, lists the segments that are **Stale** (a scheduled segment with no successful
refresh within one interval of its schedule plus `CONNECTOR_SEGMENTS_STALE_GRACE_MINUTES`)
and sends the Stale alert of each one whose YAML `alerts` block asks for it (`on` includes
`stale`), once per stale episode: a segment is alerted again only after a publish and a new
spell of staleness. An alert no channel took is tried again at the next check; one that
cannot be delivered is logged (`include/orchestration/alerts.py`). Each check also counts
every stale segment in the metrics (`connector_segments.stale`, and the gauge
`connector_segments.stale_segments`: `include/orchestration/metrics.py`).

It also marks **Failed** the run records left "calculating" by Airflow runs that failed with
no step or callback reporting, e.g. a segment YAML made invalid while its run was in flight
(`include/orchestration/abandoned_runs.py`).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(
    dag_id="connector_segments_stale_check",
    dag_display_name="Connector Segments: stale check",
    description="Alerts the Stale connector segments whose alerts ask for it, once per episode; "
    "marks runs that failed unreported Failed.",
    doc_md=__doc__,
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two checks at once could both alert one episode
    tags=["connector-segment", "alerts"],
    default_args={
        "owner": "data-platform",
        "retries": int(os.environ.get("CONNECTOR_SEGMENTS_RETRIES", "2")),
        "retry_delay": timedelta(minutes=5),
    },
)
def connector_segments_stale_check():
    @task
    def alert_stale_segments() -> dict:
        from include.orchestration.alerts import alert_stale_segments

        return alert_stale_segments()

    @task(trigger_rule="all_done")  # whether or not the alerts went out
    def fail_abandoned_runs() -> dict:
        from airflow.sdk import get_current_context

        from include.orchestration.abandoned_runs import fail_abandoned_runs

        return fail_abandoned_runs(get_current_context()["ti"].get_dagrun_state)

    # One after the other: on SQLite (`make ui`) concurrent writers fail each other at once.
    alert_stale_segments() >> fail_abandoned_runs()


connector_segments_stale_check()
