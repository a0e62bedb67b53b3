"""The page's list endpoint at a large tenant's size, over HTTP on a real `airflow api-server`.

    python -m bench.ui_list                      # 10,000 segments
    python -m bench.ui_list --segments 2000 --requests 10
    python -m bench.ui_list --store postgres     # the store in PostgreSQL (127.0.0.1:5432)

N segment YAML files, N segments in the store (SQLite, as the embedded default, or a fresh
PostgreSQL database `cs_bench_ui_list`, as production; statuses and update dates varied) and
N segment DAGs in Airflow's metadata DB (their `dag` rows written directly: the DAG files'
parse is `bench.dag_files`). Timed with a Bearer token,
after one warm-up request each: Airflow's own `GET /api/v2/dags?limit=50` on the same server
(the baseline: the list Airflow's UI shows), then `GET /connector-segments/api/segments` as the
page asks for it: the first page, a name search, a status filter and the last page. Prints
median and 95th percentile latency and the ratio of medians to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# The test suite's launcher, with its private AIRFLOW_HOME set before Airflow is imported.
from tests.conftest import airflow_api_server, sqlite_conn, token_session, write_users

STATUSES = ("Ready", "Ready", "Ready", "Failed", "Held", "Calculating")
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def fresh_pg_database(admin_url: str, name: str) -> tuple[str, str]:
    """(SQLAlchemy URL, netmera_db Connection JSON) of a new, empty database `name`."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = sa.make_url(admin_url).set(database=name)
    conn = {"conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username}
    return url.render_as_string(hide_password=False), json.dumps({**conn, "schema": name})


def write_store(url: str, count: int) -> None:
    """`count` segments in the store, as if each had been refreshed once."""
    import sqlalchemy as sa

    from include.store.repository import SegmentStore
    from include.store.tables import segments

    store = SegmentStore(sa.create_engine(url))
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"segment_{i:05d}",
            "name": f"Segment {i}",
            "description": "A generated segment for the list benchmark.",
            "source_type": "file",
            "status": STATUSES[i % len(STATUSES)],
            "current_version": 1 + i % 4,
            "connector_users": 1000 + i,
            "netmera_users": 900 + i,
            "reachable": 800 + i,
            "message_sent": i % 7,
            "last_update_date": now - timedelta(hours=i % 50),
            "updated_at": now,
        }
        for i in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(segments.insert(), rows)


def write_yamls(folder: Path, count: int) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        config = {
            "id": f"segment_{i:05d}",
            "name": f"Segment {i}",
            "description": "A generated segment for the list benchmark.",
            "schedule": "0 2 * * *",
            "source": {"type": "file", "path": "audience.csv"},
            "user_key": "uid",
            "identifiers": [{"field": "ext", "kind": "external_id"}],
        }
        (folder / f"segment_{i:05d}.yaml").write_text(yaml.safe_dump(config))


def write_dag_rows(count: int) -> None:
    """The segments' rows in Airflow's `dag` table (every tenth paused)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        if session.get(DagBundleModel, "dags-folder") is None:
            session.add(DagBundleModel(name="dags-folder"))
            session.flush()
        session.add_all(
            DagModel(
                dag_id=f"connector_segment_segment_{i:05d}",
                bundle_name="dags-folder",
                fileloc="connector_segments_00.py",
                relative_fileloc="connector_segments_00.py",
                is_paused=i % 10 == 0,
            )
            for i in range(count)
        )


def timed(session, url: str, params: dict, n: int) -> list[float]:
    session.get(url, params=params, timeout=60).raise_for_status()  # warm-up
    times = []
    for _ in range(n):
        started = time.perf_counter()
        answer = session.get(url, params=params, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg", default=os.environ.get("CONNECTOR_SEGMENTS_BENCH_PG", PG))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cs-bench-ui-"))
    if args.store == "sqlite":
        write_users(work / "netmera.db", [("nm-1", "ext-1", None, None, None, True)])
        store_url, netmera_db = f"sqlite:///{work / 'netmera.db'}", sqlite_conn(work / "netmera.db")
    else:
        store_url, netmera_db = fresh_pg_database(args.pg, "cs_bench_ui_list")
    env = {
        "CONNECTOR_SEGMENTS_DIR": str(work / "segments"),
        "AIRFLOW_CONN_NETMERA_DB": netmera_db,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
    }
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True
    )
    write_yamls(work / "segments", args.segments)
    write_store(store_url, args.segments)
    write_dag_rows(args.segments)
    with airflow_api_server(work / "api-server.log") as base:
        api = f"{base}/connector-segments"
        session = token_session(api, "admin")
        cases = [
            ("Airflow GET /api/v2/dags?limit=50", f"{base}/api/v2/dags", {"limit": 50}),
            ("segments, first page (50)", f"{api}/api/segments", {}),
            ("segments, name search", f"{api}/api/segments", {"q": "Segment 99"}),
            ("segments, status=Failed", f"{api}/api/segments", {"status": "Failed"}),
            ("segments, last page", f"{api}/api/segments", {"offset": args.segments - 50}),
        ]
        results = [
            (name, timed(session, url, params, args.requests)) for name, url, params in cases
        ]
        total = session.get(f"{api}/api/segments", timeout=60).json()["total"]
    assert total == args.segments, total
    print(
        f"list endpoint: {args.segments:,} segments (YAMLs, store rows in {args.store}, DAGs), "
        f"{args.requests} requests each, median / p95 ms"
    )
    print(f"{'request':40s} {'median':>8s} {'p95':>8s} {'x first':>8s}")
    baseline = statistics.median(results[0][1])
    for name, times in results:
        median = statistics.median(times)
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"{name:40s} {median:8.1f} {p95:8.1f} {median / baseline:8.2f}")
    print(json.dumps({name: round(statistics.median(t), 1) for name, t in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
