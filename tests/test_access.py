"""Per-team access to segments under FAB's auth manager, through a real `airflow api-server`.

Airflow's metadata DB here is FAB's (its own AIRFLOW_HOME, migrated with FAB as the auth
manager), set up as compose's init does: `python -m include.orchestration.access sync`, the
DAGs serialised (`airflow dags reserialize`: the DAG processor's write, which syncs each DAG's
`access_control`), users made with `airflow users create`. The segments' store comes from real
DAG runs. Two teams act on their own segments, an analyst reads both teams' shared ones, a
global Viewer and an Admin keep Airflow's global roles; each must see exactly its segments on
every route, in `total` and in Airflow's own DAG list, a 404 for the others (as for a segment
that does not exist), and a 403 for an action it may not take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.browser import Airflow, chromium, log_in, open_page, screenshot, wait_for
from tests.conftest import ROOT, airflow_api_server, run_segment, write_csv, write_users

pytestmark = pytest.mark.dagrun

STALE_CHECK = "connector_segments_stale_check"
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ACCESS = {
    "crm_a_push": {"crm-a": "act", "analysts": "read"},
    "crm_a_mail": {"crm-a": "act"},
    "crm_b_push": {"crm-b": "act", "analysts": "read"},
    "unshared": None,  # no `access`: Airflow's global roles only
}
SEGMENTS = set(ACCESS)
USERS = {"ana": "crm-a", "ben": "crm-b", "ada": "analysts", "vic": "Viewer", "root": "Admin"}
SEES = {
    "ana": {"crm_a_push", "crm_a_mail"},
    "ben": {"crm_b_push"},
    "ada": {"crm_a_push", "crm_b_push"},
    "vic": SEGMENTS,
    "root": SEGMENTS,
}
ACTS = {"ana": SEES["ana"], "ben": SEES["ben"], "ada": set(), "vic": set(), "root": SEGMENTS}
READS = ("", "/report", "/campaign", "/members.csv", "/unmatched.csv", "/chart.svg")


def password(user: str) -> str:
    return f"{user}-test-password-4k"


@pytest.fixture(scope="module")
def store(module_workspace: Path) -> Path:
    """The segments' YAMLs and a store where each has published once."""
    ws = module_workspace
    write_users(
        ws / "netmera.db", [(f"nm-{i}", f"ext-{i}", None, None, None, True) for i in range(9)]
    )
    write_csv(ws / "audience.csv", ["uid", "ext"], [[f"s{i}", f"ext-{i}"] for i in range(6)])
    for segment_id, access in ACCESS.items():
        config = {
            "id": segment_id,
            "name": segment_id.replace("_", " ").title(),
            "source": {"type": "file", "path": str(ws / "audience.csv")},
            "user_key": "uid",
            "identifiers": [{"field": "ext", "kind": "external_id"}],
            "campaign": {"title": "Hello", "text": "From the access tests"},
            **({"access": access} if access else {}),
        }
        (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))
        assert run_segment(segment_id) == "success"
    return ws


