"""Segment Details' recent runs: the store's records joined with Airflow's runs
(`include.store.run_history`, pure). The API and browser tests see the same through a real
Airflow; here every way a run can look is spelled out."""

from __future__ import annotations

from include.store.repository import RUN_RESULTS
from include.store.run_history import NO_EXCEPTION, failure_in_words, run_history


def task(task_id: str, state: str | None, began: bool = True) -> dict:
    return {"task_id": task_id, "state": state, "began": began, "try_number": 1}


def airflow_run(run_id: str, state: str, kind: str, at: str, tasks: list[dict]) -> dict:
    return {
        "dag_run_id": run_id,
        "state": state,
        "kind": kind,
        "triggered_by": "marketer",
        "queued_at": at,
        "started_at": at,
        "ended_at": at,
        "tasks": tasks,
    }


def record(run_id: str, status: str, at: str, **values) -> dict:
    return {
        **dict.fromkeys(RUN_RESULTS),
        "airflow_run_id": run_id,
        "status": status,
        "dry_run": False,
        "approve": False,
        "started_at": at,
        **values,
    }


def test_a_task_that_never_began_is_told_apart_from_one_that_failed_running():
    never = failure_in_words([task("start", "failed", began=False), task("extract", None)])
    assert never[0] == "start"
    assert never[1].startswith("task start never started: Airflow marked it failed")
    assert "AIRFLOW__CORE__EXECUTION_API_SERVER_URL" in never[1]
    ran = failure_in_words([task("start", "success"), task("extract", "failed")])
    assert ran == ("extract", "task extract failed (Airflow state failed, try 1): its log in "
                   "Airflow says why")  # fmt: skip
    # upstream_failed only follows another failure; none failed: marked failed as a whole.
    assert failure_in_words([task("start", "upstream_failed")])[0] is None
    assert failure_in_words([])[1].startswith("Airflow marked the run failed")


def test_runs_only_airflow_knows_are_listed_newest_first_with_the_log_that_explains_them():
    runs = run_history(
        [
            record("r1", "published", "2026-12-01T03:30:00Z", version=1),
            record("r2", "failed", "2026-12-02T03:30:00Z", failed_step="start", error=NO_EXCEPTION),
            record("r0", "published", "2026-11-30T03:30:00Z", version=0),  # gone from Airflow
        ],
        [
            airflow_run("r4", "queued", "refresh", "2026-12-04T03:30:00Z", []),
            airflow_run(
                "r3",
                "success",
                "send",
                "2026-12-03T09:00:00Z",
                [task("start", "skipped"), task("send_message", "success")],
            ),
            airflow_run(
                "r2",
                "failed",
                "refresh",
                "2026-12-02T03:30:00Z",
                [task("start", "failed", began=False), task("extract", "upstream_failed")],
            ),
            airflow_run(
                "r1",
                "success",
                "restore",
                "2026-12-01T03:30:00Z",
                [task("start", "success"), task("restore", "success"), task("extract", "skipped")],
            ),
        ],
        limit=4,
    )
    assert [(r["airflow_run_id"], r["status"]) for r in runs] == [
        ("r4", "queued"),
        ("r3", "success"),
        ("r2", "failed"),
        ("r1", "published"),
    ]  # r0, the oldest, is past the limit
    queued, send, failed, restore = runs
    assert queued["log_task"] is None and queued["connector_users"] is None
    assert (send["kind"], send["log_task"], send["triggered_by"]) == (
        "send",
        "send_message",
        "marketer",
    )
    # The recorded "failed without running its code" gives way to what Airflow knows.
    assert failed["failed_step"] == "start" and failed["log_task"] == "start"
    assert failed["error"].startswith("task start never started")
    assert restore["log_task"] == "restore" and restore["version"] == 1
    assert {t["task_id"]: t["state"] for t in restore["tasks"]}["extract"] == "skipped"


def test_a_held_refresh_points_at_validate_and_a_record_airflow_forgot_keeps_its_own_words():
    held, forgotten = run_history(
        [
            record("h", "held", "2026-12-02T00:00:00Z", hold_reason="max_shrink"),
            record("f", "failed", "2026-12-01T00:00:00Z", failed_step="extract", error="boom"),
        ],
        [],
        limit=5,
    )
    assert (held["log_task"], held["airflow_state"]) == ("validate", None)
    assert (forgotten["error"], forgotten["log_task"]) == ("boom", "extract")


def test_a_run_that_failed_before_start_fails_the_segment_only_if_it_was_a_refresh(tmp_path):
    """The record a failure opens for a run whose `start` never began is the run the trigger
    asked for: a dry run's or a restore's leaves the segment Ready; a refresh's makes it
    Failed."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from include.store.repository import SegmentStore
    from include.store.tables import segments

    store = SegmentStore(sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}"))
    with store.engine.begin() as conn:
        conn.execute(
            segments.insert().values(
                id="s",
                name="S",
                description="",
                source_type="file",
                status="Ready",
                current_version=2,
                connector_users=5,
                netmera_users=4,
                message_sent=0,
                updated_at=datetime.now(UTC),
            )
        )
    store.fail_run("s", "dry", "start", NO_EXCEPTION, dry_run=True)
    store.fail_run("s", "restore", "start", NO_EXCEPTION, restored_from=1)
    assert store.segment("s")["status"] == "Ready"
    assert (store.run("s", "dry")["dry_run"], store.run("s", "restore")["restored_from"]) == (
        True,
        1,
    )
    store.fail_run("s", "refresh", "start", NO_EXCEPTION)
    assert store.segment("s")["status"] == "Failed"
    assert store.segment("s")["status_reason"] == f"start: {NO_EXCEPTION}"
    assert store.run("s", "refresh")["status"] == "failed"
