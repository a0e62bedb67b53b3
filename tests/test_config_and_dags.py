"""Segment YAML validation, and the DAGs generated from it (one bad file breaks one segment)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DAGS, cli, cli_json, run_segment, write_csv, write_users

GOOD = {
    "id": "good_one",
    "name": "Good one",
    "description": "A **valid** segment.",
    "schedule": "0 2 * * *",
    "owner": "crm",
    "tags": ["crm"],
    "source": {"type": "file", "path": "data/a.csv"},
    "user_key": "uid",
    "identifiers": [{"field": "uid", "kind": "external_id"}],
}


def write_yaml(folder: Path, name: str, config: dict | str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


CAMPAIGN = {"title": "Hi", "text": "New in store"}
HOLDOUT = "campaign.holdout_percent"
BROKEN = [
    ("unknown_key", {"guardrails": {"max_shrinkk": 0.2}}, "guardrails.max_shrinkk"),
    ("bad_kind", {"identifiers": [{"field": "uid", "kind": "phone"}]}, "identifiers.0.kind"),
    ("bad_schedule", {"schedule": "every night"}, "schedule"),
    ("bad_source", {"source": {"type": "file"}}, "source.file.path"),
    ("bad_id", {"id": "Bad-Id"}, "id"),
    *(
        (f"holdout_{name}", {"campaign": {**CAMPAIGN, "holdout_percent": value}}, HOLDOUT)
        for name, value in (("bool", True), ("text", "10"), ("high", 50.5), ("negative", -1))
    ),
]


@pytest.mark.parametrize(("name", "change", "field"), BROKEN)
def test_validate_names_the_file_and_the_field(tmp_path, capsys, name, change, field):
    write_yaml(tmp_path, "good_one", GOOD)
    path = write_yaml(tmp_path, name, {**GOOD, "id": name, **change})
    code, out, err = cli(capsys, "validate", "--dir", str(tmp_path))
    assert code == 1
    assert str(path) in err
    assert f"field '{field}'" in err
    assert "1 valid, 1 invalid" in out


def test_holdout_percent_is_a_number_from_0_to_50_decimals_allowed(tmp_path, capsys):
    for name, value in (("none", 0), ("some", 12.5), ("half", 50)):
        campaign = {**CAMPAIGN, "holdout_percent": value}
        write_yaml(tmp_path, name, {**GOOD, "id": name, "campaign": campaign})
    code, out, err = cli(capsys, "validate", "--dir", str(tmp_path))
    assert (code, err) == (0, "")
    assert "3 valid, 0 invalid" in out
    write_yaml(
        tmp_path, "high", {**GOOD, "id": "high", "campaign": {**CAMPAIGN, "holdout_percent": 51}}
    )
    code, _, err = cli(capsys, "validate", "--dir", str(tmp_path))
    assert code == 1
    assert f"high.yaml: field '{HOLDOUT}': Input should be less than or equal to 50" in err


def test_validate_rejects_a_file_that_is_not_yaml_mapping(tmp_path, capsys):
    path = write_yaml(tmp_path, "oops", "- just\n- a list\n")
    code, _, err = cli(capsys, "validate", "--dir", str(tmp_path))
    assert code == 1
    assert str(path) in err


def test_id_must_equal_the_file_name(tmp_path, capsys):
    write_yaml(tmp_path, "other_name", GOOD)
    code, _, err = cli(capsys, "validate", "--dir", str(tmp_path))
    assert code == 1
    assert "field 'id'" in err


def test_broken_yaml_is_an_import_error_and_other_dags_still_load(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(tmp_path))
    write_yaml(tmp_path, "good_one", GOOD)
    write_yaml(tmp_path, "good_two", {**GOOD, "id": "good_two"})
    broken = write_yaml(tmp_path, "broken", {**GOOD, "id": "broken", "user_key": None})

    bag = DagBag(dag_folder=str(DAGS))
    assert {"connector_segment_good_one", "connector_segment_good_two"} <= set(bag.dag_ids)
    assert "connector_segment_broken" not in bag.dag_ids
    (path, error) = next((p, e) for p, e in bag.import_errors.items() if str(broken) in e)
    assert path.endswith("connector_segments_config_check.py")
    assert "field 'user_key'" in error


def test_a_broken_yaml_leaves_the_other_dags_schedulable_in_the_metadata_db(
    tmp_path, monkeypatch, airflow_db
):
    # Airflow marks every DAG of a file with an import error stale: the error must not land on
    # the file that builds the segment DAGs. Checked where it matters, in the metadata DB.
    import sqlalchemy as sa

    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(tmp_path))
    write_yaml(tmp_path, "good_three", {**GOOD, "id": "good_three"})
    write_yaml(tmp_path, "broken_two", {**GOOD, "id": "broken_two", "schedule": "nightly"})
    subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "reserialize"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )

    engine = sa.create_engine(f"sqlite:///{airflow_db / 'airflow.db'}")
    with engine.connect() as conn:
        state = conn.execute(
            sa.text("SELECT is_stale, has_import_errors FROM dag WHERE dag_id = :d"),
            {"d": "connector_segment_good_three"},
        ).one()
        errors = conn.execute(sa.text("SELECT filename, stacktrace FROM import_error")).all()
    engine.dispose()
    assert tuple(state) == (False, False)
    assert any(
        f.endswith("connector_segments_config_check.py")
        and "broken_two.yaml" in t
        and "field 'schedule'" in t
        for f, t in errors
    )


def test_generated_dag_shape(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(tmp_path))
    write_yaml(tmp_path, "good_one", GOOD)
    dag = DagBag(dag_folder=str(DAGS)).dags["connector_segment_good_one"]

    assert dag.max_active_runs == 1
    assert set(dag.tags) == {"connector-segment", "file", "crm"}
    assert "A **valid** segment." in dag.doc_md
    assert set(dag.params.keys()) == {
        "dry_run",
        "approve",
        "refresh",
        "send_message",
        "message_title",
        "message_text",
        "send_key",
        "holdout_percent",
        "audience",
        "full_refresh",
        "restore_version",
    }
    assert dag.default_args["retries"] == 0  # conftest sets CONNECTOR_SEGMENTS_RETRIES=0
    assert dag.default_args["owner"] == "crm"
    # A file segment's refresh is one task, a branch to a restore or a send when asked.
    assert dag.task_dict.keys() == {"refresh", "restore", "send_message"}
    assert dag.get_task("refresh").downstream_task_ids == {"restore", "send_message"}
    assert dag.get_task("restore").downstream_task_ids == {"send_message"}
    assert {t.pool for t in dag.tasks} == {"default_pool"}
    # An event on the segment's Asset only when a membership is published, through an alias.
    for task_id in ("refresh", "restore"):
        (alias,) = dag.get_task(task_id).outlets
        assert alias.name == "connector_segment_published:good_one"


def test_a_vendor_segments_extract_alone_holds_the_vendors_pool(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(tmp_path))
    source = {"type": "mixpanel", "cohort_id": 501}
    write_yaml(tmp_path, "good_one", {**GOOD, "source": source, "user_key": "$distinct_id"})
    dag = DagBag(dag_folder=str(DAGS)).dags["connector_segment_good_one"]

    order = ["start", "extract", "refresh", "send_message"]
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert dag.get_task("start").downstream_task_ids == {"extract", "restore", "send_message"}
    pools = {t.task_id: t.pool for t in dag.tasks}
    assert pools.pop("extract") == "mixpanel_api"
    assert set(pools.values()) == {"default_pool"}


def test_tasks_see_the_trigger_form_params_with_the_runs_conf(tmp_path, monkeypatch):
    # The DAG gets its Params after its tasks are built (orchestration/segment_dags.py): what a
    # task sees at run time, merged by Airflow's own `process_params`, must still be every
    # Param with its default, overridden by a valid conf, and an invalid conf refused.
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import process_params
    from airflow.sdk.exceptions import ParamValidationError

    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(tmp_path))
    write_yaml(tmp_path, "good_one", GOOD)
    write_yaml(tmp_path, "good_two", {**GOOD, "id": "good_two"})
    bag = DagBag(dag_folder=str(DAGS))

    segment_dags = [d for d in bag.dags.values() if d.dag_id.startswith("connector_segment_")]
    for dag in segment_dags:
        for task in dag.tasks:
            seen = process_params(dag, task, {"send_key": "k1"}, suppress_exception=False)
            assert seen == {
                "dry_run": False,
                "approve": False,
                "refresh": True,
                "send_message": False,
                "message_title": None,
                "message_text": None,
                "send_key": "k1",
                "holdout_percent": None,
                "audience": None,
                "full_refresh": False,
                "restore_version": None,
            }
            for bad in (
                {"send_message": "yes"},
                {"send_key": 7},
                {"restore_version": 0},
                {"holdout_percent": 51},
                {"holdout_percent": -1},
                {"holdout_percent": "ten"},
                {"holdout_percent": True},
                {"audience": "everyone"},
            ):
                with pytest.raises(ParamValidationError, match=next(iter(bad))):
                    process_params(dag, task, bad, suppress_exception=False)
    # A run's conf is written into its DAG's Params: another DAG's defaults must not move.
    one, two = (bag.dags[f"connector_segment_{name}"] for name in ("good_one", "good_two"))
    process_params(one, one.get_task("refresh"), {"send_message": True}, suppress_exception=False)
    assert not process_params(two, two.get_task("refresh"), {}, suppress_exception=False)[
        "send_message"
    ]


def test_each_dag_runs_its_own_segment_not_the_last_one_parsed(workspace, capsys):
    # Two segments with different audiences: running the first must refresh the first
    # (a config read from a loop variable at run time would be the last one's).
    write_users(
        workspace / "netmera.db",
        [(f"nm-{i}", f"ext-{i}", None, None, None, True) for i in range(1, 6)],
    )
    for name, ids in (("a_first", [1, 2]), ("z_last", [1, 2, 3, 4])):
        csv = write_csv(workspace / f"{name}.csv", ["uid"], [[f"ext-{i}"] for i in ids])
        write_yaml(
            workspace / "segments",
            name,
            {**GOOD, "id": name, "name": name, "source": {"type": "file", "path": str(csv)}},
        )
    assert run_segment("a_first") == "success"
    listed = {row["id"]: row for row in cli_json(capsys, "list")}
    assert listed["a_first"]["netmera_users"] == 2
    assert listed["a_first"]["status"] == "Ready"
    assert listed["z_last"]["status"] is None  # never run


def test_documented_example_segments_are_valid(capsys):
    examples = Path(__file__).resolve().parent.parent / "docs" / "examples"
    code, out, err = cli(capsys, "validate", "--dir", str(examples))
    assert code == 0, err
    assert "3 valid, 0 invalid" in out


def test_list_with_nothing_configured_prints_an_empty_table(workspace, capsys):
    code, out, _ = cli(capsys, "list")
    assert code == 0 and out.startswith("Segment Name")
    assert cli_json(capsys, "list") == []
