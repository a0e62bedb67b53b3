"""A run keeps the config it started with: a segment YAML edited while its run is in flight
takes effect from the next run, never halfway through this one.

Airflow 3 parses the DAG file again for every task, so each step after `start` would otherwise
see the edited file; `dag.test()` parses once, so an edit is made between `refresh.start` (run
here with the old config) and the steps that follow, given the edited config as the DAG file
would bind it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import (
    DAGS,
    LogRecorder,
    cli_json,
    run_segment,
    write_csv,
    write_users,
)

pytestmark = pytest.mark.dagrun

SEGMENT = "shoppers"
USERS = [
    (f"nm-{i}", f"ext-{i}", f"user{i}@example.com", None, f"inst-{i}", True) for i in range(1, 21)
]
EDIT_WARNING = "changed after this run started"
# Matched by external id only (the file as the run started): 5 Netmera users, a 50 % match rate.
STARTED_WITH = {
    "id": SEGMENT,
    "name": "Shoppers",
    "user_key": "uid",
    "identifiers": [{"field": "ext", "kind": "external_id"}],
}
# The edit: email matches too (10 users), a match-rate floor that would hold the old
# audience, another name, and a campaign sent on every refresh.
EDITED = {
    **STARTED_WITH,
    "name": "Shoppers (edited)",
    "identifiers": [
        {"field": "ext", "kind": "external_id"},
        {"field": "email", "kind": "email"},
    ],
    "guardrails": {"min_match_rate": 0.9},
}
CAMPAIGN = {"title": "Hello", "text": "A message", "send_on_refresh": True}


def write_segment(ws: Path, config: dict, source: dict | None = None) -> None:
    source = source or {"type": "file", "path": str(ws / "audience.csv")}
    (ws / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump({**config, "source": source}))


def load(ws: Path, config: dict, source: dict | None = None):
    """The config as the DAG file reads it from the segments folder right now."""
    from include.config.segments import find_segment

    write_segment(ws, config, source)
    return find_segment(SEGMENT)


@pytest.fixture
def audience(workspace: Path) -> Path:
    """Ten source users: five found by external id, five only by email."""
    write_users(workspace / "netmera.db", USERS)
    rows = [[f"s{i}", f"ext-{i}", ""] for i in range(1, 6)]
    rows += [[f"e{i}", "", f"user{i}@example.com"] for i in range(6, 11)]
    write_csv(workspace / "audience.csv", ["uid", "ext", "email"], rows)
    return workspace


class EditWarnings(logging.Handler):
    """The edit warnings logged, each once: `LogRecorder`'s loggers, where a record can reach
    two of them (a child's and the root's handlers) depending on how Airflow left logging."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if EDIT_WARNING in record.getMessage() and record not in self.records:
            self.records.append(record)

    @property
    def count(self) -> int:
        return len(self.records)


@pytest.fixture
def edits(logs) -> Iterator[EditWarnings]:
    handler = EditWarnings()
    for name in LogRecorder.LOGGERS:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in LogRecorder.LOGGERS:
        logging.getLogger(name).removeHandler(handler)


def store():
    from include.orchestration.connections import netmera_database

    return netmera_database().store


def test_steps_after_an_edit_run_with_the_config_the_run_started_with(
    audience, logs, edits, capsys
):
    from include.orchestration import refresh

    run_id = "manual__in_flight"
    started_with = load(audience, STARTED_WITH)
    refresh.start(started_with, run_id, dry_run=False, approve=False)
    edited = load(audience, EDITED)  # the YAML is edited between start and extract

    def step_config():
        config = refresh.config_for_run(edited, run_id)  # what each task does
        assert config == started_with and config.config_path == started_with.config_path
        return config

    staged = refresh.extract(step_config(), run_id)
    matched = refresh.match(step_config(), run_id, staged)
    verdict = refresh.validate(step_config(), run_id, matched, dry_run=False, approve=False)
    assert verdict == "publish"  # the edited min_match_rate 0.9 would have held it
    refresh.publish(step_config(), run_id, matched, dry_run=False)

    details = cli_json(capsys, "details", SEGMENT)
    assert (details["status"], details["current_version"]) == ("Ready", 1)
    assert (details["name"], details["connector_users"], details["netmera_users"]) == (
        "Shoppers",
        10,
        5,
    )
    assert details["matched_by"] == {"external_id": 5}  # no email: not in the run's config
    assert edits.count == 4  # once per step that saw the edit
    warning = next(line for line in logs.lines if EDIT_WARNING in line)
    assert SEGMENT in warning and str(edited.config_path) in warning
    assert "next run uses the edited file" in warning
    assert "@example.com" not in logs.text

    # The next run uses the edited file, and nothing in it warns.
    assert run_segment(SEGMENT) == "success"
    details = cli_json(capsys, "details", SEGMENT)
    assert details["runs"][0]["airflow_run_id"] != run_id
    assert (details["current_version"], details["netmera_users"]) == (2, 10)
    assert details["matched_by"] == {"external_id": 5, "email": 5}
    assert details["name"] == "Shoppers (edited)"
    assert edits.count == 4


