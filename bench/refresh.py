"""A whole refresh of a large file audience against a large PostgreSQL user table, against its
own matching step.

    python -m bench.refresh                                  # 10,000,000 users x 1,000,000
    python -m bench.refresh --audience 10000,100000,1000000  # several audience sizes
    python -m bench.refresh --users 200000 --audience 20000  # a quick run

The segment's DAG runs through `dag.test()` in a child process with a migrated metadata DB of
its own: start, extract (the audience Parquet file staged), match (the path `auto` takes),
validate (Great Expectations), publish (into the same PostgreSQL database), end. It runs twice:
the first run publishes version 1 and pays the libraries' first imports; the second, a
nightly refresh with a previous version to diff against, is the one reported. Per step, the
task instance's own duration; the refresh's wall time is the DAG run's, from start to end.
Ratios are to the match step. The users are loaded once into database `cs_bench_<users>`
(`bench.database.load_users`, shared with `bench.matching`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from bench.data import SEGMENT
from bench.measure import ROOT, measure

DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
STEPS = ("extract", "match", "validate", "publish")


def run(segment_id: str) -> dict[str, Any]:
    """Both refreshes; the second one's wall time and step durations."""
    from airflow.dag_processing.dagbag import DagBag

    from include.orchestration.connections import netmera_database

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(
        f"connector_segment_{segment_id}"
    )
    reports = []
    for _ in range(2):
        started = time.perf_counter()
        dag_run = dag.test()
        wall = time.perf_counter() - started
        assert str(dag_run.state) == "success", dag_run.state
        # Each step's own time, as the run records it (several steps share a task).
        steps = netmera_database().store.run(segment_id, dag_run.run_id)["step_seconds"]
        reports.append({"wall": wall, "steps": steps})
    return reports[-1]


def file_segment(audience: Path, **fields: Any) -> dict[str, Any]:
    """The benchmark segment's YAML reading `audience`, without size guardrails; `fields`
    (id, name, schedule...) set on top."""
    config = SEGMENT.model_dump(mode="json", exclude_none=True)
    config["source"] = {"type": "file", "path": str(audience)}
    config["guardrails"] = {"max_shrink": None, "max_growth": None}
    return {**config, **fields}


def netmera_db(url: sa.URL) -> dict[str, Any]:
    """The `netmera_db` Connection for the PostgreSQL database `url`."""
    return {
        "conn_type": "postgres",
        "host": url.host,
        "port": url.port,
        "login": url.username,
        "schema": url.database,
    }


def environment(
    work: Path, netmera_conn: dict[str, Any], segments: list[dict[str, Any]]
) -> dict[str, str]:
    """An env for `dag.test()` in `work`: a migrated SQLite metadata DB, the segment YAMLs
    `segments` in a folder of their own, staging beside it."""
    home, folder = work / "airflow", work / "segments"
    home.mkdir()
    folder.mkdir()
    for config in segments:
        (folder / f"{config['id']}.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "CONNECTOR_SEGMENTS_DIR": str(folder),
        "CONNECTOR_SEGMENTS_STAGING_DIR": str(work / "staging"),
        "CONNECTOR_SEGMENTS_RETRIES": "0",
        "AIRFLOW_CONN_NETMERA_DB": json.dumps(netmera_conn),
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=env
    )
    return env


def main() -> int:
    from bench import data
    from bench.database import load_users

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--audience", default="1000000", help="sizes, comma-separated")
    parser.add_argument("--pg", default=os.environ.get("CONNECTOR_SEGMENTS_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()

    sizes = [int(n) for n in args.audience.split(",")]
    folder = ROOT / ".local" / "bench" / f"{args.users}x{max(sizes)}"  # as bench.matching's
    users, _ = data.write(folder, args.users, max(sizes))
    url = sa.make_url(load_users(args.pg, f"cs_bench_{args.users}", users))
    results = {}
    for size in sizes:
        audience = data.write_audience(folder / f"audience_{size}.parquet", args.users, size)
        with sa.create_engine(url).begin() as conn:  # a fresh segment store beside the users
            for table in sa.inspect(conn).get_table_names():
                if table.startswith("cs_"):
                    conn.exec_driver_sql(f"DROP TABLE {table} CASCADE")
        with tempfile.TemporaryDirectory(prefix="cs-bench-refresh-") as tmp:
            env = environment(Path(tmp), netmera_db(url), [file_segment(audience)])
            results[size] = measure("refresh.run", env=env, segment_id=SEGMENT.id).result

    print(
        f"refresh: file audience x {args.users:,} users in PostgreSQL; the second of two runs "
        "(a previous version to diff against); seconds, and x its match step"
    )
    print(f"{'audience':>10}{'refresh':>9}{'x match':>9}" + "".join(f"{s:>10}" for s in STEPS))
    for size, result in results.items():
        match = result["steps"]["match"]
        steps = "".join(f"{result['steps'][s]:>10.2f}" for s in STEPS)
        print(f"{size:>10,}{result['wall']:>9.2f}{result['wall'] / match:>9.2f}{steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
