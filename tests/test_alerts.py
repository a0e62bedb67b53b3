"""Alerts on Failed, Held and Stale, through `dag.test()` runs, to a Slack incoming-webhook test
server and a local SMTP server on 127.0.0.1, both reached through Airflow Connections.

What must hold: each alert arrives once per failed run, held refresh or stale episode, naming
the segment, its status, the reason and the DAG, with no personal data and no secret; an alert
that cannot be delivered changes nothing about the run; no `alerts` block, no alert.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.conftest import DAGS, ROOT, cli, netmera_conn, run_segment, write_csv, write_users
from tests.fakes import FakeNetmera
from tests.fakes.slack import FakeSlackWebhook
from tests.fakes.smtp import FakeSmtp

pytestmark = pytest.mark.dagrun

USERS = [(f"nm-{i}", f"ext-{i}", None, None, None, True) for i in range(1, 6)]
ONCALL = ["oncall@example.com", "data-team@example.com"]
ALERTS = {"slack": {"conn_id": "slack_crm"}, "email": {"to": ONCALL, "conn_id": "smtp_alerts"}}
STALE_CHECK = "connector_segments_stale_check"


@pytest.fixture
def slack():
    with FakeSlackWebhook() as fake:
        yield fake
        assert fake.errors == []


@pytest.fixture
def smtp():
    with FakeSmtp() as fake:
        yield fake


@pytest.fixture
def ws(workspace: Path, slack: FakeSlackWebhook, smtp: FakeSmtp, monkeypatch) -> Path:
    """A workspace whose Connections point the alerts at the two test servers."""
    write_users(workspace / "netmera.db", USERS)
    webhook = {"conn_type": "slackwebhook", "host": f"{slack.base_url}/services"}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_CRM", json.dumps({**webhook, "password": slack.token}))
    mail = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp.port,
        "extra": {
            "from_email": "airflow@example.com",
            "disable_ssl": True,
            "disable_tls": True,
            "timeout": 5,
            "retry_limit": 0,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps(mail))
    return workspace


def write_segment(
    ws: Path,
    segment_id: str,
    alerts: dict | None,
    *,
    audience: str = "audience.csv",
    schedule: str | None = None,
    **more,
) -> None:
    config = {
        "id": segment_id,
        "name": f"{segment_id.title()} (test)",
        "schedule": schedule,
        "source": {"type": "file", "path": str(ws / audience)},
        "user_key": "uid",
        "identifiers": [{"field": "ext", "kind": "external_id"}],
        **({"alerts": alerts} if alerts is not None else {}),
        **more,
    }
    (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))


def write_audience(ws: Path, ids: range, name: str = "audience.csv") -> None:
    write_csv(ws / name, ["uid", "ext"], [[f"s{i}", f"ext-{i}"] for i in ids])


def store_row(ws: Path, segment_id: str) -> dict:
    with sqlite3.connect(ws / "netmera.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM cs_segments WHERE id = ?", (segment_id,)).fetchone())


def refresh_tries(segment_id: str) -> int:
    """The tries of a file segment's one task, `refresh`."""
    import sqlalchemy as sa
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.scalar(
            sa.select(sa.func.max(TaskInstance.try_number)).where(
                TaskInstance.dag_id == f"connector_segment_{segment_id}",
                TaskInstance.task_id == "refresh",
            )
        )


def run_stale_check() -> str:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS / f"{STALE_CHECK}.py")).get_dag(STALE_CHECK)
    return str(dag.test().state)


def test_a_failing_segment_alerts_slack_and_email_once_naming_it_and_the_error(
    ws, slack, smtp, monkeypatch, logs
):
    # A retried step that fails again: one alert for the run, not one per try or per task.
    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRIES", "1")
    monkeypatch.setenv("CONNECTOR_SEGMENTS_RETRY_DELAY", "0")
    # The missing file's name holds an email address: the recorded error, hence the alert,
    # carries `<email>` instead.
    write_segment(ws, "retried", ALERTS, audience="export-jane.doe@example.com.csv")
    assert run_segment("retried") == "failed"
    assert store_row(ws, "retried")["status"] == "Failed"
    assert refresh_tries("retried") == 2  # (this segment id is this test's alone)

    (message,) = slack.messages
    text = message["text"]
    assert text.startswith("*Connector segment Failed: Retried (test) [retried]*")
    assert "Reason: extract: " in text and "<email>" not in text  # Slack-escaped
    assert "&lt;email&gt;" in text and "jane.doe" not in text
    assert "Airflow: dags/connector_segment_retried/runs/manual__" in text

    (mail,) = smtp.messages
    assert (mail.mail_from, mail.rcpt_tos) == ("airflow@example.com", ONCALL)
    assert mail.subject == "Connector segment Failed: Retried (test) [retried]"
    assert "Reason: extract: " in mail.html and "&lt;email&gt;" in mail.html
    assert "jane.doe" not in mail.html
    assert "dags/connector_segment_retried/runs/manual__" in mail.html
    assert slack.token not in logs.text  # the webhook's path is its secret


