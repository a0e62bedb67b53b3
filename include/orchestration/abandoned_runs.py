"""Run records left "calculating" by Airflow runs that ended with no step or callback reporting.

The usual way a dead run is recorded is the DAG's failure callback. It cannot run when the
segment's DAG can no longer be built: a YAML made invalid while its run was in flight leaves
the run's remaining tasks unable to find the DAG in the worker ("Dag not found during start
up"), and the DAG processor, which runs the callback, cannot build it either. Airflow fails the
run, the record stays "calculating" and the page would show Calculating until someone fixed the
file and refreshed. The hourly check (`dags/connector_segments_stale_check.py`) asks Airflow
for the state of each such run and marks the failed ones Failed, with the file's error if it is
invalid now, and sends the Failed alert the callback would have sent (from the config the run
recorded at its start: the file may no longer say).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from include.config.segments import SegmentConfig, SegmentConfigError, dag_id_of, find_segment
from include.orchestration import alerts, refresh
from include.orchestration.connections import netmera_database

log = logging.getLogger(__name__)
ENDED_UNREPORTED = "the Airflow run failed without its steps reporting (worker or callback lost)"


def fail_abandoned_runs(run_state: Callable[[str, str], str]) -> dict[str, int]:
    """Mark Failed every "calculating" record whose Airflow run failed; `run_state(dag_id,
    run_id)` is Airflow's state of that run. Returns how many were checked and marked."""
    store = netmera_database().store
    pending = store.calculating_runs()
    marked = 0
    for segment_id, run_id in pending:
        try:
            state = run_state(dag_id_of(segment_id), run_id)
        except Exception as exc:  # a run Airflow no longer knows (deleted): leave the record
            log.warning("segment %s: run %s: no Airflow state (%s)", segment_id, run_id, exc)
            continue
        if state != "failed":
            continue  # still running, or queued again
        if refresh.abandon_run(segment_id, run_id, ENDED_UNREPORTED + _file_problem(segment_id)):
            marked += 1
            log.error("segment %s: run %s had failed unreported: now Failed", segment_id, run_id)
            snapshot = store.run_config(segment_id, run_id)
            if snapshot is not None:
                alerts.alert_failed_run(SegmentConfig.from_snapshot(snapshot), run_id)
    return {"checked": len(pending), "marked_failed": marked}


def _file_problem(segment_id: str) -> str:
    """Why the segment's file cannot be used now, if it cannot ('' if it can)."""
    try:
        find_segment(segment_id)
    except SegmentConfigError as exc:
        return f"; its segment file is invalid now: {exc}"
    return ""
