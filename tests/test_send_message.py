"""Send Message and Message Report against a real HTTP server playing Netmera.

What must hold: each matched extId messaged exactly once per (version, message), whatever
fails in between (5xx, a killed worker), a re-trigger sends nothing and says why, Netmera's
refusals fail the send (not the segment), and the API key never shows up.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    cli,
    cli_json,
    netmera_conn,
    run_segment,
    use_pg_netmera_db,
    write_csv,
    write_users,
)
from tests.fakes import FakeNetmera
from tests.holdout import documented_holdout

pytestmark = pytest.mark.dagrun

KEY = "netmera-rest-key-7Hq"
SEGMENT = "buyers"
ADDRESSABLE = [f"ext-{i:05d}" for i in range(1, 2501)]  # 3 batches: 1000, 1000, 500


@pytest.fixture
def netmera(monkeypatch):
    with FakeNetmera(api_key=KEY) as fake:
        connect(monkeypatch, fake, KEY)
        yield fake
        assert fake.errors == []


def connect(monkeypatch, fake: FakeNetmera, key: str, **extra) -> None:
    settings = {"backoff_max": 0.1, "max_attempts": 3, **extra}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(fake, key, **settings))


# 2,550 Netmera users: 2,500 with an extId, 50 with an email but without one.
USERS = [(f"nm-{i}", f"ext-{i:05d}", None, None, None, True) for i in range(1, 2501)]
USERS += [(f"nm-{i}", None, f"u{i}@example.com", None, None, True) for i in range(2501, 2551)]


@pytest.fixture
def segment(workspace: Path) -> Path:
    """2,550 matched users: 2,500 with an extId, 50 matched by email but without one."""
    write_users(workspace / "netmera.db", USERS)
    rows = [[f"s{i}", f"ext-{i:05d}", ""] for i in range(1, 2501)]
    rows += [[f"s{i}", "", f"U{i}@example.com"] for i in range(2501, 2551)]
    write_csv(workspace / "audience.csv", ["uid", "ext", "email"], rows)
    config = {
        "id": SEGMENT,
        "name": "Buyers",
        "source": {"type": "file", "path": str(workspace / "audience.csv")},
        "user_key": "uid",
        "identifiers": [
            {"field": "ext", "kind": "external_id"},
            {"field": "email", "kind": "email"},
        ],
        "campaign": {"title": "Come back", "text": "Your cart misses you"},
    }
    (workspace / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    return workspace


def sent_batches(netmera: FakeNetmera) -> list[list[str]]:
    return [
        json.loads(r.body)["target"]["extId"]
        for r in netmera.requests_to(FakeNetmera.SEND)
        if r.status == 200
    ]


def batches_in_flight() -> int:
    """Send batches the ledger has marked in flight (a request out, its answer not recorded)."""
    import sqlalchemy as sa

    from include.orchestration.connections import netmera_database
    from include.store.tables import send_batches

    with netmera_database().engine.connect() as conn:
        query = sa.select(sa.func.count()).where(send_batches.c.status == "in_flight")
        return conn.execute(query).scalar_one()


def assert_exactly_once(netmera: FakeNetmera) -> None:
    counts = Counter(netmera.delivered())
    assert sorted(counts) == ADDRESSABLE
    assert set(counts.values()) == {1}


def test_refresh_with_send_message_sends_each_matched_ext_id_once(segment, netmera, capsys, logs):
    assert run_segment(SEGMENT, send_message=True) == "success"

    assert_exactly_once(netmera)
    assert [len(b) for b in sent_batches(netmera)] == [1000, 1000, 500]
    assert netmera.definitions[1]["title"] == "Come back"
    listed = {r["id"]: r for r in cli_json(capsys, "list")}
    assert listed[SEGMENT]["message_sent"] == 2500
    assert listed[SEGMENT]["status"] == "Ready"
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["recipients"], report["status"], report["version"]) == (2500, "sent", 1)
    assert report["not_addressable"] == 50  # matched by email, no extId to address them by
    assert (report["holdout"], report["holdout_percent"]) == (0, 0)  # no holdout by default
    assert (report["text"], report["sent_by"]) == ("Your cart misses you", "dag_test")
    assert report["notification_key"] == 1
    assert sum(s["sent"] + s["failed"] for s in report["stats"]) == 2500
    assert {s["platform"] for s in report["stats"]} <= {"IOS", "ANDROID"}
    assert KEY not in logs.text


def test_a_5xx_mid_run_then_a_task_retry_messages_everyone_exactly_once(
    segment, netmera, monkeypatch, capsys
):
    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRIES", "1")
    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRY_DELAY", "0")
    # Batch 1 fails three times: the client gives up, the task fails, its retry resumes.
    netmera.fail_next("500", path=FakeNetmera.SEND, after=1, times=3)
    assert run_segment(SEGMENT, send_message=True) == "success"
    assert_exactly_once(netmera)
    statuses = [r.status for r in netmera.requests_to(FakeNetmera.SEND)]
    assert statuses == [200, 500, 500, 500, 200, 200]
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["recipients"], report["status"]) == (2500, "sent")


def test_a_worker_killed_between_batches_resumes_without_messaging_anyone_twice(
    segment, netmera, capsys, monkeypatch
):
    assert run_segment(SEGMENT) == "success"  # publish first; the send runs on its own
    # Batch 1 is refused with a long Retry-After, honoured: the worker sleeps between batches.
    connect(monkeypatch, netmera, KEY, backoff_max=600)
    netmera.fail_next("429", path=FakeNetmera.SEND, after=1, retry_after=600)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow",
            "dags",
            "test",
            f"connector_segment_{SEGMENT}",
            "-c",
            json.dumps({"send_message": True, "refresh": False}),
        ],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Killed once the refused batch is back to pending (the worker is in Retry-After): a
        # kill between Netmera's answer and that write leaves it uncertain, by design.
        deadline = time.monotonic() + 120
        while not (
            any(r.status == 429 for r in netmera.requests_to(FakeNetmera.SEND))
            and batches_in_flight() == 0
        ):
            assert worker.poll() is None and time.monotonic() < deadline, "no 429 reached"
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert len(netmera.delivered()) == 1000

    assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
    assert_exactly_once(netmera)
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["recipients"], report["uncertain"], report["status"]) == (2500, 0, "sent")


def test_the_same_message_to_the_same_version_is_sent_once_unless_a_new_key_is_given(
    segment, netmera, capsys, logs
):
    assert run_segment(SEGMENT, send_message=True) == "success"
    assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
    assert_exactly_once(netmera)
    assert "already sent to version 1" in logs.text
    assert len(cli_json(capsys, "report", SEGMENT)) == 1

    assert run_segment(SEGMENT, send_message=True, refresh=False, send_key="again") == "success"
    assert Counter(netmera.delivered()) == Counter(ADDRESSABLE * 2)
    assert cli_json(capsys, "list")[0]["message_sent"] == 5000


def test_params_override_the_yaml_message_and_make_a_new_send(segment, netmera, capsys):
    assert run_segment(SEGMENT, send_message=True) == "success"
    assert (
        run_segment(
            SEGMENT,
            send_message=True,
            refresh=False,
            message_title="Last chance",
            message_text="20% off",
        )
        == "success"
    )
    assert [d["title"] for d in netmera.definitions.values()] == ["Come back", "Last chance"]
    assert [r["title"] for r in cli_json(capsys, "report", SEGMENT)] == ["Last chance", "Come back"]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("invalid_key", "invalid REST API key"), ("quota", "message quota exceeded")],
)
def test_netmera_refusing_fails_the_send_not_the_segment(
    segment, netmera, capsys, logs, fault, reason
):
    netmera.fail_next(fault, path=FakeNetmera.SEND, after=1)
    assert run_segment(SEGMENT, send_message=True) == "failed"

    (report,) = cli_json(capsys, "report", SEGMENT)
    assert report["status"] == "failed"
    assert reason in report["error"]
    assert report["recipients"] == 1000  # the first batch went out before the refusal
    details = cli_json(capsys, "details", SEGMENT)
    assert (details["status"], details["current_version"]) == ("Ready", 1)
    assert details["message_sent"] == 1000
    assert KEY not in logs.text + json.dumps(report)

    # Once Netmera accepts again, the same send resumes with the batches not yet sent.
    assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
    assert_exactly_once(netmera)


def test_a_wrong_api_key_is_reported_without_revealing_the_key(
    segment, netmera, monkeypatch, capsys, logs
):
    connect(monkeypatch, netmera, "wrong-key-Xy1")
    assert run_segment(SEGMENT, send_message=True) == "failed"
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert "invalid REST API key" in report["error"]
    assert netmera.delivered() == []
    assert "wrong-key-Xy1" not in logs.text + json.dumps(report)


def test_dry_run_shows_recipients_and_batches_and_sends_nothing(segment, netmera, capsys, logs):
    assert run_segment(SEGMENT) == "success"
    assert run_segment(SEGMENT, send_message=True, refresh=False, dry_run=True) == "success"
    assert netmera.requests == []
    assert "would send 'Come back' to 2500 users of version 1 in 3 batches" in logs.text
    assert cli_json(capsys, "report", SEGMENT) == []


def test_send_message_without_a_refresh_leaves_the_membership_alone(segment, netmera, capsys):
    assert run_segment(SEGMENT) == "success"
    before = cli_json(capsys, "details", SEGMENT)
    assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
    after = cli_json(capsys, "details", SEGMENT)
    assert len(after["runs"]) == len(before["runs"])  # no refresh run was recorded
    assert after["current_version"] == before["current_version"] == 1
    assert after["message_sent"] == 2500
    code, out, _ = cli(capsys, "report", SEGMENT)
    assert code == 0 and "2,500/2,500 sent" in out


def test_a_held_refresh_sends_nothing(segment, netmera, capsys, logs):
    assert run_segment(SEGMENT) == "success"
    rows = [[f"s{i}", f"ext-{i:05d}", ""] for i in range(1, 11)]  # 2,550 -> 10: shrinks
    write_csv(segment / "audience.csv", ["uid", "ext", "email"], rows)
    assert run_segment(SEGMENT, send_message=True) == "success"
    assert cli_json(capsys, "details", SEGMENT)["status"] == "Held"
    assert netmera.requests == []
    assert "this refresh did not publish (held)" in logs.text


def test_send_on_refresh_sends_each_published_version_once(segment, netmera, capsys):
    config = yaml.safe_load((segment / "segments" / f"{SEGMENT}.yaml").read_text())
    config["campaign"]["send_on_refresh"] = True
    (segment / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    assert run_segment(SEGMENT) == "success"
    assert_exactly_once(netmera)
    assert run_segment(SEGMENT, dry_run=True) == "success"  # a dry run publishes and sends nothing
    assert len(netmera.delivered()) == 2500
    assert [r["version"] for r in cli_json(capsys, "report", SEGMENT)] == [1]


# -- a send that fails before any batch leaves is still in Message Report ---------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("connection", "reason"),
    [
        (None, "Airflow Connection 'netmera_default' is not defined"),
        ({"conn_type": "http", "host": "http://127.0.0.1:9/rest/3.0"}, "REST API key"),
        ("unreachable", "createNotificationDefinition"),
    ],
    ids=["undefined", "without-key", "unreachable"],
)
def test_a_send_that_cannot_start_is_listed_failed_and_a_later_trigger_sends_it_once(
    segment, monkeypatch, capsys, connection, reason
):
    if connection is None:
        monkeypatch.delenv("AIRFLOW_CONN_NETMERA_DEFAULT", raising=False)
    else:
        if connection == "unreachable":  # nothing listens there: refused, retried, given up
            connection = {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{free_port()}/rest/3.0",
                "password": KEY,
                "extra": {"backoff_base": 0.01, "backoff_max": 0.1, "max_attempts": 2},
            }
        monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", json.dumps(connection))
    assert run_segment(SEGMENT, send_message=True) == "failed"

    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["status"], report["recipients"], report["version"]) == ("failed", 0, 1)
    assert report["planned"] == 2500 and report["notification_key"] is None
    assert reason in report["error"]
    assert cli_json(capsys, "details", SEGMENT)["status"] == "Ready"

    # The failed entry blocks nothing: once Netmera is there, the same send goes out, once.
    with FakeNetmera(api_key=KEY) as netmera:
        connect(monkeypatch, netmera, KEY)
        assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
        assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"  # refused
        assert_exactly_once(netmera)
        (report,) = cli_json(capsys, "report", SEGMENT)
        assert netmera.errors == []
    assert (report["status"], report["recipients"], report["error"]) == ("sent", 2500, None)


def test_a_send_with_no_message_is_listed_failed_and_blocks_no_later_send(segment, netmera, capsys):
    config = yaml.safe_load((segment / "segments" / f"{SEGMENT}.yaml").read_text())
    del config["campaign"]
    (segment / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    assert run_segment(SEGMENT) == "success"

    assert run_segment(SEGMENT, send_message=True, refresh=False) == "failed"
    assert run_segment(SEGMENT, send_message=True, refresh=False, message_title="Hi") == "failed"
    assert netmera.requests == []
    failures = cli_json(capsys, "report", SEGMENT)
    assert [(r["status"], r["recipients"], r["title"]) for r in failures] == [
        ("failed", 0, "Hi"),  # one entry per trigger, newest first
        ("failed", 0, ""),
    ]
    assert all("no message to send" in r["error"] for r in failures)

    message = {"message_title": "Hi", "message_text": "New in store"}
    assert run_segment(SEGMENT, send_message=True, refresh=False, **message) == "success"
    assert_exactly_once(netmera)
    assert [(r["status"], r["recipients"]) for r in cli_json(capsys, "report", SEGMENT)] == [
        ("sent", 2500),
        ("failed", 0),
        ("failed", 0),
    ]


def test_a_refusal_quoting_personal_data_is_stored_redacted(segment, netmera, capsys):
    netmera.fail_next("409", path=FakeNetmera.DEFINE, message="jane.doe@example.com is blocked")
    assert run_segment(SEGMENT, send_message=True) == "failed"
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert report["status"] == "failed" and report["recipients"] == 0
    assert report["error"] == "<email> is blocked"


def test_nothing_to_send_is_not_listed(segment, netmera, capsys, logs):
    # No published version yet: refused (a skip), not a failure, so not in Message Report.
    assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
    assert "has no published membership to message" in logs.text
    assert cli_json(capsys, "report", SEGMENT) == []


# -- a holdout group: recorded, never messaged, drawn once -------------------------------------

MEMBERS = {f"nm-{i}": f"ext-{i:05d}" if i <= 2500 else None for i in range(1, 2551)}


def yaml_holdout(segment: Path, percent: float) -> None:
    path = segment / "segments" / f"{SEGMENT}.yaml"
    config = yaml.safe_load(path.read_text())
    config["campaign"]["holdout_percent"] = percent
    path.write_text(yaml.safe_dump(config))


def recorded_holdout(send_key: str) -> list[str]:
    """The held-out user ids the send's ledger entry recorded."""
    from include.orchestration.connections import netmera_database

    ledger = netmera_database().sends
    return list(ledger.holdout_ids(ledger.find(send_key)["id"]))


