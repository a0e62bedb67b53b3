"""The segment DAGs are spread over shard files (dags/connector_segments_<NN>.py): every DAG is
written to the metadata DB from its own shard's file, with its DAG id unchanged; a broken YAML
still breaks only itself and is reported by the config-check file, naming the file and field.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DAGS, reserialize_dags

pytestmark = pytest.mark.dagrun

SEGMENTS = 300


def write_segments(folder: Path, count: int) -> set[str]:
    ids = {f"seg_{i:03d}" for i in range(count)}
    for segment_id in ids:
        config = {
            "id": segment_id,
            "name": f"Segment {segment_id}",
            "schedule": "@daily",
            "source": {"type": "file", "path": "audience.csv"},
            "user_key": "uid",
            "identifiers": [{"field": "ext", "kind": "external_id"}],
        }
        (folder / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))
    return ids


def test_the_shard_files_are_the_shards():
    from include.orchestration.segment_dags import SHARDS

    files = sorted(p.name for p in DAGS.glob("connector_segments_[0-9]*.py"))
    assert files == [f"connector_segments_{k:02d}.py" for k in range(SHARDS)]


def test_every_segment_dag_is_written_from_its_own_shard_file(workspace, airflow_db):
    import sqlalchemy as sa

    from include.config.segments import shard_of
    from include.orchestration.segment_dags import SHARDS, dag_file

    folder = workspace / "segments"
    ids = write_segments(folder, SEGMENTS)
    broken = folder / "seg_broken.yaml"
    broken.write_text((folder / "seg_000.yaml").read_text().replace("seg_000", "seg_broken"))
    broken.write_text(broken.read_text() + "colour: red\n")
    reserialize_dags()

    engine = sa.create_engine(f"sqlite:///{airflow_db / 'airflow.db'}")
    with engine.connect() as conn:
        written = {
            row.dag_id: row
            for row in conn.execute(
                sa.text(
                    "SELECT dag_id, fileloc, is_stale, has_import_errors FROM dag "
                    "WHERE dag_id LIKE 'connector_segment_seg%'"
                )
            )
        }
        errors = dict(conn.execute(sa.text("SELECT filename, stacktrace FROM import_error")).all())
    engine.dispose()
    assert set(written) == {f"connector_segment_{i}" for i in ids}  # the broken one aside
    assert {dag_id: Path(row.fileloc) for dag_id, row in written.items()} == {
        f"connector_segment_{i}": dag_file(i) for i in ids
    }
    assert not any(row.is_stale or row.has_import_errors for row in written.values())
    # 300 segments fill every one of the 16 shards, none with more than twice its share.
    per_shard = [sum(shard_of(i, SHARDS) == k for i in ids) for k in range(SHARDS)]
    assert min(per_shard) > 0 and max(per_shard) < 2 * SEGMENTS / SHARDS, per_shard
    assert list(errors) == ["connector_segments_config_check.py"], list(errors)
    (reported,) = errors.values()
    assert f"{broken}: field 'colour': unknown key" in reported, reported


def test_a_shard_file_reads_only_its_own_segments(workspace):
    """A worker running one task parses the task's shard file only, and that reads its own
    shard's YAML files, no other (the interpreter's audit hook sees every file opened)."""
    from airflow.dag_processing.dagbag import DagBag

    from include.config.segments import shard_of
    from include.orchestration.segment_dags import SHARDS, dag_file

    folder = workspace / "segments"
    ids = write_segments(folder, 40)
    target = min(ids)
    mine = {i for i in ids if shard_of(i, SHARDS) == shard_of(target, SHARDS)}
    opened: list[str] = []
    watching = True
    sys.addaudithook(
        lambda event, args: watching and event == "open" and opened.append(str(args[0]))
    )
    try:
        bag = DagBag(dag_folder=str(dag_file(target)))
    finally:
        watching = False
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {f"connector_segment_{i}" for i in mine}
    read = {Path(path).stem for path in opened if path.endswith(".yaml")}
    assert read == mine


def test_a_task_parses_its_own_segments_yaml_alone(workspace, monkeypatch):
    """With Airflow's parsing context set (a worker about to run one task), the shard file
    reads the task's segment's YAML and no other; a context naming another shard's segment, a
    DAG that is no segment's or an invalid file builds nothing (and raises nothing)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID

    from include.config.segments import shard_of
    from include.orchestration.segment_dags import SHARDS, dag_file

    folder = workspace / "segments"
    ids = write_segments(folder, 40)
    target = min(ids)
    other_shard = next(i for i in ids if shard_of(i, SHARDS) != shard_of(target, SHARDS))

    def parse(dag_id: str) -> tuple[set[str], set[str]]:
        monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, dag_id)
        opened: list[str] = []
        watching = [True]
        sys.addaudithook(
            lambda event, args: watching[0] and event == "open" and opened.append(str(args[0]))
        )
        try:
            bag = DagBag(dag_folder=str(dag_file(target)))
        finally:
            watching[0] = False
        assert bag.import_errors == {}
        return set(bag.dag_ids), {Path(p).stem for p in opened if p.endswith(".yaml")}

    assert parse(f"connector_segment_{target}") == ({f"connector_segment_{target}"}, {target})
    assert parse(f"connector_segment_{other_shard}") == (set(), set())
    assert parse("connector_segments_stale_check") == (set(), set())
    assert parse("connector_segment_../../etc/passwd") == (set(), set())
    (folder / f"{target}.yaml").write_text("id: [not, an, id]\n")
    assert parse(f"connector_segment_{target}") == (set(), {target})
