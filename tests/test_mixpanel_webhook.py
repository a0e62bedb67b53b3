"""The `mixpanel_webhook` source end to end, over real HTTP.

The webhook app runs under uvicorn on 127.0.0.1 (the plugin's app, mounted by Airflow's API
server in production: one test starts the real `airflow api-server` too); a fake Mixpanel
sender delivers spec-shaped cohort-sync calls; DAGs run through `dag.test()` and results are
read through the CLI, as on-call would.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import uvicorn
import yaml

from include.ui.app import webhook_app
from include.webhooks.app import DEFAULT_MAX_BODY, MAX_BODY_ENV, dispose_states
from tests.conftest import (
    LogRecorder,
    airflow_api_server,
    cli,
    cli_json,
    run_segment,
    sqlite_conn,
    use_pg_netmera_db,
    write_users,
)
from tests.fakes.mixpanel_webhook_sender import MixpanelWebhookSender, member, members

SEGMENT = "mp_push"
CONN_ID = "mixpanel_push"
LOGIN, PASSWORD = "mixpanel-sync", "pw-7Hq2-never-in-logs"
MAX_BODY = 512 * 1024  # small enough to test 413 quickly, big enough for 1000 members
# Netmera users nm-1..nm-3000 whose extId is the Mixpanel distinct id mp-<i>.
USERS = [(f"nm-{i}", f"mp-{i}", None, None, f"inst-{i}", True) for i in range(1, 3001)]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook_url() -> Iterator[str]:
    """The webhook app under uvicorn on an ephemeral port, in a background thread."""
    config = uvicorn.Config(
        webhook_app(max_body_bytes=MAX_BODY), host="127.0.0.1", port=0, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/webhooks/mixpanel"
    server.should_exit = True
    thread.join(10)
    dispose_states()


def write_segment(ws: Path, segment_id: str = SEGMENT, source: dict | None = None) -> None:
    config = {
        "id": segment_id,
        "name": "Mixpanel push",
        "description": "Cohort pushed by Mixpanel's custom webhook",
        "schedule": None,
        "source": source or {"type": "mixpanel_webhook", "conn_id": CONN_ID},
        "user_key": "mixpanel_distinct_id",
        "identifiers": [
            {"field": "mixpanel_distinct_id", "kind": "external_id"},
            {"field": "email", "kind": "email"},
            {"field": "phone_number", "kind": "msisdn"},
        ],
        "default_region": "TR",
        "guardrails": {"max_shrink": None, "max_growth": None},
    }
    if config["source"]["type"] != "mixpanel_webhook":
        config["user_key"] = "uid"
        config["identifiers"] = [{"field": "uid", "kind": "external_id"}]
    (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`netmera_db` (user table + segment store + staged webhook state) on SQLite or PostgreSQL."""
    if request.param == "postgres":
        use_pg_netmera_db(monkeypatch, request.getfixturevalue("pg_database"), USERS)
    else:
        write_users(workspace / "netmera.db", USERS)
    return request.param