@pytest.fixture(scope="module")
def fab_env(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An AIRFLOW_HOME under FAB, set up as compose's init does, with the module's users."""
    home = tmp_path_factory.mktemp("fab-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__AUTH_MANAGER": FAB,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__FAB__CACHE_TTL": "0",  # a user's permissions as the DB has them, at once
    }
    airflow(env, "db", "migrate")
    report = access_sync(env)
    assert sorted(report["roles_created"]) == ["analysts", "crm-a", "crm-b"]
    airflow(env, "dags", "reserialize")
    # As the README says (one `airflow` process a user is slow: the others in one process)
    airflow(env, "users", "create", "--username", "ana", "--role", USERS["ana"],
            "--firstname", "Ana", "--lastname", "Test", "--email", "ana@example.com",
            "--password", password("ana"))  # fmt: skip
    others = {user: (role, password(user)) for user, role in USERS.items() if user != "ana"}
    python(env, ADD_USERS, json.dumps(others))
    return env


def airflow(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout


ADD_USERS = """
import json, sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

with get_application_builder() as appbuilder:
    for user, (role, password) in json.loads(sys.argv[1]).items():
        made = appbuilder.sm.add_user(
            user, user, "Test", f"{user}@example.com", appbuilder.sm.find_role(role), password
        )
        assert made, user
"""


def python(env: dict[str, str], code: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def access_sync(env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "include.orchestration.access", "sync", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def server(fab_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    log_path = tmp_path_factory.mktemp("api-server") / "api-server.log"
    with airflow_api_server(log_path, **fab_env) as url:
        yield Airflow(url, Path(fab_env["AIRFLOW_HOME"]), log_path)


@pytest.fixture(scope="module")
def base(server: Airflow) -> str:
    return server.url


@pytest.fixture(scope="module")
def sessions(base: str) -> dict[str, requests.Session]:
    """Each user's Bearer token, from FAB's `POST /auth/token`."""
    sessions = {}
    for user in USERS:
        body = {"username": user, "password": password(user)}
        answer = requests.post(f"{base}/auth/token", json=body, timeout=30)
        assert answer.status_code == 201, answer.text
        sessions[user] = requests.Session()
        sessions[user].headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return sessions


def listed(session: requests.Session, base: str, **params) -> tuple[set[str], int]:
    answer = session.get(f"{base}/connector-segments/api/segments", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return {row["id"] for row in body["segments"]}, body["total"]


@pytest.mark.parametrize("user", USERS)
def test_each_user_lists_exactly_its_segments(base, sessions, user):
    session = sessions[user]
    assert listed(session, base) == (SEES[user], len(SEES[user]))
    # `total` counts what the user may see, whatever the page or the filter
    page, total = listed(session, base, limit=1)
    assert (len(page), total) == (1, len(SEES[user]))
    crm = {s for s in SEES[user] if s.startswith("crm_")}
    assert listed(session, base, q="crm") == (crm, len(crm))
    for segment_id in SEGMENTS:
        assert listed(session, base, id=segment_id)[1] == (segment_id in SEES[user])
    rows = session.get(f"{base}/connector-segments/api/segments", timeout=30).json()["segments"]
    assert {row["id"] for row in rows if row["may_trigger"]} == ACTS[user]


@pytest.mark.parametrize("user", USERS)
def test_every_segment_route_answers_404_for_a_segment_the_user_cannot_see(base, sessions, user):
    session = sessions[user]
    for route in READS:
        missing = session.get(f"{base}/connector-segments/api/segments/nope{route}", timeout=30)
        assert missing.status_code == 404, route
        for segment_id in SEGMENTS:
            url = f"{base}/connector-segments/api/segments/{segment_id}{route}"
            answer = session.get(url, timeout=30)
            if segment_id in SEES[user]:
                assert answer.status_code == 200, (segment_id, route, answer.text)
            else:  # as for a segment that does not exist: its existence is not disclosed
                assert answer.status_code == 404, (segment_id, route)
                expected = missing.json()["detail"].replace("nope", segment_id)
                assert answer.json()["detail"] == expected


@pytest.mark.parametrize("user", USERS)
def test_an_action_is_404_unseen_403_read_only_and_allowed_to_act(base, sessions, user):
    session = sessions[user]
    for segment_id in SEGMENTS:
        for action in ("refresh", "send", "approve", "restore"):
            # Approve on a Ready segment is refused (409) only once the user may act: the
            # permission is checked first, so no run is triggered here.
            body = {"version": 1} if action == "restore" else {}
            url = f"{base}/connector-segments/api/segments/{segment_id}/{action}"
            if action != "approve" and segment_id in ACTS[user]:
                continue  # would trigger a run: one is triggered below
            answer = session.post(url, json=body, timeout=30)
            if segment_id not in SEES[user]:
                assert answer.status_code == 404, (segment_id, action)
                missing = session.post(url.replace(segment_id, "nope"), json=body, timeout=30)
                expected = missing.json()["detail"].replace("nope", segment_id)
                assert (missing.status_code, answer.json()["detail"]) == (404, expected)
            elif segment_id not in ACTS[user]:
                assert answer.status_code == 403, (segment_id, action)
                assert f"{user} may not trigger runs" in answer.json()["detail"]
            else:
                assert answer.status_code == 409, (segment_id, action, answer.text)
                assert "is not Held" in answer.json()["detail"]


def test_a_team_members_action_is_a_run_and_an_audit_entry_under_their_name(base, sessions):
    answer = sessions["ana"].post(
        f"{base}/connector-segments/api/segments/crm_a_mail/refresh", json={}, timeout=30
    )
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["dag_run_id"]
    dag_id = "connector_segment_crm_a_mail"
    root = sessions["root"]
    run = root.get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=30).json()
    assert run["triggering_user_name"] == "ana"
    assert run["note"] == "Refresh by ana from the Connector Segments page"
    logs = root.get(
        f"{base}/api/v2/eventLogs",
        params={"dag_id": dag_id, "event": "trigger_dag_run"},
        timeout=30,
    ).json()["event_logs"]
    (logged,) = [e for e in logs if e["run_id"] == run_id]
    assert logged["owner"] == "ana"
    # The team sees its own run as it would any other; the other team does not see it.
    assert sessions["ana"].get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=30).ok
    other = sessions["ben"].get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=30)
    assert other.status_code in (403, 404)


@pytest.mark.parametrize("user", USERS)
def test_airflows_own_dag_list_shows_the_same_segments(base, sessions, user):
    answer = sessions[user].get(
        f"{base}/api/v2/dags", params={"dag_id_pattern": "connector_segment_"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    dag_ids = [d["dag_id"] for d in answer.json()["dags"]]  # the pattern is a LIKE %...%
    shown = {d.removeprefix("connector_segment_") for d in dag_ids if d != STALE_CHECK}
    assert shown == SEES[user]


@pytest.mark.parametrize("user", ["ana", "ada"])
def test_a_team_role_opens_the_page_and_nothing_else(base, sessions, user):
    session = sessions[user]
    assert session.get(f"{base}/connector-segments/", timeout=30).status_code == 200
    plugins = session.get(f"{base}/api/v2/plugins", timeout=30)  # the UI's nav entry
    assert plugins.status_code == 200
    assert "connector_segments" in {p["name"] for p in plugins.json()["plugins"]}
    for path in ("connections", "variables", "pools", "config", "providers", "importErrors"):
        assert session.get(f"{base}/api/v2/{path}", timeout=30).status_code == 403, path
    # another team's DAG, through Airflow's own API
    assert (
        session.get(f"{base}/api/v2/dags/connector_segment_unshared", timeout=30).status_code == 403
    )


def test_sync_is_idempotent_and_follows_the_yamls(base, fab_env, sessions, store):
    assert access_sync(fab_env) == {
        "roles_created": [],
        "roles_reset": [],
        "segments_with_access": 3,
        "dags_synced": 3,
        "invalid": [],
    }
    # Permissions added by hand to a team role are taken away again: on Airflow's resources,
    # and on a DAG that is no segment of theirs.
    airflow(fab_env, "roles", "add-perms", "crm-a", "-r", "Connections", "-a", "can_read")
    airflow(fab_env, "roles", "add-perms", "crm-a", "-r", f"DAG:{STALE_CHECK}", "-a", "can_read")
    stale_check = f"{base}/api/v2/dags/{STALE_CHECK}"
    assert sessions["ana"].get(f"{base}/api/v2/connections", timeout=30).status_code == 200
    assert sessions["ana"].get(stale_check, timeout=30).status_code == 200
    assert access_sync(fab_env)["roles_reset"] == ["crm-a"]
    assert sessions["ana"].get(f"{base}/api/v2/connections", timeout=30).status_code == 403
    assert sessions["ana"].get(stale_check, timeout=30).status_code == 403
    # A segment whose `access` no longer names the team disappears for it at the next sync.
    path = store / "segments" / "crm_a_mail.yaml"
    original = path.read_text()
    path.write_text(yaml.safe_dump({**yaml.safe_load(original), "access": {"crm-b": "read"}}))
    try:
        report = access_sync(fab_env)
        assert report["dags_synced"] == 3
        assert listed(sessions["ana"], base) == ({"crm_a_push"}, 1)
        assert listed(sessions["ben"], base) == ({"crm_b_push", "crm_a_mail"}, 2)
        details = f"{base}/connector-segments/api/segments/crm_a_mail"
        assert sessions["ana"].get(details, timeout=30).status_code == 404
    finally:
        path.write_text(original)
        access_sync(fab_env)
    assert listed(sessions["ana"], base) == (SEES["ana"], 2)


def test_a_team_member_logs_in_and_the_page_lists_their_segments(server, chromium_installed):
    """FAB's login form, the nav entry, the page in its iframe: what the team role's
    permissions must be enough for."""
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        log_in(driver, server, "ana", password("ana"))
        open_page(driver, server)

        def rows() -> set[str]:
            found = driver.find_elements(By.CSS_SELECTOR, "table.segments tbody tr[data-id]")
            return {tr.get_attribute("data-id") for tr in found}

        assert wait_for(rows, 30, "the table's rows") == SEES["ana"]
        driver.switch_to.default_content()
        screenshot(driver, "access-team-member")


def test_a_yaml_naming_a_role_not_synced_yet_breaks_no_other_dag(base, fab_env, sessions, store):
    """Airflow's DAG processor refuses an access_control naming a missing role with an import
    error on the whole shard file (every DAG of it stale): until the sync has made the role,
    that DAG carries none, and its shard loads."""
    from include.config.segments import shard_of
    from include.orchestration.segment_dags import SHARDS

    shard = shard_of("crm_a_push", SHARDS)
    late = next(f"late_{n}" for n in range(1000) if shard_of(f"late_{n}", SHARDS) == shard)
    path = store / "segments" / f"{late}.yaml"
    config = yaml.safe_load((store / "segments" / "crm_a_push.yaml").read_text())
    path.write_text(yaml.safe_dump({**config, "id": late, "access": {"crm-c": "act"}}))
    root = sessions["root"]

    def dags() -> dict[str, dict]:
        answer = root.get(f"{base}/api/v2/dags", params={"dag_id_pattern": "segment_"}, timeout=30)
        return {d["dag_id"]: d for d in answer.json()["dags"]}

    try:
        airflow(fab_env, "dags", "reserialize")
        assert "No data found" in airflow(fab_env, "dags", "list-import-errors", "-o", "plain")
        shown = dags()
        assert {f"connector_segment_{s}" for s in (*SEGMENTS, late)} <= set(shown)
        assert not any(d["is_stale"] or d["has_import_errors"] for d in shown.values())
        assert access_sync(fab_env)["roles_created"] == ["crm-c"]
        airflow(fab_env, "dags", "reserialize")
        assert "No data found" in airflow(fab_env, "dags", "list-import-errors", "-o", "plain")
    finally:
        path.unlink()
        airflow(fab_env, "dags", "reserialize")
    assert listed(sessions["ana"], base) == (SEES["ana"], 2)


def test_sync_refuses_without_fabs_auth_manager(airflow_db):
    """The embedded default (SimpleAuthManager): `access` has no effect, and the sync says so
    instead of writing FAB tables nobody reads."""
    done = subprocess.run(
        [sys.executable, "-m", "include.orchestration.access", "sync"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    assert "applies under FAB only" in done.stderr
