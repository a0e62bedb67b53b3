"""DAG-file parse group: the segment DAG files (dags/connector_segments_<NN>.py, every shard)
with N segment YAML files.

`write_segments` fills a folder with N valid segments (the benchmark's segment, ids varied);
`parse` is timed in a child process with Airflow already imported, as the DAG processor has it
when it parses a file: the figure is the file's own work (reading and validating the YAMLs,
building the DAGs). With `PRELOAD_ENV=0` the child imports nothing first: the figure then
includes importing Airflow, as a fresh process would. `DagBag(dag_folder=...)` parses without a
metadata DB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PRELOAD_ENV = "CS_BENCH_PRELOAD_AIRFLOW"
DAGS = Path(__file__).resolve().parent.parent / "dags"
DAG_FILES = sorted(DAGS.glob("connector_segments_[0-9]*.py"))


def write_segments(folder: Path, count: int, schedule: str | None = "@daily") -> Path:
    """`count` segment YAMLs in `folder` (its other YAMLs removed); `schedule: None`: manual,
    never run by the scheduler."""
    from bench.data import SEGMENT

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    template = SEGMENT.model_dump(mode="json", exclude_none=True)
    template.update(schedule=schedule, description="A generated segment for the parse benchmark.")
    for i in range(count):
        config = {**template, "id": f"segment_{i:04d}", "name": f"Segment {i}"}
        (folder / f"segment_{i:04d}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def _airflow_preloaded() -> None:
    """What the DAG processor has imported before it parses a file."""
    import airflow.sdk  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag  # noqa: F401


def parse_file(path: str) -> dict[str, Any]:
    """One DAG file, as the DAG processor parses it (a file with no DAG, like the config check,
    reports its import error as a result, not a failure)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=path)
    return {"dags": len(bag.dags), "import_errors": len(bag.import_errors)}


def parse() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    dags = 0
    for path in DAG_FILES:
        bag = DagBag(dag_folder=str(path))
        if bag.import_errors:
            raise RuntimeError(f"import errors: {bag.import_errors}")
        dags += len(bag.dags)
    return {"dags": dags}


if os.environ.get(PRELOAD_ENV) != "0":
    _airflow_preloaded()
