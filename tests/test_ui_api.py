"""The JSON API of the Connector Segments page, through a real `airflow api-server`.

One server for the module, on a store with a few segments built by real DAG runs (one
published with a message sent to a fake Netmera, one published on a schedule, one failed, one
never run). What must hold: every API route needs Airflow's login (the webhook keeps its own
Basic auth), and a logged-in viewer gets exactly the CLI's `--json` objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml

from tests.conftest import (
    cli_json,
    core_url,
    netmera_conn,
    run_segment,
    segments_api,
    token_session,
    write_csv,
    write_users,
)
from tests.fakes import FakeNetmera

pytestmark = pytest.mark.dagrun

KEY = "netmera-rest-key-ui"
USERS = [(f"nm-{i}", f"ext-{i}", None, None, None, i % 2 == 0) for i in range(1, 41)]
ADDED = (
    "schedule",
    "reachable",
    "paused",
    "dag_id",
    "active_run",
    "actions",
    "may_trigger",
    "schedule_text",
    "next_refresh_at",
    "overdue_since",
    "status_reason",
)


def file_segment(ws: Path, segment_id: str, name: str, members: range, **extra) -> dict:
    write_csv(ws / f"{segment_id}.csv", ["uid", "ext"], [[f"s{i}", f"ext-{i}"] for i in members])
    return {
        "id": segment_id,
        "name": name,
        "description": f"{name} for the API tests",
        "source": {"type": "file", "path": str(ws / f"{segment_id}.csv")},
        "user_key": "uid",
        "identifiers": [{"field": "ext", "kind": "external_id"}],
        **extra,
    }


SEGMENTS = {
    "buyers": lambda ws: file_segment(
        ws, "buyers", "Buyers", range(1, 31), campaign={"title": "Come back", "text": "Hi"}
    ),
    "churners": lambda ws: file_segment(
        ws, "churners", "Churn risk", range(20, 46), schedule="0 2 * * *"
    ),
    "idle": lambda ws: file_segment(ws, "idle", "Idle users", range(1, 5), schedule="@daily"),
    "warehouse": lambda ws: {
        "id": "warehouse",
        "name": "VIP (warehouse)",
        "source": {"type": "sql", "conn_id": "missing_db", "query": "SELECT 1 AS uid, 1 AS ext"},
        "user_key": "uid",
        "identifiers": [{"field": "ext", "kind": "external_id"}],
    },
}


@pytest.fixture(scope="module")
def store(module_workspace: Path, module_env: pytest.MonkeyPatch) -> Iterator[Path]:
    """The segments' YAMLs and a store where buyers sent a message, churners published,
    warehouse failed (its Connection does not exist) and idle never ran."""
    ws = module_workspace
    write_users(ws / "netmera.db", USERS)
    for segment_id, config in SEGMENTS.items():
        (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config(ws)))
    with FakeNetmera(api_key=KEY) as netmera:
        module_env.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(netmera, KEY))
        assert run_segment("buyers", send_message=True) == "success"
        assert run_segment("churners") == "success"
        assert run_segment("warehouse") == "failed"
        yield ws
        assert netmera.errors == []


@pytest.fixture(scope="module")
def api(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with segments_api(tmp_path_factory) as api:
        yield api


@pytest.fixture(scope="module")
def viewer(api: str) -> requests.Session:
    return token_session(api, "viewer")


def get(session, url: str, **params) -> requests.Response:
    return session.get(url, params=params, timeout=30)


def test_every_api_route_needs_the_airflow_login_and_the_webhook_keeps_its_own(api, viewer):
    # A forged token is refused as Airflow's own API refuses it.
    core = requests.get(
        f"{core_url(api)}/api/v2/dags",
        headers={"Authorization": "Bearer forged"},
        timeout=30,
    )
    assert core.status_code in (401, 403)
    for path in ("segments", "segments/buyers", "segments/buyers/report", "segments/nope"):
        answer = get(requests, f"{api}/api/{path}")
        assert answer.status_code == 401, path
        assert answer.json() == {"detail": "Not authenticated"}, path
        forged = {"Authorization": "Bearer forged"}
        answer = requests.get(f"{api}/api/{path}", headers=forged, timeout=30)
        assert (answer.status_code, answer.json()) == (core.status_code, core.json()), path
    # Mixpanel's shape and Basic challenge, with or without an Airflow token.
    for session in (requests, viewer):
        answer = session.post(f"{api}/webhooks/mixpanel/buyers", json={}, timeout=30)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="connector-segments"')
        assert answer.json() == {
            "action": None,
            "status": "failure",
            "error": {"message": "wrong or missing credentials", "code": 401},
        }


def test_the_list_is_the_clis_with_schedule_and_reachable(api, viewer, capsys):
    answer = get(viewer, f"{api}/api/segments").json()
    listed = cli_json(capsys, "list")
    assert answer["total"] == len(listed) == len(SEGMENTS)
    assert [{k: v for k, v in s.items() if k not in ADDED} for s in answer["segments"]] == listed
    by_id = {s["id"]: s for s in answer["segments"]}
    assert [by_id[i]["status"] for i in ("buyers", "churners", "warehouse", "idle")] == [
        "Ready",
        "Ready",
        "Failed",
        None,
    ]
    folder = Path(os.environ["CONNECTOR_SEGMENTS_DIR"])
    for segment_id in SEGMENTS:
        config = yaml.safe_load((folder / f"{segment_id}.yaml").read_text())
        assert by_id[segment_id]["source_type"] == config["source"]["type"]  # the CLI's too
        assert by_id[segment_id]["schedule"] == config.get("schedule")
    for segment_id in ("buyers", "churners", "warehouse"):
        assert (
            by_id[segment_id]["reachable"] == cli_json(capsys, "details", segment_id)["reachable"]
        )
    assert by_id["buyers"]["reachable"] == 15  # even extIds of ext-1..ext-30 may be pushed
    assert by_id["idle"]["reachable"] is None


def ids(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [s["id"] for s in answer.json()["segments"]]


def test_paused_is_airflows_is_paused_of_the_segments_dag(api, viewer):
    def paused() -> dict[str, bool | None]:
        answer = get(viewer, f"{api}/api/segments").json()
        return {s["id"]: s["paused"] for s in answer["segments"]}

    def airflow_says(segment_id: str) -> bool | None:
        answer = get(viewer, f"{core_url(api)}/api/v2/dags/connector_segment_{segment_id}")
        return answer.json()["is_paused"] if answer.status_code == 200 else None

    assert paused() == {i: airflow_says(i) for i in SEGMENTS}
    assert paused()["buyers"] is True  # DAGs are paused when created
    admin = token_session(api, "admin")
    unpause = admin.patch(
        f"{core_url(api)}/api/v2/dags/connector_segment_churners",
        json={"is_paused": False},
        timeout=30,
    )
    assert unpause.status_code == 200, unpause.text
    try:
        assert paused()["churners"] is False
        assert paused()["buyers"] is True
    finally:
        admin.patch(
            f"{core_url(api)}/api/v2/dags/connector_segment_churners",
            json={"is_paused": True},
            timeout=30,
        )


def test_the_list_filters_and_pages(api, viewer):
    url = f"{api}/api/segments"
    everything = ids(get(viewer, url))
    assert everything == ["buyers", "churners", "idle", "warehouse"]  # by name, as the CLI
    assert ids(get(viewer, url, q="CHURN")) == ["churners"]  # name, any case
    assert ids(get(viewer, url, q="house")) == ["warehouse"]
    assert ids(get(viewer, url, q="uyer")) == ["buyers"]
    assert ids(get(viewer, url, q="zzz")) == []
    assert ids(get(viewer, url, status="Ready")) == ["buyers", "churners"]
    assert ids(get(viewer, url, status="failed")) == ["warehouse"]
    assert ids(get(viewer, url, source_type="sql")) == ["warehouse"]
    # The page's two states that are not the store's: paused DAGs (all: DAGs are paused when
    # created) and stale segments (none: churners published just now).
    assert ids(get(viewer, url, status="not active")) == everything
    assert ids(get(viewer, url, status="Stale")) == []
    assert ids(get(viewer, url, id="idle")) == ["idle"]
    assert ids(get(viewer, url, id="idl")) == []  # exactly that id
    assert ids(get(viewer, url, source_type="file", status="Ready", q="b")) == ["buyers"]
    page = get(viewer, url, limit=2, offset=1)
    assert ids(page) == everything[1:3] and page.json()["total"] == 4
    assert ids(get(viewer, url, status="Ready", offset=1)) == ["churners"]
    assert get(viewer, url, status="Ready", limit=1).json()["total"] == 2
    assert ids(get(viewer, url, limit=500)) == everything
    for bad in ({"limit": 501}, {"limit": 0}, {"offset": -1}):
        assert get(viewer, url, **bad).status_code == 422, bad


def test_details_and_report_are_the_clis(api, viewer, capsys):
    for segment_id in ("buyers", "churners", "warehouse"):
        answer = get(viewer, f"{api}/api/segments/{segment_id}")
        assert answer.status_code == 200
        assert answer.json() == cli_json(capsys, "details", segment_id)
        report = get(viewer, f"{api}/api/segments/{segment_id}/report")
        assert report.status_code == 200
        assert report.json() == cli_json(capsys, "report", segment_id)
    (sent,) = get(viewer, f"{api}/api/segments/buyers/report").json()
    assert (sent["title"], sent["recipients"], sent["stats"] is not None) == ("Come back", 30, True)
    assert get(viewer, f"{api}/api/segments/idle/report").json() == []  # known, nothing sent


def test_an_unknown_segment_is_a_404_naming_it(api, viewer):
    for path in ("segments/nope", "segments/nope/report"):
        answer = get(viewer, f"{api}/api/{path}")
        assert answer.status_code == 404, path
        assert "'nope'" in answer.json()["detail"], path
    # Configured but never run: nothing to detail yet.
    answer = get(viewer, f"{api}/api/segments/idle")
    assert (answer.status_code, answer.json()["detail"]) == (
        404,
        "segment 'idle' has never run (or does not exist)",
    )


def next_daily(hour: int, now: datetime) -> str:
    """The next hour:00 UTC after `now`, as the API writes it."""
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return (at if at > now else at + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def unpaused_row(api: str, viewer: requests.Session, segment_id: str) -> dict:
    """The segment's list row while its DAG is unpaused (a paused one's reason is its pause)."""
    admin = token_session(api, "admin")
    dag = f"{core_url(api)}/api/v2/dags/connector_segment_{segment_id}"
    assert admin.patch(dag, json={"is_paused": False}, timeout=30).status_code == 200
    try:
        (row,) = get(viewer, f"{api}/api/segments", id=segment_id).json()["segments"]
    finally:
        admin.patch(dag, json={"is_paused": True}, timeout=30)
    return row


def test_each_row_says_why_it_is_not_ready_and_when_it_refreshes_next(api, viewer):
    rows = {s["id"]: s for s in get(viewer, f"{api}/api/segments").json()["segments"]}
    # All four DAGs are paused (as created): the reason a paused segment gets comes first,
    # and a paused segment has no next refresh.
    assert {r["status_reason"] for r in rows.values()} == {
        "Its DAG is paused in Airflow: nothing refreshes it until someone unpauses it."
    }
    assert {r["next_refresh_at"] for r in rows.values()} == {None}
    before = datetime.now(UTC)
    churners, idle = unpaused_row(api, viewer, "churners"), unpaused_row(api, viewer, "idle")
    after = datetime.now(UTC)
    assert churners["next_refresh_at"] in {next_daily(2, before), next_daily(2, after)}
    assert idle["next_refresh_at"] in {next_daily(0, before), next_daily(0, after)}
    assert unpaused_row(api, viewer, "buyers")["next_refresh_at"] is None  # manual
    assert rows["churners"]["schedule_text"] == "At 02:00, UTC"
    assert rows["buyers"]["schedule_text"].startswith("Manual")
    assert all(r["overdue_since"] is None for r in rows.values())  # published just now

    row = unpaused_row(api, viewer, "warehouse")
    # Failed: where and why, in words (its Connection does not exist).
    assert row["status"] == "Failed"
    assert row["status_reason"].startswith("The last refresh failed in extract: ")
    assert "missing_db" in row["status_reason"]


def test_unknown_filters_are_refused_and_every_answer_says_nosniff(api, viewer):
    for bad in ({"status": "Broken"}, {"source_type": "ftp"}, {"source_type": "SQL"}):
        answer = get(viewer, f"{api}/api/segments", **bad)
        assert answer.status_code == 400, bad
        assert repr(next(iter(bad.values()))) in answer.json()["detail"]
    for ok in ({"status": "not active"}, {"status": "STALE"}, {"source_type": "amplitude"}):
        assert get(viewer, f"{api}/api/segments", **ok).status_code == 200, ok
    everything = get(viewer, f"{api}/api/segments").json()["total"]
    empty = get(viewer, f"{api}/api/segments", status="", source_type="")  # no filter
    assert empty.json()["total"] == everything
    for path in (
        "api/segments",
        "api/segments/buyers/members.csv",
        "api/segments/buyers/unmatched.csv",
        "api/segments/buyers/chart.svg",
        "api/segments/nope",
        "static/app.js",
    ):
        answer = get(viewer, f"{api}/{path}")
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", path
    zone = get(viewer, f"{api}/api/segments/buyers/chart.svg", tz="Asia/Tokyo")
    assert "Times in Asia/Tokyo" in zone.text
    for bad in ("../etc", "Europe", "Mars/Olympus"):
        answer = get(viewer, f"{api}/api/segments/buyers/chart.svg", tz=bad)
        assert answer.status_code == 400, bad


def test_details_list_the_failed_run_with_its_task_and_error(api, viewer):
    details = get(viewer, f"{api}/api/segments/warehouse").json()
    run = details["runs"][0]
    assert (run["status"], run["airflow_state"], run["kind"]) == ("failed", "failed", "refresh")
    # The step that failed, and the task that ran it: a SQL segment's refresh is one task.
    assert (run["failed_step"], run["log_task"]) == ("extract", "refresh")
    assert "missing_db" in run["error"]
    assert {t["task_id"]: t["state"] for t in run["tasks"]}["refresh"] == "failed"
    # Who triggered it: dag.test() runs have no user; Airflow's run type says what they were.
    assert run["triggered_by"]


def test_a_run_failed_before_any_step_recorded_it_is_on_the_list_and_in_details(api, viewer):
    """A run no step could record (here failed by hand while queued: no task ever began) is
    Failed on the list, naming the run, and listed in Segment Details with Airflow's words."""
    admin = token_session(api, "admin")
    runs = f"{core_url(api)}/api/v2/dags/connector_segment_churners/dagRuns"
    made = admin.post(runs, json={"logical_date": None}, timeout=30)
    assert made.status_code == 200, made.text
    run_id = made.json()["dag_run_id"]
    failed = admin.patch(f"{runs}/{quote(run_id)}", json={"state": "failed"}, timeout=30)
    assert failed.status_code == 200, failed.text

    (row,) = get(viewer, f"{api}/api/segments", id="churners").json()["segments"]
    unpaused = unpaused_row(api, viewer, "churners")
    assert row["status"] == unpaused["status"] == "Failed"
    assert run_id in unpaused["status_reason"]
    assert "failed before any step could record why" in unpaused["status_reason"]

    # A Send Message ending after it does not hide it; a run in progress is the news then.
    send = admin.post(runs, json={"logical_date": None, "conf": {"refresh": False}}, timeout=30)
    send_id = send.json()["dag_run_id"]
    assert admin.patch(f"{runs}/{quote(send_id)}", json={"state": "success"}, timeout=30).ok
    assert unpaused_row(api, viewer, "churners")["status"] == "Failed"
    queued = admin.post(runs, json={"logical_date": None}, timeout=30).json()["dag_run_id"]
    (busy,) = get(viewer, f"{api}/api/segments", id="churners").json()["segments"]
    assert (busy["status"], busy["active_run"]["dag_run_id"]) == ("Ready", queued)
    assert busy["next_refresh_at"] is None  # paused: no scheduled refresh
    assert admin.patch(f"{runs}/{quote(queued)}", json={"state": "failed"}, timeout=30).ok

    details = get(viewer, f"{api}/api/segments/churners").json()
    assert details["status"] == "Ready"  # the store's: nothing it published changed
    assert [(r["airflow_run_id"], r["status"], r["kind"]) for r in details["runs"]][:3] == [
        (queued, "failed", "refresh"),
        (send_id, "success", "send"),
        (run_id, "failed", "refresh"),
    ]
    newest = details["runs"][2]
    assert newest["error"].startswith("Airflow marked the run failed")
    assert newest["connector_users"] is None  # nothing ran
    assert [r["status"] for r in details["runs"][3:]] == ["published"]