def test_a_held_refresh_alerts_with_the_hold_reason(ws, slack, smtp):
    write_audience(ws, range(0))  # an empty source: Held unless allow_empty
    write_segment(ws, "empty", {**ALERTS, "on": ["held"]})
    assert run_segment("empty") == "success"  # held is not a failure
    assert store_row(ws, "empty")["status"] == "Held"

    (message,) = slack.messages
    assert message["text"].startswith("*Connector segment Held: Empty (test) [empty]*")
    assert "Reason: the source returned no users (allow_empty is false)" in message["text"]
    assert "approve=true" in message["text"]
    assert "Airflow: dags/connector_segment_empty/runs/manual__" in message["text"]
    (mail,) = smtp.messages
    assert mail.subject == "Connector segment Held: Empty (test) [empty]"
    assert "allow_empty is false" in mail.html


def test_no_alerts_block_or_an_event_not_asked_for_sends_nothing(ws, slack, smtp):
    write_segment(ws, "quiet", None, audience="missing.csv")
    write_segment(ws, "held_only", {**ALERTS, "on": ["held"]}, audience="missing.csv")
    assert run_segment("quiet") == "failed"
    assert run_segment("held_only") == "failed"
    assert store_row(ws, "held_only")["status"] == "Failed"
    assert slack.requests == [] and smtp.messages == []


def test_a_failed_send_message_or_dry_run_fails_no_segment_and_alerts_no_one(
    ws, slack, smtp, monkeypatch
):
    with FakeNetmera(api_key="key-1") as netmera:
        monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(netmera, "key-1"))
        netmera.fail_next("invalid_key", path=FakeNetmera.SEND)
        write_audience(ws, range(1, 4))
        write_segment(ws, "buyers", ALERTS, campaign={"title": "Hi", "text": "Come back"})
        assert run_segment("buyers", send_message=True) == "failed"
    assert store_row(ws, "buyers")["status"] == "Ready"  # Message Report says Send Failed

    write_segment(ws, "trial", ALERTS, audience="missing.csv")
    assert run_segment("trial", dry_run=True) == "failed"
    assert store_row(ws, "trial")["status"] is None  # a dry run leaves the status alone
    assert slack.requests == [] and smtp.messages == []


def test_an_undeliverable_alert_is_logged_and_changes_no_outcome(ws, slack, smtp, logs):
    # Held, with Slack resetting the connection and the SMTP server refusing the mail: the
    # refresh is still Held and its run a success.
    write_audience(ws, range(0))
    write_segment(ws, "empty", ALERTS)
    slack.fail_next("drop")
    smtp.refuse_next()
    assert run_segment("empty") == "success"
    assert store_row(ws, "empty")["status"] == "Held"
    assert "segment empty: Held alert by slack (slack_crm) not delivered" in logs.text
    assert "segment empty: Held alert by email (smtp_alerts) not delivered: SMTPDataError" in (
        logs.text
    )
    assert (slack.messages, smtp.messages, smtp.refused) == ([], [], 1)
    # One try: slack_sdk's retry logs the whole webhook URL, whose path is the secret.
    assert len(slack.requests) == 1

    # Slack answering 500: logged with Slack's answer, never the URL.
    slack.fail_next("500")
    assert run_segment("empty") == "success"
    assert "Held alert by slack (slack_crm) not delivered: AirflowException: Response body: " in (
        logs.text
    )
    assert len(smtp.messages) == 1

    # Failed, with Slack down: the run fails as it would anyway, the mail still goes out.
    slack.refuse_connections()
    write_segment(ws, "shoppers", ALERTS, audience="missing.csv")
    assert run_segment("shoppers") == "failed"
    assert store_row(ws, "shoppers")["status"] == "Failed"
    assert "segment shoppers: Failed alert by slack (slack_crm) not delivered: URLError" in (
        logs.text
    )
    assert [m.subject for m in smtp.messages] == [
        "Connector segment Held: Empty (test) [empty]",
        "Connector segment Failed: Shoppers (test) [shoppers]",
    ]
    assert slack.token not in logs.text


def _published_days_ago(ws: Path, segment_id: str, days: float) -> str:
    old = datetime.now(UTC) - timedelta(days=days)
    with sqlite3.connect(ws / "netmera.db") as db:
        db.execute(
            "UPDATE cs_segments SET last_update_date = ? WHERE id = ?",
            (old.strftime("%Y-%m-%d %H:%M:%S.%f"), segment_id),
        )
    return old.strftime("%Y-%m-%d %H:%M")


