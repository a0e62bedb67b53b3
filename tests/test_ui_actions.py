"""The page's actions (Refresh, Send Message, Approve, Restore) and downloads, through a real
Airflow: `airflow standalone` (API server, scheduler, DAG processor) runs every triggered run.

What must hold: an action is a DAG run triggered as the logged-in user; a viewer may look but
not act (403); a cross-site request is refused; the state decides what may be done (409); and
what each action does to the segment is exactly what the CLI then shows.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import (
    airflow_api_server,
    cli,
    cli_json,
    core_url,
    netmera_conn,
    run_segment,
    token_session,
    write_csv,
    write_users,
)
from tests.fakes import FakeNetmera

pytestmark = pytest.mark.dagrun

KEY = "netmera-rest-key-actions"
USERS = [(f"nm-{i}", f"ext-{i}", None, None, None, i % 2 == 0) for i in range(1, 41)]
ACTIONS = ("refresh", "send", "approve", "restore")


def write_audience(ws: Path, segment_id: str, members: list[int], unknown: int = 0) -> None:
    """A CSV of source users s<i> with extIds ext-<i>, plus `unknown` users no one matches
    (one with no extId at all, and a user key a spreadsheet would run as a formula)."""
    rows = [[f"s{i}", f"ext-{i}"] for i in members]
    rows += [[f"u{i}", f"nobody-{i}"] for i in range(1, unknown)] + [["=u0", ""]] * bool(unknown)
    write_csv(ws / f"{segment_id}.csv", ["uid", "ext"], rows)


def segment_yaml(ws: Path, segment_id: str, **extra) -> None:
    config = {
        "id": segment_id,
        "name": segment_id.capitalize(),
        "description": f"{segment_id} for the action tests",
        "source": {"type": "file", "path": str(ws / f"{segment_id}.csv")},
        "user_key": "uid",
        "identifiers": [{"field": "ext", "kind": "external_id"}],
        **extra,
    }
    (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def netmera(module_workspace: Path, module_env: pytest.MonkeyPatch) -> Iterator[FakeNetmera]:
    """Two published segments: shop (a campaign, no shrink guardrail, three unmatched source
    users) and guarded (the default guardrails)."""
    ws = module_workspace
    write_users(ws / "netmera.db", USERS)
    write_audience(ws, "shop", list(range(1, 31)), unknown=3)
    segment_yaml(
        ws,
        "shop",
        campaign={"title": "Spring sale", "text": "20% off today"},
        guardrails={"max_shrink": None, "min_match_rate": 0.0},
    )
    write_audience(ws, "guarded", list(range(1, 21)))
    segment_yaml(ws, "guarded")
    write_audience(ws, "once_send", list(range(1, 11)))  # paused until its test: then scheduled
    campaign = {"title": "Tonight", "text": "Deals", "send_on_refresh": True, "holdout_percent": 10}
    segment_yaml(ws, "once_send", schedule="@once", campaign=campaign)
    with FakeNetmera(api_key=KEY) as fake:
        module_env.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(fake, KEY))
        assert run_segment("shop") == "success"
        assert run_segment("guarded") == "success"
        yield fake
        assert fake.errors == []


@pytest.fixture(scope="module")
def api(netmera: FakeNetmera, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("standalone") / "standalone.log"
    with airflow_api_server(
        log_path,
        standalone=True,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer",
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
    ) as base:
        yield f"{base}/connector-segments"


@pytest.fixture(scope="module")
def admin(api: str) -> requests.Session:
    session = token_session(api, "admin")
    for segment_id in ("shop", "guarded"):  # DAGs are paused when created: nothing would run
        answer = session.patch(
            f"{core_url(api)}/api/v2/dags/connector_segment_{segment_id}",
            json={"is_paused": False},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    return session


@pytest.fixture(scope="module")
def viewer(api: str) -> requests.Session:
    return token_session(api, "viewer")


def post(session, api: str, segment_id: str, action: str, **kw) -> requests.Response:
    return session.post(f"{api}/api/segments/{segment_id}/{action}", timeout=30, **kw)


def row(session, api: str, segment_id: str) -> dict:
    answer = session.get(f"{api}/api/segments", params={"id": segment_id}, timeout=30)
    (found,) = answer.json()["segments"]
    return found


def airflow_run(session, api: str, segment_id: str, run_id: str) -> dict:
    answer = session.get(
        f"{core_url(api)}/api/v2/dags/connector_segment_{segment_id}/dagRuns/{run_id}",
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def finished(session, api: str, segment_id: str, answer: requests.Response) -> dict:
    """The run an action answered with, once Airflow has run it."""
    assert answer.status_code == 202, answer.text
    return run_ended(session, api, segment_id, answer.json()["dag_run_id"])


def run_ended(session, api: str, segment_id: str, run_id: str) -> dict:
    deadline = time.monotonic() + 180
    while (run := airflow_run(session, api, segment_id, run_id))["state"] not in (
        "success",
        "failed",
    ):
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']}"
        time.sleep(1)
    return run


def runs_of(session, api: str, segment_id: str) -> int:
    answer = session.get(
        f"{core_url(api)}/api/v2/dags/connector_segment_{segment_id}/dagRuns", timeout=30
    )
    return answer.json()["total_entries"]


def test_actions_need_the_login_and_refuse_cross_site_requests(api, admin):
    before = runs_of(admin, api, "shop")
    for action in ACTIONS:
        assert post(requests, api, "shop", action).status_code == 401, action
        for site in ("cross-site", "same-site"):
            answer = post(admin, api, "shop", action, headers={"Sec-Fetch-Site": site})
            assert answer.status_code == 403, (action, site)
            assert answer.json()["detail"] == f"cross-site request refused (Sec-Fetch-Site: {site})"
    for path in ("members.csv", "unmatched.csv", "campaign", "chart.svg"):
        assert requests.get(f"{api}/api/segments/shop/{path}", timeout=30).status_code == 401
    # A browser too old to say where it comes from, with the UI's login cookie: only JSON,
    # which a form on another site cannot send.
    cookie = requests.Session()
    cookie.cookies.set("_token", admin.headers["Authorization"].removeprefix("Bearer "))
    for action in ACTIONS:
        answer = post(cookie, api, "shop", action, data={"version": "1"})
        assert answer.status_code == 403, (action, answer.text)
        assert answer.json()["detail"] == "a request with the login cookie must be application/json"
    assert runs_of(admin, api, "shop") == before  # nothing was triggered
    answer = post(cookie, api, "shop", "restore", json={"version": 99})  # past every check
    assert answer.status_code == 409, answer.text


def test_a_viewer_may_read_everything_but_act_on_nothing(api, admin, viewer):
    before = runs_of(admin, api, "shop")
    for action in ACTIONS:
        body = {"version": 1} if action == "restore" else None
        answer = post(viewer, api, "shop", action, json=body)
        assert answer.status_code == 403, (action, answer.text)
        assert answer.json()["detail"] == "viewer may not trigger runs of connector_segment_shop"
    assert runs_of(admin, api, "shop") == before
    for path in ("", "/report", "/campaign", "/members.csv", "/unmatched.csv", "/chart.svg"):
        assert viewer.get(f"{api}/api/segments/shop{path}", timeout=30).status_code == 200, path
    theirs, admins = row(viewer, api, "shop"), row(admin, api, "shop")
    assert (theirs["may_trigger"], theirs["actions"]) == (False, [])
    assert (admins["may_trigger"], admins["actions"]) == (True, ["refresh", "send"])


def test_refresh_is_a_run_by_the_user_and_one_at_a_time(api, admin):
    answer = post(admin, api, "shop", "refresh", headers={"Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["action"] == "refresh"
    run_id = answer.json()["dag_run_id"]
    again = post(admin, api, "shop", "refresh")
    assert again.status_code == 409
    assert "already has a run in progress" in again.json()["detail"]
    assert row(admin, api, "shop")["actions"] == []
    run = finished(admin, api, "shop", answer)
    assert run["state"] == "success"
    assert run["triggering_user_name"] == "admin"
    assert run["note"] == "Refresh by admin from the Connector Segments page"
    listed = row(admin, api, "shop")
    assert (listed["status"], listed["active_run"], listed["actions"]) == (
        "Ready",
        None,
        ["refresh", "send", "restore"],  # version 2 is current: version 1 is kept
    )
    assert airflow_run(admin, api, "shop", run_id)["conf"] == {}
    # Airflow's audit log names the user, as for a trigger through its own API.
    logs = admin.get(
        f"{core_url(api)}/api/v2/eventLogs",
        params={"dag_id": "connector_segment_shop", "event": "trigger_dag_run"},
        timeout=30,
    ).json()["event_logs"]
    (logged,) = [e for e in logs if e["run_id"] == run_id]
    assert logged["owner"] == "admin"
    assert json.loads(logged["extra"])["action"] == "refresh"


def test_the_downloads_are_the_members_and_the_last_refreshs_unmatched(api, viewer, capsys):
    members = viewer.get(f"{api}/api/segments/shop/members.csv", timeout=30)
    assert members.headers["content-type"].startswith("text/csv")
    assert "attachment" in members.headers["content-disposition"]
    lines = members.text.splitlines()
    assert lines[0] == "user_id"
    assert lines[1:] == cli(capsys, "members", "shop")[1].splitlines()
    assert read_csv(viewer, f"{api}/api/segments/guarded/unmatched.csv") == [["user_key", "reason"]]
    header, *unmatched = read_csv(viewer, f"{api}/api/segments/shop/unmatched.csv")
    assert header == ["user_key", "reason"]
    # A value a spreadsheet would run as a formula comes quoted as text.
    assert sorted(unmatched) == [
        ["'=u0", "no_identifier"],
        ["u1", "not_found"],
        ["u2", "not_found"],
    ]
    for path in ("members.csv", "unmatched.csv"):
        assert viewer.get(f"{api}/api/segments/nope/{path}", timeout=30).status_code == 404


def read_csv(session, url: str) -> list[list[str]]:
    answer = session.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    return list(csv.reader(io.StringIO(answer.text)))


def test_send_message_shows_its_audience_sends_once_and_is_reported(api, admin, netmera, capsys):
    campaign = admin.get(f"{api}/api/segments/shop/campaign", timeout=30).json()
    assert campaign == {
        "title": "Spring sale",
        "text": "20% off today",
        "platforms": ["IOS", "ANDROID"],
        "holdout_percent": 0,
        "audience": "all",
        "version": 2,
        "since_version": None,
        "members": 30,
        "recipients": 30,
        "holdout": 0,
        "not_addressable": 0,
        "resumes": None,  # no earlier send of this message to resume
    }
    run = finished(admin, api, "shop", post(admin, api, "shop", "send", json={}))
    assert (run["state"], run["triggering_user_name"]) == ("success", "admin")
    assert "holdout_percent" not in run["conf"]  # none asked: the YAML's
    assert sorted(netmera.delivered()) == sorted(f"ext-{i}" for i in range(1, 31))
    again = post(admin, api, "shop", "send", json={})
    assert again.status_code == 409
    assert "already sent to version 2" in again.json()["detail"]
    (sent,) = admin.get(f"{api}/api/segments/shop/report", timeout=30).json()
    assert (sent["title"], sent["recipients"], sent["version"]) == ("Spring sale", 30, 2)
    assert (sent["sent_by"], sent["holdout"]) == ("admin", 0)
    assert cli_json(capsys, "report", "shop")[0]["recipients"] == 30
    # Another text is another message: it may go to the same version, here holding out 10 %.
    message = {"title": "Last day", "text": "Ends tonight", "holdout_percent": 10}
    split = admin.get(f"{api}/api/segments/shop/campaign", params=message, timeout=30).json()
    assert (split["recipients"], split["holdout"]) == (27, 3)
    run = finished(admin, api, "shop", post(admin, api, "shop", "send", json=message))
    assert (run["state"], run["conf"]["holdout_percent"]) == ("success", 10)
    newest = admin.get(f"{api}/api/segments/shop/report", timeout=30).json()[0]
    assert (newest["recipients"], newest["holdout"], newest["sent_by"]) == (27, 3, "admin")
    url = f"{api}/api/segments/shop/sends/{newest['send_key']}/holdout.csv"
    header, *held = read_csv(admin, url)
    assert header == ["user_id"] and len(held) == 3
    messaged = netmera.delivered(newest["notification_key"])
    assert sorted(messaged + [f"ext-{u.removeprefix('nm-')}" for (u,) in held]) == sorted(
        f"ext-{i}" for i in range(1, 31)
    )
    assert len(netmera.delivered()) == 57
    assert row(admin, api, "shop")["message_sent"] == 57


def test_approve_publishes_what_the_held_refresh_showed(api, admin, module_workspace, capsys):
    assert post(admin, api, "guarded", "approve").status_code == 409  # Ready: nothing held
    write_audience(module_workspace, "guarded", list(range(1, 6)))  # 20 → 5: shrinks 75 %
    held = finished(admin, api, "guarded", post(admin, api, "guarded", "refresh"))
    assert held["state"] == "success"
    listed = row(admin, api, "guarded")
    assert (listed["status"], listed["netmera_users"], listed["actions"]) == (
        "Held",
        20,
        ["refresh", "approve"],
    )
    assert post(admin, api, "guarded", "send", json={}).status_code == 409  # not Ready
    newest = admin.get(f"{api}/api/segments/guarded", timeout=30).json()["runs"][0]
    assert (newest["status"], newest["added"], newest["removed"]) == ("held", 0, 15)
    run = finished(admin, api, "guarded", post(admin, api, "guarded", "approve"))
    assert (run["state"], run["triggering_user_name"], run["conf"]) == (
        "success",
        "admin",
        {"approve": True},
    )
    details = cli_json(capsys, "details", "guarded")
    assert (details["status"], details["netmera_users"]) == ("Ready", 5)


def test_restore_gives_back_the_previous_versions_members_and_counts(
    api, admin, module_workspace, capsys
):
    good_members = cli(capsys, "members", "shop")[1]
    good_unmatched = read_csv(admin, f"{api}/api/segments/shop/unmatched.csv")
    assert len(good_unmatched) == 1 + 3  # the header, the three unmatched source users
    good = {k: v for k, v in row(admin, api, "shop").items() if k.endswith("_users")}
    write_audience(module_workspace, "shop", list(range(31, 41)))  # the wrong audience
    assert finished(admin, api, "shop", post(admin, api, "shop", "refresh"))["state"] == "success"
    assert cli(capsys, "members", "shop")[1] != good_members
    versions = admin.get(f"{api}/api/segments/shop", timeout=30).json()["versions"]
    assert [(v["version"], v["current"], v["restorable"]) for v in versions] == [
        (3, True, False),
        (2, False, True),
        (1, False, True),
    ]
    for wrong in (3, 99):
        refused = post(admin, api, "shop", "restore", json={"version": wrong})
        assert refused.status_code == 409, wrong
        assert f"version {wrong} cannot be restored" in refused.json()["detail"]
    run = finished(admin, api, "shop", post(admin, api, "shop", "restore", json={"version": 2}))
    assert (run["state"], run["triggering_user_name"], run["conf"]) == (
        "success",
        "admin",
        {"restore_version": 2},
    )
    assert cli(capsys, "members", "shop")[1] == good_members
    restored = row(admin, api, "shop")
    assert {k: v for k, v in restored.items() if k.endswith("_users")} == good
    assert restored["status"] == "Ready"
    newest = cli_json(capsys, "details", "shop")["runs"][0]
    assert (newest["version"], newest["restored_from"], newest["added"], newest["removed"]) == (
        4,
        2,
        30,
        10,
    )
    # The unmatched users served are the restored version's (its refresh's), not the wrong
    # refresh's (none).
    assert read_csv(admin, f"{api}/api/segments/shop/unmatched.csv") == good_unmatched


def test_a_scheduled_refresh_sends_on_refresh_as_the_schedule(api, admin, netmera, capsys):
    dag = f"{core_url(api)}/api/v2/dags/connector_segment_once_send"
    assert admin.patch(dag, json={"is_paused": False}, timeout=30).status_code == 200
    deadline = time.monotonic() + 180
    while not (runs := admin.get(f"{dag}/dagRuns", timeout=30).json()["dag_runs"]):
        assert time.monotonic() < deadline, "the scheduler made no run of once_send"
        time.sleep(1)
    (run,) = runs
    run = run_ended(admin, api, "once_send", run["dag_run_id"])
    assert (run["run_type"], run["state"], run["triggering_user_name"]) == (
        "scheduled",
        "success",
        None,
    )
    (sent,) = cli_json(capsys, "report", "once_send")
    assert (sent["sent_by"], sent["recipients"], sent["holdout"]) == ("schedule", 9, 1)
    assert len(netmera.delivered(sent["notification_key"])) == 9