def assert_everyone_else_once(netmera: FakeNetmera, held: set[str]) -> None:
    """Every addressable member but the held-out ones messaged, once; no held-out extId."""
    held_ext_ids = {MEMBERS[user] for user in held}
    assert held_ext_ids and not held_ext_ids & set(netmera.delivered())
    assert Counter(netmera.delivered()) == Counter(set(ADDRESSABLE) - held_ext_ids)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_yamls_holdout_is_recorded_and_never_messaged(
    segment, netmera, capsys, monkeypatch, request, store
):
    from include.campaign.send import Message

    if store == "postgres":  # the store migrated there, the draw streamed from there
        use_pg_netmera_db(monkeypatch, request.getfixturevalue("pg_database"), USERS)
    yaml_holdout(segment, 10)
    assert run_segment(SEGMENT, send_message=True) == "success"

    (report,) = cli_json(capsys, "report", SEGMENT)
    held = set(recorded_holdout(report["send_key"]))
    fingerprint = Message("Come back", "Your cart misses you").fingerprint
    assert held == documented_holdout(SEGMENT, 1, fingerprint, MEMBERS, 10)
    assert len(held) == 250  # floor(2,500 addressable x 10 / 100)
    assert_everyone_else_once(netmera, held)
    assert (report["recipients"], report["holdout"], report["holdout_percent"]) == (2250, 250, 10)
    members = cli_json(capsys, "details", SEGMENT)["netmera_users"]
    assert report["recipients"] + report["holdout"] + report["not_addressable"] == members == 2550
    assert cli_json(capsys, "list")[0]["message_sent"] == 2250
    code, out, _ = cli(capsys, "report", SEGMENT)
    assert code == 0
    assert "2,250/2,250 sent" in out and "held out 250 (10%)" in out and "by dag_test" in out

    # The trigger's holdout_percent wins over the YAML's: 0 holds nobody out.
    everyone = {"send_key": "all", "holdout_percent": 0}
    assert run_segment(SEGMENT, send_message=True, refresh=False, **everyone) == "success"
    latest = cli_json(capsys, "report", SEGMENT)[0]
    assert (latest["recipients"], latest["holdout"], latest["holdout_percent"]) == (2500, 0, 0)
    assert recorded_holdout(latest["send_key"]) == []