def test_the_stale_check_alerts_each_stale_episode_once(ws, slack, smtp):
    from airflow.dag_processing.dagbag import DagBag

    check = DagBag(dag_folder=str(DAGS / f"{STALE_CHECK}.py")).get_dag(STALE_CHECK)
    assert check.dag_display_name == "Connector Segments: stale check"
    assert {"connector-segment", "alerts"} <= set(check.tags) and check.doc_md

    write_audience(ws, range(1, 4))
    nightly = {"on": ["stale"], "slack": {"conn_id": "slack_crm"}}
    write_segment(ws, "nightly", nightly, schedule="0 2 * * *")
    write_segment(ws, "nightly_quiet", None, schedule="0 2 * * *")
    write_segment(ws, "manual", nightly)  # schedule null: never Stale
    for segment_id in ("nightly", "nightly_quiet", "manual"):
        assert run_segment(segment_id) == "success"
        _published_days_ago(ws, segment_id, 3)
    first = _published_days_ago(ws, "nightly", 3)

    assert run_stale_check() == "success"
    assert run_stale_check() == "success"  # the same episode: not again
    (message,) = slack.messages
    assert message["text"].startswith("*Connector segment Stale: Nightly (test) [nightly]*")
    assert f"Reason: Last Update Date {first} UTC: no successful refresh" in message["text"]
    assert "(0 2 * * *)" in message["text"]
    assert message["text"].endswith("Airflow: dags/connector_segment_nightly")

    # It recovers (a publish), the check finds nothing, then it goes stale again: a new episode.
    assert run_segment("nightly") == "success"
    assert run_stale_check() == "success"
    assert len(slack.messages) == 1
    second = _published_days_ago(ws, "nightly", 2)
    assert run_stale_check() == "success"
    assert len(slack.messages) == 2
    assert f"Last Update Date {second} UTC" in slack.messages[1]["text"]
    assert smtp.messages == []  # nightly asked for Slack only; the others for nothing


def test_invalid_alerts_are_refused_naming_the_file_and_field(workspace, capsys):
    cases = {
        "no_channel": ({"on": ["failed"]}, "field 'alerts': name at least one channel"),
        "bad_event": ({"on": ["late"], "slack": {}}, "field 'alerts.on.0': Input should be"),
        "typo": ({"slack": {"channel": "#crm"}}, "field 'alerts.slack.channel': unknown key"),
        "bad_to": ({"email": {"to": ["Ann <a@b.co>"]}}, "field 'alerts.email.to': entry 1"),
        "no_to": ({"email": {"conn_id": "smtp_default"}}, "field 'alerts.email.to': Field req"),
    }
    for segment_id, (alerts, _) in cases.items():
        write_segment(workspace, segment_id, alerts)
    # `on` unquoted is YAML 1.1's boolean true: still the key `on`.
    (workspace / "segments" / "unquoted.yaml").write_text(
        "id: unquoted\nname: Unquoted\nsource: {type: file, path: a.csv}\nuser_key: uid\n"
        "identifiers: [{field: uid, kind: external_id}]\n"
        "alerts: {on: [failed, stale], email: {to: [oncall@example.com]}}\n"
    )

    code, out, err = cli(capsys, "validate")
    assert code == 1
    for segment_id, (_, says) in cases.items():
        line = next(x for x in err.splitlines() if f"{segment_id}.yaml" in x)
        assert says in line, line
    assert "Ann" not in err  # an address is a person's: never quoted
    assert "unquoted.yaml" in out and "1 valid" in out

    from include.config.segments import find_segment

    assert find_segment("unquoted").alerts.on == ("failed", "stale")
    assert find_segment("unquoted").alerts.slack is None


def test_parsing_the_dags_loads_no_notifier(workspace):
    # Airflow's providers manager reads every installed provider's `get_provider_info`; the
    # notifiers, hooks and slack_sdk are what an alert loads, and only when it fires.
    write_segment(workspace, "watched", ALERTS)
    code = (
        "import sys; from airflow.dag_processing.dagbag import DagBag; "
        f"bag = DagBag(dag_folder={str(DAGS)!r}); "
        "assert 'connector_segment_watched' in bag.dag_ids, bag.import_errors; "
        "print(sorted(m for m in sys.modules if m.startswith(("
        "'airflow.providers.slack.notifications', 'airflow.providers.slack.hooks', "
        "'airflow.providers.smtp.notifications', 'airflow.providers.smtp.hooks', 'slack_sdk'))))"
    )
    parsed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
    )
    assert parsed.returncode == 0, parsed.stderr[-2000:]
    assert parsed.stdout.strip().splitlines()[-1] == "[]"
