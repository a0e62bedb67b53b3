"""Publishing a large membership into the PostgreSQL segment store, against its floor.

    python -m bench.publish                         # 1,000,000 members
    python -m bench.publish --members 100000 --repeat 1

The store holds the segment's three kept versions (a nightly segment's steady state) and
`--others` other segments' members. Each figure is measured in a child process of its own
(`bench.measure`), best of `--repeat`; the clock covers the work itself, from the first row
read to the commit (not the table's creation, nor opening the store and its run record, which
a refresh's start step does):
- floor: a plain `COPY` of the new version's rows into a table like `cs_members` (same
  columns, same primary key), committed: what writing the whole audience costs;
- publish: `SegmentStore.publish` of that version from its Parquet file: the current members
  read (COPY out), the diff, the stays of those who left closed and those who entered
  inserted (2 % of the audience each way), the prune, the segment's counts and status, in one
  transaction.
Each run rolls the store back to the same three versions first. Ratios are to the floor.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from bench.data import SEGMENT
from bench.measure import Measurement, measure

DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
KEPT = 3  # versions published before the measured one


def members(count: int, version: int) -> pa.Table:
    """Version `version` of the membership: 2 % of the users change between versions."""
    churn = count // 50
    first = version * churn
    ids = pa.array([f"nm-{i:09d}" for i in range(first, first + count)])
    kinds = pa.array(["external_id", "email", "msisdn"] * (count // 3 + 1))[:count]
    return pa.table({"user_id": ids, "matched_by": kinds})


def floor(url: str, parquet: str) -> dict[str, Any]:
    from include.clients.database import copy_batch

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_floor")
            conn.exec_driver_sql("CREATE TABLE bench_floor (LIKE cs_members INCLUDING ALL)")
        started = time.perf_counter()
        with engine.begin() as conn:
            for batch in pq.ParquetFile(parquet).iter_batches(batch_size=50_000):
                n = batch.num_rows
                rows = pa.RecordBatch.from_pydict(
                    {
                        "segment_id": pa.repeat(SEGMENT.id, n),
                        "user_id": batch["user_id"],
                        "entered_version": pa.repeat(KEPT + 1, n),
                        "left_version": pa.nulls(n, pa.int64()),
                        "matched_by": batch["matched_by"],
                    }
                )
                copy_batch(conn, "bench_floor", rows)
        seconds = time.perf_counter() - started
        with engine.begin() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM bench_floor").scalar()
            conn.exec_driver_sql("DROP TABLE bench_floor")
    finally:
        engine.dispose()
    return {"rows": rows, "seconds": seconds}


def publish(url: str, parquet: str, segment_id: str = SEGMENT.id) -> dict[str, Any]:
    from include.store.repository import SegmentStore

    engine = sa.create_engine(url)
    try:
        store = SegmentStore(engine)
        run_id = f"bench__{uuid.uuid4().hex[:8]}"
        segment = SEGMENT.model_copy(update={"id": segment_id})
        store.start_run(segment, run_id, dry_run=False, approve=False)
        rows = pq.ParquetFile(parquet).metadata.num_rows
        counts = SimpleNamespace(connector_users=rows, netmera_users=rows, reachable=None)
        started = time.perf_counter()
        batches = pq.ParquetFile(parquet).iter_batches(batch_size=50_000)
        outcome = store.publish(segment_id, run_id, batches, counts=counts, dry_run=False)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return {
        "version": outcome.version,
        "added": outcome.added,
        "removed": outcome.removed,
        "seconds": seconds,
    }


def prepare(admin_url: str, database: str, count: int, others: int, work: Path) -> str:
    """The benchmark store: the segment's versions 1..KEPT and other segments' members."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    admin.dispose()
    url = sa.make_url(admin_url).set(database=database).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    for version in range(1, KEPT + 1):
        path = work / f"v{version}.parquet"
        pq.write_table(members(count, version), path)
        publish(url, str(path))
    for n in range(others):
        publish(url, str(work / "v1.parquet"), f"other_{n}")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE cs_members")
    engine.dispose()
    pq.write_table(members(count, KEPT + 1), work / "new.parquet")
    return url


def reset(url: str) -> None:
    """Back to version KEPT: the stays the measured publish opened go, those it closed reopen."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        params = {"s": SEGMENT.id, "v": KEPT}
        conn.exec_driver_sql(
            "DELETE FROM cs_members WHERE segment_id = %(s)s AND entered_version > %(v)s", params
        )
        conn.exec_driver_sql(
            "UPDATE cs_members SET left_version = NULL "
            "WHERE segment_id = %(s)s AND left_version > %(v)s",
            params,
        )
        conn.exec_driver_sql(
            "UPDATE cs_segments SET current_version = %(v)s WHERE id = %(s)s", params
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE cs_members")
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--others", type=int, default=3, help="other segments of that size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=os.environ.get("CONNECTOR_SEGMENTS_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cs-bench-publish-") as tmp:
        work = Path(tmp)
        url = prepare(args.pg, "cs_bench_publish", args.members, args.others, work)
        new = str(work / "new.parquet")
        results: dict[str, list[Measurement]] = {"floor": [], "publish": []}
        for _ in range(args.repeat):
            results["floor"].append(measure("publish.floor", url=url, parquet=new))
            results["publish"].append(measure("publish.publish", url=url, parquet=new))
            reset(url)
        best = {k: min(v, key=lambda m: m.result["seconds"]) for k, v in results.items()}
    print_table(args, best)
    return 0


def print_table(args: argparse.Namespace, best: dict[str, Measurement]) -> None:
    base = best["floor"].result["seconds"]
    print(
        f"publish: {args.members:,} members into PostgreSQL; the store holds {KEPT} versions "
        f"of them and {args.others} other segments of that size; best of {args.repeat}"
    )
    print(f"{'approach':<44}{'wall s':>8}{'x floor':>9}{'peak RSS MiB':>14}")
    labels = {
        "floor": "plain COPY of the rows (floor)",
        "publish": "SegmentStore.publish (diff, +2 % / -2 %)",
    }
    for key, label in labels.items():
        m = best[key]
        seconds = m.result["seconds"]
        print(f"{label:<44}{seconds:>8.2f}{seconds / base:>9.2f}{m.peak_rss / 2**20:>14,.0f}")
    outcome = best["publish"].result
    print(
        f"publish made version {outcome['version']}: +{outcome['added']:,} -{outcome['removed']:,}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