def test_a_send_refused_mid_way_resumes_with_the_holdout_it_drew(segment, netmera, capsys, logs):
    assert run_segment(SEGMENT) == "success"
    dry_run = {"send_message": True, "refresh": False, "dry_run": True}
    assert run_segment(SEGMENT, **dry_run, holdout_percent=10) == "success"
    assert "to 2250 users of version 1 in 3 batches, holding out 250 (10.0%)" in logs.text
    assert cli_json(capsys, "report", SEGMENT) == [] and netmera.requests == []

    netmera.fail_next("quota", path=FakeNetmera.SEND, after=1)  # the second batch is refused
    assert run_segment(SEGMENT, send_message=True, refresh=False, holdout_percent=10) == "failed"
    (failed,) = cli_json(capsys, "report", SEGMENT)
    assert (failed["status"], failed["recipients"], failed["holdout"]) == ("failed", 1000, 250)
    held = recorded_holdout(failed["send_key"])

    # Resumed with another percent: the holdout drawn at the start stands, nobody is drawn again.
    assert run_segment(SEGMENT, send_message=True, refresh=False, holdout_percent=20) == "success"
    assert recorded_holdout(failed["send_key"]) == held
    assert_everyone_else_once(netmera, set(held))
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["status"], report["recipients"], report["holdout"]) == ("sent", 2250, 250)
    assert report["holdout_percent"] == 10
    assert "keeps the holdout it was created with (10.0%, 250 members)" in logs.text


