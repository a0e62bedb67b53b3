"""A segment's recent runs as Segment Details lists them: the store's run records joined with
the runs Airflow knows (`include.orchestration.dag_state.recent_runs`), so that a run no step
could record (a task that never began, a run failed by hand, a queued run, a Send Message
alone) is listed too, with its error in words and the task whose log tells more.

Pure: both sides come in as dicts, so the CLI and tests can build them without Airflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from include.store.repository import RUN_RESULTS

# Airflow states of a task that ended badly; `upstream_failed` only follows another's failure.
FAILED_TASK = ("failed",)
RAN = ("success", "failed", "running", "up_for_retry", "up_for_reschedule", "restarting")
# A run's tasks whose log matters, by what it did (a restore's work is in `restore`).
MAIN_TASK = {"restore": "restore", "send": "send_message"}
# The task that runs several steps of a refresh (those without a task of their own); runs
# from before that layout had a task per step.
REFRESH_TASK = "refresh"
NEVER_BEGAN = (
    "task {task} never started: Airflow marked it {state} before it began (try {tries}), so it "
    "wrote no error of its own; its log in Airflow says why. Workers that cannot reach the API "
    "server's execution API (AIRFLOW__CORE__EXECUTION_API_SERVER_URL) fail this way"
)
FAILED_IN = "task {task} failed (Airflow state {state}, try {tries}): its log in Airflow says why"
# What a step records when it failed with no exception: it never ran in a worker (the
# scheduler or a person failed it), so nothing of its own says why.
NO_EXCEPTION = "the task failed without running its code (failed by the scheduler or by hand)"
MARKED_FAILED = (
    "Airflow marked the run failed while none of its tasks had failed (set by hand, or a "
    "timeout); no step could record why"
)


def failure_in_words(tasks: list[dict[str, Any]]) -> tuple[str | None, str]:
    """(the failed task, why) for an Airflow run that failed: the first task in pipeline order
    that failed, whether it ever began."""
    for task in tasks:
        if task["state"] in FAILED_TASK:
            words = FAILED_IN if task["began"] else NEVER_BEGAN
            return task["task_id"], words.format(
                task=task["task_id"], state=task["state"], tries=task["try_number"]
            )
    return None, MARKED_FAILED


def log_task(
    kind: str, tasks: list[dict[str, Any]], failed_step: str | None, status: str | None = None
) -> str | None:
    """The task whose log explains the run: the failed one, else the one doing the run's work
    (`restore`, `send_message`; `validate` for a held refresh), else the last that ran."""
    names = {t["task_id"] for t in tasks}
    if status == "held":
        return _task_of("validate", names)
    if failed_step in names or (failed_step and not tasks):
        return failed_step
    if failed_step and REFRESH_TASK in names:  # a step of those the refresh task runs
        return REFRESH_TASK
    for task in tasks:
        if task["state"] in FAILED_TASK:
            return task["task_id"]
    main = MAIN_TASK.get(kind)
    if main and (main in names or not tasks):
        return main
    ran = [t["task_id"] for t in tasks if t["state"] in RAN]
    return ran[-1] if ran else None


def _task_of(step: str, names: set[str]) -> str:
    """The task that ran `step` in a run with these tasks (none known: the step's name)."""
    return REFRESH_TASK if step not in names and REFRESH_TASK in names else step


def _kind_of_record(record: dict[str, Any]) -> str:
    if record.get("restored_from") is not None:
        return "restore"
    if record.get("dry_run"):
        return "dry_run"
    return "approve" if record.get("approve") else "refresh"


def run_history(
    records: Iterable[dict[str, Any]], airflow_runs: Iterable[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` runs, newest first. A run both know: its record, with Airflow's state,
    trigger and tasks. A run only Airflow knows: its state as status and, if it failed, the
    failed task and why. A record Airflow no longer knows: as recorded."""
    records = list(records)
    by_id = {r["airflow_run_id"]: r for r in records}
    merged: list[dict[str, Any]] = []
    for run in airflow_runs:
        record = by_id.pop(run["dag_run_id"], None)
        tasks = run["tasks"]
        if record is None:
            record = _unrecorded(run)
        elif record["status"] == "failed" and _unexplained(record["error"]):
            failed_step, error = failure_in_words(tasks)
            record = {**record, "failed_step": failed_step or record["failed_step"], "error": error}
        merged.append(
            {
                **record,
                "kind": run["kind"],
                "airflow_state": run["state"],
                "triggered_by": run["triggered_by"],
                "tasks": [{"task_id": t["task_id"], "state": t["state"]} for t in tasks],
                "log_task": log_task(
                    run["kind"], tasks, record.get("failed_step"), record["status"]
                ),
            }
        )
    for record in by_id.values():  # older than Airflow's list, or gone from Airflow
        kind = _kind_of_record(record)
        merged.append(
            {
                **record,
                "kind": kind,
                "airflow_state": None,
                "triggered_by": None,
                "tasks": [],
                "log_task": log_task(kind, [], record.get("failed_step"), record["status"]),
            }
        )
    merged.sort(key=lambda r: r.get("started_at") or "", reverse=True)
    return merged[:limit]


def _unexplained(error: str | None) -> bool:
    """A recorded error that says nothing Airflow's task states cannot say better."""
    return not error or error.endswith(("unknown error", NO_EXCEPTION))


def _unrecorded(run: dict[str, Any]) -> dict[str, Any]:
    """A run the store has no record of, in a record's shape."""
    failed_step, error = (
        failure_in_words(run["tasks"]) if run["state"] == "failed" else (None, None)
    )
    return {
        **dict.fromkeys(RUN_RESULTS),
        "airflow_run_id": run["dag_run_id"],
        "status": run["state"],  # queued, running, success or failed
        "dry_run": run["kind"] == "dry_run",
        "approve": run["kind"] == "approve",
        "started_at": run["started_at"] or run["queued_at"],
        "finished_at": run["ended_at"],
        "failed_step": failed_step,
        "error": error,
    }