def run_after_start(ws: Path, started_with) -> str:
    """The segment's DAG, parsed from the folder as it is now, run with its `start` already
    done by `started_with` (as if the file was edited right after `start`): every task after
    it runs, the restore skipping itself; the run's state."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    from include.orchestration import refresh

    when = datetime.now(UTC)
    run_id = DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=when, run_after=when)
    refresh.start(started_with, run_id, dry_run=False, approve=False)
    dag = DagBag(dag_folder=str(DAGS)).get_dag(f"connector_segment_{SEGMENT}")
    run = dag.test(logical_date=when, run_after=when, mark_success_pattern="start")
    assert run.run_id == run_id
    return str(run.state)


MIXPANEL = {"type": "mixpanel", "cohort_id": 501}
MIXPANEL_FIELDS = {"uid": "$distinct_id", "ext": "$distinct_id", "email": "$email"}


def from_mixpanel(config: dict) -> dict:
    """The config with the cohort's fields for the file's."""
    identifiers = [{**i, "field": MIXPANEL_FIELDS[i["field"]]} for i in config["identifiers"]]
    return {**config, "user_key": "$distinct_id", "identifiers": identifiers}


def test_the_tasks_after_start_ignore_an_edit_made_after_it(workspace, edits, capsys, monkeypatch):
    """A Mixpanel segment's run is several tasks (start, extract, refresh, send_message), each
    parsing the DAG file again: every one after `start` runs with the config `start` recorded,
    though the DAG is built from the edited YAML (a campaign sent on every refresh, with no
    Netmera Connection to send it: a send would fail the run). A file segment's refresh is
    one task: the config it starts with is the one it runs with."""
    from tests.fakes import FakeMixpanel, make_members

    members = make_members(10)
    ids = [m["$distinct_id"] for m in members]
    emails = [m["$properties"]["$email"] for m in members]
    users = [(f"nm-{i}", ids[i], None, None, None, True) for i in range(5)]
    users += [(f"nm-{i}", f"other-{i}", emails[i].lower(), None, None, True) for i in range(5, 10)]
    write_users(workspace / "netmera.db", users)
    with FakeMixpanel(username="svc", secret="mp-secret", project_id=77) as mixpanel:
        mixpanel.add_cohort(501, "PN_shoppers", members)
        extra = {"project_id": 77, "queries_per_hour": 36_000}
        conn = {"conn_type": "http", "host": mixpanel.base_url, "login": "svc"}
        conn |= {"password": "mp-secret", "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_MIXPANEL_DEFAULT", json.dumps(conn))
        started_with = load(workspace, from_mixpanel(STARTED_WITH), MIXPANEL)
        edited = {**from_mixpanel(EDITED), "campaign": CAMPAIGN}
        write_segment(workspace, edited, MIXPANEL)
        assert run_after_start(workspace, started_with) == "success"
    details = cli_json(capsys, "details", SEGMENT)
    assert (details["netmera_users"], details["matched_by"]) == (5, {"external_id": 5})
    assert details["message_sent"] == 0
    assert edits.count == 3  # extract, refresh (match, validate, publish), send_message


def test_a_retried_start_records_the_config_read_then(audience):
    from include.orchestration import refresh

    run_id = "manual__start_retried"
    refresh.start(load(audience, STARTED_WITH), run_id, dry_run=False, approve=False)
    edited = load(audience, EDITED)
    refresh.start(edited, run_id, dry_run=False, approve=False)  # nothing ran yet
    assert store().run_config(SEGMENT, run_id)["name"] == "Shoppers (edited)"
    assert refresh.config_for_run(edited, run_id) == edited


def test_a_run_without_a_recorded_config_uses_the_parsed_one(audience, edits):
    # A send-only run (refresh: false) has no start step, hence no run record.
    from include.orchestration import refresh

    config = load(audience, STARTED_WITH)
    assert store().run_config(SEGMENT, "manual__send_only") is None
    assert refresh.config_for_run(config, "manual__send_only") is config
    assert edits.count == 0


SOURCES = {
    "file": ({"type": "file", "path": "data/audience.parquet", "format": "parquet"}, "uid"),
    "sql": ({"type": "sql", "conn_id": "warehouse", "query": "SELECT uid, ext FROM t"}, "uid"),
    "mixpanel": ({"type": "mixpanel", "cohort_id": 501, "conn_id": "mp"}, "$distinct_id"),
    "mixpanel_webhook": (
        {"type": "mixpanel_webhook", "conn_id": "mp_hook"},
        "mixpanel_distinct_id",
    ),
    "amplitude": ({"type": "amplitude", "cohort_id": "abc12"}, "amplitude_id"),
}
EVERY_BLOCK = {
    "description": "Every block set",
    "schedule": "30 3 * * 1-5",
    "owner": "crm-team",
    "tags": ["vip", "nightly"],
    "identifiers": [
        {"field": "ext", "kind": "external_id"},
        {"field": "phone", "kind": "msisdn"},
        {"field": "email_hash", "kind": "email_sha256"},
    ],
    "default_region": "TR",
    "guardrails": {"min_match_rate": 0.25, "max_shrink": None, "max_growth": 1.5},
    "campaign": {"title": "Hi", "text": "Text", "platforms": ["IOS"], "send_on_refresh": True},
    "alerts": {
        "on": ["failed", "held"],
        "slack": {"conn_id": "slack_crm"},
        "email": {"to": ["oncall@example.com"], "conn_id": "smtp_alerts"},
    },
}


@pytest.mark.parametrize("source_type", sorted(SOURCES))
def test_a_recorded_config_comes_back_equal_for_every_source(workspace, edits, source_type):
    from include.config.segments import find_segment
    from include.orchestration import refresh

    source, user_key = SOURCES[source_type]
    config = {"id": SEGMENT, "name": "All", "source": source, "user_key": user_key, **EVERY_BLOCK}
    (workspace / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    parsed = find_segment(SEGMENT)
    refresh.start(parsed, "manual__round_trip", dry_run=True, approve=False)
    restored = refresh.config_for_run(parsed, "manual__round_trip")
    assert restored == parsed and restored.config_path == parsed.config_path
    assert edits.count == 0  # unchanged: nothing to warn about
    # The YAML's path resolves a file source's relative path: it comes back from the snapshot.
    moved = parsed.model_copy(update={"config_path": None})
    assert refresh.config_for_run(moved, "manual__round_trip").config_path == parsed.config_path


def test_the_example_segments_come_back_equal(workspace):
    from include.config.segments import DEFAULT_SEGMENTS_DIR, load_segments
    from include.orchestration import refresh

    examples = load_segments(DEFAULT_SEGMENTS_DIR)
    assert examples.errors == [] and len(examples.segments) >= 3
    for config in examples.segments:
        refresh.start(config, f"manual__{config.id}", dry_run=True, approve=False)
        assert refresh.config_for_run(config, f"manual__{config.id}") == config


def alembic_to(engine: sa.Engine, revision: str, *, down: bool = False) -> None:
    """The store's migrations, as `include/store/migrate.py` runs them, up (or down) to one
    revision."""
    from alembic import command
    from alembic.config import Config

    from include.store.migrate import MIGRATIONS

    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_migration_0006_adds_the_run_config_to_a_store_made_at_0005(workspace):
    from include.orchestration import refresh
    from include.store.migrate import heads_and_pending

    database = workspace / "netmera.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    alembic_to(engine, "0005")
    with sqlite3.connect(database) as db:  # a run in flight when the deployment upgrades
        db.execute(
            "INSERT INTO cs_runs (segment_id, airflow_run_id, dry_run, approve, status, "
            "started_at) VALUES (?, 'manual__before', 0, 0, 'calculating', "
            "'2026-01-01 00:00:00.000000')",
            (SEGMENT,),
        )
    heads, pending = heads_and_pending({"0005"})
    assert pending[0] == "0006"

    config = load(workspace, STARTED_WITH)  # opening the store migrates it
    assert refresh.config_for_run(config, "manual__before") is config
    with sqlite3.connect(database) as db:
        assert {db.execute("SELECT version_num FROM cs_alembic_version").fetchone()[0]} == heads
    assert store().run(SEGMENT, "manual__before")["status"] == "calculating"
    refresh.start(config, "manual__after", dry_run=False, approve=False)
    assert store().run_config(SEGMENT, "manual__after")["identifiers"] == [
        {"field": "ext", "kind": "external_id"}
    ]

    alembic_to(engine, "0005", down=True)  # and back: the column goes, the runs stay
    with sqlite3.connect(database) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(cs_runs)")}
        assert "config" not in columns
        assert db.execute("SELECT count(*) FROM cs_runs").fetchone() == (2,)
    engine.dispose()