def test_a_send_in_flight_across_the_upgrade_to_0009_resumes_counting_as_before(
    segment, netmera, capsys
):
    """A send made before holdouts (its batches count extIds, one member each), failed after
    its first batch, is resumed by the upgraded store: nobody messaged twice, counts whole."""
    import sqlalchemy as sa

    from include.campaign.send import Message, send_key
    from tests.test_config_in_flight import alembic_to

    database = segment / "netmera.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    alembic_to(engine, "0008")
    key = send_key(SEGMENT, 1, Message("Come back", "Your cart misses you"), None)
    batches = [ADDRESSABLE[:1000], ADDRESSABLE[1000:2000], ADDRESSABLE[2000:]]
    now = "2026-01-01 00:00:00.000000"
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO cs_segments (id, name, description, source_type, status, "
            "current_version, connector_users, netmera_users, message_sent, updated_at) "
            "VALUES (?, 'Buyers', '', 'file', 'Ready', 1, 2550, 2550, 1000, ?)",
            (SEGMENT, now),
        )
        db.executemany(
            "INSERT INTO cs_members VALUES (?, 1, ?, 'external_id')",
            [(SEGMENT, user) for user in MEMBERS],
        )
        db.execute(
            "INSERT INTO cs_sends (id, segment_id, version, send_key, fingerprint, title, text, "
            "platforms, status, recipients, not_addressable, sent, uncertain, batches, "
            "airflow_run_id, error, created_at, updated_at) VALUES (1, ?, 1, ?, '', "
            "'Come back', 'Your cart misses you', '[\"IOS\", \"ANDROID\"]', 'failed', 2500, 50, "
            "1000, 0, 3, 'manual__before', 'quota', ?, ?)",
            (SEGMENT, key, now, now),
        )
        db.executemany(
            "INSERT INTO cs_send_batches VALUES (1, ?, ?, ?, ?, ?)",
            [
                (n, "sent" if n == 0 else "pending", len(b), json.dumps(b), now)
                for n, b in enumerate(batches)
            ],
        )

    assert run_segment(SEGMENT, send_message=True, refresh=False) == "success"
    assert sorted(netmera.delivered()) == ADDRESSABLE[1000:]
    (report,) = cli_json(capsys, "report", SEGMENT)
    assert (report["status"], report["recipients"], report["planned"]) == ("sent", 2500, 2500)
    assert (report["holdout"], report["holdout_percent"], report["sent_by"]) == (0, 0, None)
    assert cli_json(capsys, "list")[0]["message_sent"] == 2500

    alembic_to(engine, "0008", down=True)  # and back: the new columns go, the sends stay
    with sqlite3.connect(database) as db:
        assert "holdout" not in {row[1] for row in db.execute("PRAGMA table_info(cs_sends)")}
        assert db.execute("SELECT count(*) FROM cs_send_batches").fetchone() == (3,)
    engine.dispose()
