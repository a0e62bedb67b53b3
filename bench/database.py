"""Database group: the same users in PostgreSQL, indexed as `doctor` recommends.

- `path_a`: the database path (identifiers COPYed into a temporary table, rules in PostgreSQL);
- `path_b`: the worker path (user table COPYed out to Parquet, rules in DuckDB);
- `pandas_read_sql`: `pandas.read_sql` of the user table, then bench/pandas_baseline.py.

`load_users` puts users.parquet into a benchmark database (COPY, then the indexes and ANALYZE)
once; later runs find it loaded and reuse it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import sqlalchemy as sa

from bench import pandas_baseline
from bench.data import SEGMENT
from bench.engine import counts
from include.clients.database import copy_batch
from include.matching import indexes
from include.matching.pipeline import match_audience
from include.matching.user_table import UserTable

USERS_DDL = """CREATE TABLE netmera_users (user_id TEXT, external_id TEXT, email TEXT,
    msisdn TEXT, installation_id TEXT, push_permitted BOOLEAN)"""


def path_a(url: str, audience: str, workdir: str) -> dict[str, Any]:
    return _path(url, audience, workdir, "database")


def path_b(url: str, audience: str, workdir: str) -> dict[str, Any]:
    return _path(url, audience, workdir, "worker")


def _path(url: str, audience: str, workdir: str, path: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        extra = {"match_path": path}
        result = match_audience(SEGMENT, Path(audience), engine, UserTable(), extra, Path(workdir))
    finally:
        engine.dispose()
    return counts(result)


def pandas_read_sql(url: str, audience: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    users = pd.read_sql(
        "SELECT user_id, external_id, email, msisdn, push_permitted FROM netmera_users", engine
    )
    engine.dispose()
    return pandas_baseline.match(SEGMENT, pd.read_parquet(audience), users)


def load_users(admin_url: str, database: str, users: Path) -> str:
    """The benchmark database's URL, with users.parquet loaded and indexed (once)."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM pg_database WHERE datname = %(d)s", {"d": database}
        ).first()
        if not exists:
            conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    admin.dispose()
    url = sa.make_url(admin_url).set(database=database)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    stamp = f"{pq.ParquetFile(users).metadata.num_rows}:{users.stat().st_size}"
    try:
        with engine.connect() as conn:
            if (
                sa.inspect(conn).has_table("bench_loaded")
                and str(conn.exec_driver_sql("SELECT * FROM bench_loaded").scalar()) == stamp
            ):
                return url.render_as_string(hide_password=False)
            conn.exec_driver_sql("DROP TABLE IF EXISTS netmera_users, bench_loaded")
            conn.exec_driver_sql(USERS_DDL)
            for batch in pq.ParquetFile(users).iter_batches(batch_size=500_000):
                copy_batch(conn, "netmera_users", batch)
            table = UserTable()
            kinds = {i.kind for i in SEGMENT.identifiers}
            for need in indexes.needed(table, kinds, "postgresql"):
                for statement in need.create_sql(table, engine.dialect):
                    conn.exec_driver_sql(statement)
            conn.exec_driver_sql("VACUUM ANALYZE netmera_users")
            conn.exec_driver_sql(f"CREATE TABLE bench_loaded AS SELECT '{stamp}' AS stamp")
    finally:
        engine.dispose()
    return url.render_as_string(hide_password=False)
