"""SQLite group: the embedded default at a small tenant's size (issue #9), users in SQLite.

- `run`: the refresh's match step on one path, "worker", "database" or "auto" (auto's choice,
  `choose_path` with the table's row count and index check, is timed as part of it, as a
  refresh makes it); returns the counts and the path taken. With `before_9` the database
  path runs its lookups as before issue #9's fix.

`load_users` writes users.parquet into two SQLite files once: one with the indexes `doctor`
recommends for the benchmark segment's kinds, one with none on the identifier columns (as a
user table may well be). Later runs find them loaded and reuse them.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa

from bench.data import SEGMENT
from bench.engine import counts
from include.matching import indexes
from include.matching.paths import choose_path
from include.matching.pipeline import match_audience
from include.matching.user_table import UserTable

USERS_DDL = """CREATE TABLE netmera_users (user_id TEXT, external_id TEXT, email TEXT,
    msisdn TEXT, installation_id TEXT, push_permitted BOOLEAN)"""
KINDS = {i.kind for i in SEGMENT.identifiers}


def run(db: str, audience: str, workdir: str, path: str, before_9: bool = False) -> dict[str, Any]:
    """`before_9`: the database path's lookups as they were before issue #9's fix (no indexes
    on cs_hits: SQLite scans all of it per audience row), to show what the fix changed."""
    if before_9:
        from include.matching import rules

        rules.DIALECTS["sqlite"] = replace(rules.SQLITE, index_hits=False)
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        staged = Path(audience)
        if path == "auto":
            rows = pq.ParquetFile(staged).metadata.num_rows
            path = choose_path(engine, {}, UserTable(), rows, KINDS)
        extra = {"match_path": path}
        result = match_audience(SEGMENT, staged, engine, UserTable(), extra, Path(workdir))
    finally:
        engine.dispose()
    return {**counts(result), "path": path}


def load_users(folder: Path, users: Path) -> dict[str, Path]:
    """{"indexed": ..., "bare": ...}: SQLite files holding users.parquet (made once)."""
    stamp = f"{pq.ParquetFile(users).metadata.num_rows}:{users.stat().st_size}"
    files = {"indexed": folder / "netmera_indexed.sqlite", "bare": folder / "netmera_bare.sqlite"}
    if all(_loaded(f, stamp) for f in files.values()):
        return files
    bare = files["bare"].with_suffix(".tmp")
    bare.unlink(missing_ok=True)
    with sqlite3.connect(bare) as conn:
        conn.execute(USERS_DDL)
        for batch in pq.ParquetFile(users).iter_batches(batch_size=200_000):
            rows = zip(*(c.to_pylist() for c in batch.columns), strict=True)
            conn.executemany("INSERT INTO netmera_users VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.execute("CREATE TABLE bench_loaded AS SELECT ? AS stamp", (stamp,))
    conn.close()
    indexed = files["indexed"].with_suffix(".tmp")
    shutil.copyfile(bare, indexed)
    table, dialect = UserTable(), sa.create_engine("sqlite://").dialect
    with sqlite3.connect(indexed) as conn:
        for need in indexes.needed(table, KINDS, "sqlite"):
            for statement in need.create_sql(table, dialect):
                conn.execute(statement)
    conn.close()
    bare.replace(files["bare"])
    indexed.replace(files["indexed"])
    return files


def _loaded(db: Path, stamp: str) -> bool:
    if not db.exists():
        return False
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT stamp FROM bench_loaded").fetchone() == (stamp,)
    except sqlite3.Error:
        return False
    finally:
        conn.close()