@pytest.fixture
def segment(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A mixpanel_webhook segment and its Basic-auth Connection (an AIRFLOW_CONN_ variable)."""
    write_segment(workspace)
    write_segment(workspace, "from_file", {"type": "file", "path": "audience.csv"})
    connection = {"conn_type": "http", "login": LOGIN, "password": PASSWORD}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    yield workspace
    dispose_states()


@pytest.fixture
def sender(webhook_url: str, segment: Path) -> MixpanelWebhookSender:
    return MixpanelWebhookSender(f"{webhook_url}/{SEGMENT}", auth=(LOGIN, PASSWORD))


# -- helpers ------------------------------------------------------------------------------------


def netmera_ids(ids) -> list[str]:
    return sorted(f"nm-{i}" for i in ids)


def published(capsys) -> dict[str, Any]:
    details = cli_json(capsys, "details", SEGMENT)
    code, out, _ = cli(capsys, "members", SEGMENT)
    details["members"] = out.split() if code == 0 else None
    return details


def staged() -> dict[str, Any]:
    """Everything staged for the segment: sessions, pages and member rows."""
    from include.orchestration.connections import netmera_database
    from include.store.webhook_tables import webhook_members, webhook_pages
    from include.webhooks.state import WebhookState

    db = netmera_database()
    state = WebhookState(db.engine)
    with db.engine.connect() as conn:
        pages = conn.execute(sa.select(webhook_pages).order_by(*webhook_pages.primary_key)).all()
        rows = conn.execute(sa.select(sa.func.count()).select_from(webhook_members)).scalar()
    return {"sessions": state.sessions(SEGMENT), "pages": pages, "member_rows": rows}


def audience_batches(batch_rows: int = 50_000) -> list:
    from include.config.segments import find_segment
    from include.connectors.mixpanel_webhook import read_mixpanel_webhook
    from include.orchestration.connections import webhook_state

    return list(read_mixpanel_webhook(find_segment(SEGMENT), webhook_state(), batch_rows))


def audience() -> list[dict[str, Any]]:
    return [row for batch in audience_batches() for row in batch.to_pylist()]


def assert_no_secrets(logs: LogRecorder, sender: MixpanelWebhookSender) -> None:
    token = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    texts = [logs.text, *(r.text for r in sender.responses)]
    for text in texts:
        assert PASSWORD not in text
        assert token not in text
        assert "@example.com" not in text  # members' emails: personal data


# -- acceptance ---------------------------------------------------------------------------------


@pytest.mark.dagrun
def test_out_of_order_export_with_repeats_then_diffs_publishes_the_expected_set(
    backend, sender, logs, capsys
):
    export = sender.session("members", members(range(1, 2501)))  # pages of 1000, 1000, 500
    sender.deliver(export, order=[3, 1, 3])  # out of order, page 3 delivered twice
    [session] = staged()["sessions"]
    assert (session["pages_received"], session["completed_at"]) == (2, None)
    sender.deliver(export, order=[2, 1])  # completes; page 1 again changes nothing

    removed = sender.remove(members(range(1, 101)))
    sender.add(members([*range(2501, 2601), *range(1, 11)]))  # a later add re-adds 1..10
    sender.remove([member(2600)])  # and a later remove wins over an earlier add
    sender.deliver(removed)  # Mixpanel re-delivers an old diff page: still nothing changes

    assert "session complete" in logs.text  # the log check below is not vacuous
    assert run_segment(SEGMENT) == "success"
    expected = [*range(1, 11), *range(101, 2600)]
    after = published(capsys)
    assert after["members"] == netmera_ids(expected)
    assert (after["connector_users"], after["netmera_users"]) == (len(expected), len(expected))
    assert after["matched_by"]["external_id"] == len(expected)
    assert_no_secrets(logs, sender)


def test_connector_streams_the_current_audience_as_strings_and_drops_superseded_state(
    backend, sender, logs
):
    odd = member(7, phone_number=905550000007, plan={"tier": "gold"}, score=12.5)
    del odd["email"]
    sender.export([*members(range(1, 7)), odd], order=[1])
    sender.add([member(8, first_name="Late", phone_number=None)])
    batches = audience_batches(batch_rows=3)
    assert [b.num_rows for b in batches] == [3, 3, 2]  # streamed, batch by batch
    assert {str(f.type) for b in batches for f in b.schema} == {"string"}
    rows = [row for batch in batches for row in batch.to_pylist()]
    assert [r["mixpanel_distinct_id"] for r in rows] == [f"mp-{i}" for i in range(1, 9)]
    assert list(rows[0]) == ["mixpanel_distinct_id", "email", "phone_number"]  # source_fields
    assert rows[0]["phone_number"] == "+905550000001"
    # A missing field is null, a number becomes its text.
    assert rows[6] == {
        "mixpanel_distinct_id": "mp-7",
        "email": None,
        "phone_number": "905550000007",
    }
    assert rows[7]["phone_number"] is None
    # Every exported property is kept in the staged state, not only the identifier fields.
    from include.orchestration.connections import netmera_database
    from include.store.webhook_tables import webhook_members

    engine = netmera_database().engine
    with engine.connect() as conn:
        kept = conn.execute(
            sa.select(webhook_members.c.properties).where(webhook_members.c.distinct_id == "mp-7")
        ).scalar_one()
    engine.dispose()
    assert kept == {"phone_number": 905550000007, "plan": {"tier": "gold"}, "score": 12.5} | {
        k: v for k, v in member(7).items() if k in ("first_name", "last_name")
    }

    # A newer complete export replaces everything before it; its older state is deleted.
    stale_add = sender.session("add_members", [member(99)])
    sender.deliver(stale_add)  # complete diff, arrived before the new export
    late = sender.session("add_members", members([97, 98]) * 600)  # 2 pages; only page 1 now
    sender.deliver(late, order=[1])
    sender.export(members(range(20, 25)))
    assert [r["mixpanel_distinct_id"] for r in audience()] == [f"mp-{i}" for i in range(20, 25)]
    state = staged()
    assert state["member_rows"] == 5
    assert [s["superseded_at"] is None for s in state["sessions"]] == [False] * 4 + [True]
    # Mixpanel retrying pages of a superseded diff: acknowledged, ignored, no resurrection.
    sender.deliver(late, order=[2, 1])
    sender.deliver(stale_add)
    assert [r["mixpanel_distinct_id"] for r in audience()] == [f"mp-{i}" for i in range(20, 25)]
    assert staged() == state
    assert_no_secrets(logs, sender)


def test_concurrent_and_repeated_deliveries_store_each_page_once(backend, sender):
    export = sender.session("members", members(range(1, 4001)))  # 4 pages
    order = [1, 2, 3, 4] * 3
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda n: sender.post(export.page(n)), order))
    assert {(r.status_code, r.json()["status"]) for r in replies} == {(200, "success")}
    [session] = staged()["sessions"]
    assert (session["pages_received"], session["total_pages"]) == (4, 4)
    assert session["completed_at"] is not None
    assert staged()["member_rows"] == 4000
    assert len(audience()) == 4000


@pytest.mark.dagrun
def test_rejected_calls_change_nothing(workspace, sender, webhook_url, logs, capsys):
    write_users(workspace / "netmera.db", USERS)
    export = sender.export(members(range(1, 1501)))
    before = staged()
    url = sender.url
    page = export.page(1)

    def call(body: Any = page, target: str = url, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("auth", (LOGIN, PASSWORD))
        kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = requests.post(target, data=data, timeout=30, **kwargs)
        sender.responses.append(response)
        return response

    def expect(response: requests.Response, status: int, action: str | None = None) -> None:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["status"] == "failure" and body["action"] == action
        assert body["error"]["code"] == status and body["error"]["message"]

    # Credentials: wrong password, wrong login, none, another scheme, garbage.
    for auth in [(LOGIN, "wrong"), ("someone", PASSWORD), None]:
        response = call(auth=auth)
        expect(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    for header in ["Bearer abc", "Basic %%%", "Basic " + base64.b64encode(b"no-colon").decode()]:
        expect(call(auth=None, headers={"Authorization": header}), 401)

    # Unknown segment, invalid id, a segment that is not pushed by Mixpanel: before
    # authentication nothing tells them from wrong credentials (tests/test_hostile_webhook.py).
    for target in ["nobody", "Bad-Id", "from_file", "..%2Fsegments"]:
        response = call(target=f"{webhook_url}/{target}")
        expect(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")

    # Not declared JSON: a cross-site form could send it.
    expect(call(headers={"Content-Type": "text/plain"}), 415)

    # Shape: every rule, with the offending values (personal data) kept out of the reply.
    def with_params(**changes: Any) -> dict:
        return {**page, "parameters": {**page["parameters"], **changes}}

    info = {"total_pages": 2, "page_count": 1}
    for body, action in [
        (b"{not json", None),
        (b"[]", None),
        ({**page, "action": "delete_everyone"}, None),
        (with_params(page_info={"total_pages": 2, "page_count": 0}), "members"),
        (with_params(page_info={"total_pages": 2, "page_count": 3}), "members"),
        (with_params(page_info={"total_pages": 0, "page_count": 1}), "members"),
        (with_params(page_info={"total_pages": "2", "page_count": 1}), "members"),
        (with_params(mixpanel_session_id=""), "members"),
        (with_params(members=members(range(1, 1002)), page_info=info), "members"),
        (with_params(members=[{"email": "no-id@example.com"}], page_info=info), "members"),
        (with_params(members=[{"mixpanel_distinct_id": "  "}], page_info=info), "members"),
        (with_params(members=[{"mixpanel_distinct_id": 42}], page_info=info), "members"),
        (with_params(members="person1@example.com", page_info=info), "members"),
        (with_params(page_info={"total_pages": 5, "page_count": 2}), "members"),  # conflict
    ]:
        expect(call(body), 400, action)

    # Oversize: by Content-Length, and while reading a chunked body that declares none.
    huge = json.dumps(with_params(padding="x" * MAX_BODY)).encode()
    expect(call(huge), 413)
    chunks = (huge[i : i + 65536] for i in range(0, len(huge), 65536))
    response = requests.post(
        url,
        data=chunks,
        auth=(LOGIN, PASSWORD),
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    sender.responses.append(response)
    expect(response, 413)

    assert staged() == before
    assert "webhook call refused" in logs.text
    assert run_segment(SEGMENT) == "success"
    assert published(capsys)["members"] == netmera_ids(range(1, 1501))
    assert_no_secrets(logs, sender)


def test_missing_or_incomplete_connection_is_a_401_and_the_log_says_why(sender, monkeypatch, logs):
    """A caller learns nothing of the configuration; on-call reads the cause in the log."""
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({"conn_type": "http", "password": PASSWORD})
    )
    response = sender.post(sender.session("members", members([1])).page(1))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "wrong or missing credentials"
    assert f"Connection {CONN_ID!r} needs both a login and a password" in logs.text
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    response = sender.post(sender.session("members", members([1])).page(1))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "wrong or missing credentials"
    assert f"Connection {CONN_ID!r} (source.conn_id) is not defined" in logs.text
    assert CONN_ID not in "".join(r.text for r in sender.responses)
    assert staged()["sessions"] == []
    assert_no_secrets(logs, sender)


@pytest.mark.dagrun
def test_incomplete_export_is_never_published_and_completion_triggers_one_run(
    workspace, webhook_url, segment, logs, capsys
):
    # Its own segment id: the trigger test needs a DAG with no queued run from other tests.
    segment_id = "mp_trigger"
    write_segment(workspace, segment_id)
    write_users(workspace / "netmera.db", USERS)
    sender = MixpanelWebhookSender(f"{webhook_url}/{segment_id}", auth=(LOGIN, PASSWORD))

    # Nothing complete yet: the run fails in extract, nothing is published. The run also makes
    # the DAG known to the metadata DB, so that the webhook can trigger it.
    sender.deliver(sender.session("members", members(range(1, 1001)) * 2), order=[1])
    assert run_segment(segment_id) == "failed"
    details = cli_json(capsys, "details", segment_id)
    assert (details["status"], details["current_version"]) == ("Failed", None)
    assert details["runs"][0]["failed_step"] == "extract"
    assert "no complete Mixpanel `members` export" in details["runs"][0]["error"]

    export = sender.session("members", members(range(1, 2001)))
    sender.deliver(export, order=[2])
    assert webhook_runs(segment_id) == []  # incomplete: no trigger
    sender.deliver(export, order=[1])
    [run] = webhook_runs(segment_id)
    assert (run["state"], run["triggered_by"], run["conf"]) == ("queued", "rest_api", {})
    sender.deliver(export, order=[1, 2])  # repeated pages trigger nothing
    sender.add(members([2001]))  # complete, but a run is already queued: no pile-up
    assert webhook_runs(segment_id) == [run]

    assert run_segment(segment_id) == "success"
    assert cli(capsys, "members", segment_id)[1].split() == netmera_ids(range(1, 2002))

    # A newer export that is not complete yet is not published: the audience stays as it was.
    sender.deliver(sender.session("members", members(range(5000, 7000))), order=[1])
    assert run_segment(segment_id) == "success"
    details = cli_json(capsys, "details", segment_id)
    assert (details["runs"][0]["added"], details["runs"][0]["removed"]) == (0, 0)
    assert cli(capsys, "members", segment_id)[1].split() == netmera_ids(range(1, 2002))
    assert_no_secrets(logs, sender)


def webhook_runs(segment_id: str) -> list[dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.scalars(
            sa.select(DagRun).where(
                DagRun.dag_id == f"connector_segment_{segment_id}",
                DagRun.run_id.like("mixpanel_webhook__%"),
            )
        ).all()
        return [
            {
                "run_id": r.run_id,
                "state": str(r.state),
                "triggered_by": r.triggered_by.value,
                "conf": r.conf,
            }
            for r in runs
        ]


def test_body_limit_defaults_to_8_mib_and_is_configurable(monkeypatch):
    monkeypatch.delenv(MAX_BODY_ENV, raising=False)
    assert webhook_app().state.max_body_bytes == DEFAULT_MAX_BODY == 8 * 1024 * 1024
    monkeypatch.setenv(MAX_BODY_ENV, "1024")
    assert webhook_app().state.max_body_bytes == 1024


# -- the real API server ------------------------------------------------------------------------


@pytest.mark.dagrun
def test_airflow_api_server_mounts_the_plugin_and_reads_the_connection_from_the_db(
    segment: Path, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The plugin as Airflow loads it, with the Connection stored in the metadata DB (the
    SDK's lookup must reach it inside the API server), and the real auth middleware around."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    conn_id = "mixpanel_push_db"
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()
        session.add(Connection(conn_id=conn_id, conn_type="http", login=LOGIN, password=PASSWORD))
    write_segment(segment, "mp_server", {"type": "mixpanel_webhook", "conn_id": conn_id})
    write_users(segment / "netmera.db", USERS)
    assert run_segment("mp_server") == "failed"  # no export yet; makes the DAG known

    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)
    log_path = tmp_path / "api-server.log"
    with airflow_api_server(
        log_path, AIRFLOW_CONN_NETMERA_DB=sqlite_conn(segment / "netmera.db")
    ) as base:
        sender = MixpanelWebhookSender(
            f"{base}/connector-segments/webhooks/mixpanel/mp_server", auth=(LOGIN, PASSWORD)
        )
        sender.export(members(range(1, 11)))
        [run] = webhook_runs("mp_server")  # triggered from inside the API server
        assert (run["state"], run["triggered_by"]) == ("queued", "rest_api")
        call = sender.session("members", members([1])).page(1)
        assert sender.post(call, auth=(LOGIN, "wrong")).status_code == 401
        assert sender.post(call, auth=None).status_code == 401
    assert PASSWORD not in log_path.read_text(errors="replace")
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()


@pytest.mark.dagrun
def test_two_hundred_rounds_of_diffs_stay_compacted_and_the_audience_exact(backend, sender, capsys):
    """Mixpanel's every-30-minutes diffs, 200 rounds of them: each publish folds them into
    the export, so the staged state stays the audience plus a bounded number of tombstones,
    and the audience stays exactly what the diffs say."""
    from include.orchestration.connections import webhook_state
    from include.webhooks.state import TOMBSTONES_KEPT

    rng = random.Random(13)
    sender.export(members(range(1, 1001)))
    expected = set(range(1, 1001))
    late = sender.session("add_members", members(range(3001, 4201)))  # two pages
    for round_ in range(1, 201):
        added = set(rng.sample(range(1, 3001), 20))
        removed = set(rng.sample(sorted(expected | added), 15))
        sender.add(members(sorted(added)))
        if round_ == 100:  # its page 2 comes three rounds later
            sender.deliver(late, order=[1])
        if round_ == 101:  # arrives after `late` began, so it wins once `late` is complete
            removed |= set(range(3001, 3011))
        sender.remove(members(sorted(removed)))
        expected = (expected | added) - removed
        if round_ == 103:
            sender.deliver(late, order=[2])
            expected |= set(range(3011, 4201))
        if round_ % 50 == 0:
            assert run_segment(SEGMENT) == "success"  # publish, then compaction
            assert published(capsys)["members"] == netmera_ids(i for i in expected if i <= 3000)
        else:
            webhook_state().compact(SEGMENT)
        state = staged()
        live = [s for s in state["sessions"] if s["superseded_at"] is None]
        if 100 <= round_ < 103:  # folded up to the incomplete diff, which waits
            assert len(live) == 1 + 2 + 2 * (round_ - 100), round_
        else:
            assert len(live) == 1, round_  # the export alone: every diff is folded into it
            assert state["member_rows"] == len(expected), round_
            assert len(state["pages"]) == 1, round_
        assert len(state["sessions"]) <= 1 + TOMBSTONES_KEPT + 6, round_
        if round_ % 10 == 0 or 99 <= round_ <= 104:
            got = {int(r["mixpanel_distinct_id"].removeprefix("mp-")) for r in audience()}
            assert got == expected, round_
