"""An incremental refresh against a full one of the same data, and what keeping the
membership costs (issue 23, item 5).

    python -m bench.incremental   # PostgreSQL 1,000,000 x 10,000,000; SQLite 1,000,000 x 200,000
    python -m bench.incremental --users 1000000 --sqlite-users 100000 --audience 100000 --rounds 3

For each backend (`--backends postgres,sqlite`): the file segment's DAG runs through
`dag.test()` in a child process (`bench.measure`), against a copy of the users with a
`changed_at` column that the `netmera_db` extra `changed_at_column` names.
1. A first refresh matches in full and publishes version 1.
2. Then `--rounds` times: 1 % of the source changes (0.4 % added, 0.3 % removed, 0.3 % with
   an identifier edited and the same key) and 0.1 % of the user table (0.04 % new users,
   holding the emails of source users no Netmera user had; 0.04 % with an email changed and
   the phone removed; 0.02 % deleted), and the segment refreshes incrementally. In round 1
   copies of the same state (database and store) refresh in full too: with `full_refresh:
   true` (keeping resolutions, as every `full_refresh_days`) and without the change column (a
   full refresh as before incremental matching). All three must publish the same members,
   counts, reasons and per-kind matches (exit 1 if not). A third copy times the *floor*
   (`floor`): what any incremental match by the issue's design does over every source user
   whatever changed; with the incremental refresh's other steps, the least it could take.
3. Reported: round 1's incremental refresh against the full one (the refresh's own time, its
   steps extract to publish, on which the ratio is; `dag.test()`'s wall time; match; publish;
   source users matched again); the rows each publish wrote (added + removed) against the
   audience; `cs_members`' rows after the last round against the audience.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from bench import data
from bench.data import SEGMENT
from bench.measure import ROOT, measure
from bench.refresh import DEFAULT_PG, environment, file_segment, netmera_db

TARGETS = {"time": 0.10, "written": 0.03, "stored": 1.2}  # issue 23's acceptance
BASE_TIME = "2026-01-01 00:00:00"
CHANGED_INDEX = "ix_netmera_users_changed_at"


def refresh(segment_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """One refresh by `dag.test()`, the libraries imported first as a Celery worker has them
    (include/orchestration/celery_worker.py): its wall time, its record's steps, mode, counts
    and diff, and a digest of the published members."""
    import importlib

    from airflow.dag_processing.dagbag import DagBag

    from include.orchestration.celery_worker import WARM_UP
    from include.orchestration.connections import netmera_database

    for module in WARM_UP:  # what a production worker has imported before it runs a task
        importlib.import_module(module)
    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(
        f"connector_segment_{segment_id}"
    )
    started = time.perf_counter()
    dag_run = dag.test(run_conf=conf or None)
    wall = time.perf_counter() - started
    assert str(dag_run.state) == "success", dag_run.state
    store = netmera_database().store
    run = store.run(segment_id, dag_run.run_id)
    members = hashlib.sha256("\n".join(store.member_ids(segment_id)).encode()).hexdigest()
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM cs_members").scalar()
    fields = ("mode", "rematched", "connector_users", "netmera_users", "reachable", "added")
    return {
        "wall": wall,
        "steps": run["step_seconds"],
        **{k: run[k] for k in (*fields, "removed", "reasons", "matched_by", "status")},
        "members": members,
        "stored": stored,
    }


def floor(source: str) -> dict[str, Any]:
    """What any incremental match by issue 23's design does whatever it re-matches, timed alone
    against the state an incremental refresh starts from: each source user's digest over its
    identifier fields (`carry.write_digests`, on the source file), the kept digests read and
    compared with them (`carry.plan`, which reads no more of the kept file than them), and,
    overlapping them as a refresh does, Netmera's side (`carry.affected`: the rows changed
    since the mark, the deletion check through the primary key, the kept terms they touch).
    No lookup, decision, save or count."""
    from concurrent.futures import ThreadPoolExecutor

    import duckdb

    from include.clients.database import read_arrow
    from include.matching import carry
    from include.matching.changes import ChangeColumn
    from include.matching.decide import duckdb_config
    from include.orchestration.connections import netmera_database
    from include.store.resolutions import SegmentResolutions
    from include.store.tables import resolutions

    db = netmera_database()
    kept = SegmentResolutions(db.store.engine, SEGMENT.id)
    change = ChangeColumn.from_extras(db.info.extra)
    digested = resolutions.c.segment_id == SEGMENT.id
    with tempfile.TemporaryDirectory(prefix="cs-bench-floor-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        state = kept.state()
        assert state is not None and change is not None, "the floor needs kept resolutions"
        con = duckdb.connect(config=duckdb_config(work, carry.PLAN_MEMORY))
        with ThreadPoolExecutor(max_workers=1) as pool:
            asked = pool.submit(carry.affected, SEGMENT, db.engine, db.users, change, state, kept)
            digests = carry.write_digests(con, SEGMENT, Path(source), work / carry.DIGESTS_FILE)
            with db.store.engine.connect() as conn:
                stored = read_arrow(
                    conn, sa.select(resolutions.c.user_key, resolutions.c.digest).where(digested)
                )
            kept_digests = work / carry.KEPT_FILE
            pq.write_table(stored, kept_digests, compression="none", use_dictionary=False)
            affected, _, _ = asked.result()
        found = carry.plan(con, digests, kept_digests, affected, work)
        seconds = time.perf_counter() - started
        con.close()
    return {"seconds": seconds, "rematch": len(found.rematch), "affected": len(affected)}


# -- the data and its changes -------------------------------------------------------------------


def change_source(audience: pa.Table, users: int, round_: int) -> pa.Table:
    """1 % of the source rows changed: 0.3 % removed, 0.3 % an identifier edited (the key
    kept), 0.4 % added (other people, some Netmera users, some not)."""
    rng = np.random.default_rng(1000 + round_)
    n = audience.num_rows
    removed = rng.choice(n, size=n * 3 // 1000, replace=False)
    keep = np.ones(n, bool)
    keep[removed] = False
    kept = audience.filter(pa.array(keep))
    edited = np.zeros(kept.num_rows, bool)
    edited[rng.choice(kept.num_rows, size=n * 3 // 1000, replace=False)] = True
    other = data.email(rng.integers(0, users * 2, size=kept.num_rows))
    email = pc.if_else(pa.array(edited), other, kept["email"])
    kept = kept.set_column(kept.schema.get_field_index("email"), "email", email)
    fresh = data.audience_table(users, n * 4 // 1000, seed=5000 + round_)
    present = pc.is_in(fresh["uid"], value_set=kept["uid"])
    return pa.concat_tables([kept, fresh.filter(pc.invert(present)).cast(kept.schema)])


def outsider_emails(audience: pa.Table, users: int, count: int, round_: int) -> list[str]:
    """Emails of source users who are nobody in Netmera (persons past the user table's)."""
    idx = np.array([int(u.removeprefix("src-")) for u in audience["uid"].to_pylist()])
    outside = np.unique(idx[idx >= users])
    rng = np.random.default_rng(2000 + round_)
    chosen = rng.choice(outside, size=min(count, len(outside)), replace=False)
    return data.email(chosen).to_pylist()


def change_users(engine: sa.Engine, users: int, audience: pa.Table, round_: int) -> None:
    """0.1 % of the users changed, each with its change time: 0.04 % new (holding a source
    user's email that no Netmera user had), 0.04 % a new email and no phone, 0.02 % deleted."""
    rng = np.random.default_rng(3000 + round_)
    per = max(1, users * 4 // 10_000)
    picked = rng.choice(users, size=per + per // 2, replace=False)
    changed = [f"nm{i}" for i in picked[:per]]
    deleted = [f"nm{i}" for i in picked[per:]]
    emails = outsider_emails(audience, users, per, round_)
    postgres = engine.dialect.name == "postgresql"
    now = "clock_timestamp()" if postgres else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO netmera_users (user_id, email, installation_id, push_permitted, "
                f"changed_at) VALUES (:u, :e, :d, true, {now})"
            ),
            [
                {"u": f"nmnew{round_}_{k}", "e": e, "d": f"dev-new-{round_}-{k}"}
                for k, e in enumerate(emails)
            ],
        )
        conn.execute(
            sa.text(
                "UPDATE netmera_users SET email = 'moved-' || user_id || '@example.com', "
                f"msisdn = NULL, changed_at = {now} WHERE user_id = :u"
            ),
            [{"u": u} for u in changed],
        )
        conn.execute(
            sa.text("DELETE FROM netmera_users WHERE user_id = :u"), [{"u": u} for u in deleted]
        )


# -- the backends --------------------------------------------------------------------------------


def postgres_copy(admin_url: str, template: str, name: str) -> sa.URL:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    admin.dispose()
    return sa.make_url(admin_url).set(database=name)


def postgres_users(args: argparse.Namespace, folder: Path) -> sa.URL:
    """A copy of the users (loaded once, bench.database) with a change time and no store."""
    from bench.database import load_users

    users, _ = data.write(folder, args.users, args.audience)
    template = sa.make_url(load_users(args.pg, f"cs_bench_{args.users}", users)).database
    url = postgres_copy(args.pg, template, "cs_bench_incremental")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in sa.inspect(conn).get_table_names():
            if table.startswith("cs_"):
                conn.exec_driver_sql(f"DROP TABLE {table} CASCADE")
        conn.exec_driver_sql(
            "ALTER TABLE netmera_users ADD COLUMN changed_at timestamptz NOT NULL "
            f"DEFAULT '{BASE_TIME}+00'"
        )
        conn.exec_driver_sql(
            "CREATE INDEX ix_netmera_users_changed_at ON netmera_users (changed_at)"
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE netmera_users")
    engine.dispose()
    return url


def sqlite_users(args: argparse.Namespace, folder: Path, work: Path) -> Path:
    from bench.sqlite import load_users

    users, _ = data.write(folder, args.sqlite_users, args.audience)
    path = work / "netmera.sqlite"
    shutil.copyfile(load_users(folder, users)["indexed"], path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"ALTER TABLE netmera_users ADD COLUMN changed_at TEXT DEFAULT '{BASE_TIME}'")
        conn.execute(f"CREATE INDEX {CHANGED_INDEX} ON netmera_users (changed_at)")
    conn.close()
    return path


def sqlite_conn(path: Path) -> dict[str, Any]:
    return {"conn_type": "sqlite", "host": str(path)}


# -- one backend's run ---------------------------------------------------------------------------


def run_backend(args: argparse.Namespace, backend: str, work: Path) -> dict[str, Any]:
    users = args.users if backend == "postgres" else args.sqlite_users
    folder = ROOT / ".local" / "bench" / f"{users}x{args.audience}"
    if backend == "postgres":
        url = postgres_users(args, folder)
        conn = netmera_db(url)
    else:
        path = sqlite_users(args, folder, work)
        conn = sqlite_conn(path)
    conn["extra"] = {"changed_at_column": "changed_at"}
    audience = pq.read_table(data.write_audience(folder / "audience.parquet", users, args.audience))
    source = work / "audience.parquet"
    pq.write_table(audience, source)
    segment = file_segment(source)
    (work / "main").mkdir()
    env = environment(work / "main", conn, [segment])
    first = measure("incremental.refresh", env=env, segment_id=SEGMENT.id).result
    rounds, full, plain = [], None, None
    for round_ in range(1, args.rounds + 1):
        audience = change_source(audience, users, round_)
        pq.write_table(audience, source)
        engine = sa.create_engine(url if backend == "postgres" else f"sqlite:///{path}")
        change_users(engine, users, audience, round_)
        engine.dispose()
        if round_ == 1:  # the same state, in copies of database and store: the floor, full
            state = url if backend == "postgres" else path
            copy, _ = state_copy(args, backend, work, state, "floor", conn)
            floor_env = {**env, "AIRFLOW_CONN_NETMERA_DB": json.dumps(copy)}
            least = measure("incremental.floor", env=floor_env, source=str(source)).result
            full = full_refresh(args, backend, work, state, conn, segment)
            plain = full_refresh(args, backend, work, state, conn, segment, kept=False)
        rounds.append(measure("incremental.refresh", env=env, segment_id=SEGMENT.id).result)
    return {
        "users": users,
        "first": first,
        "full": full,
        "plain": plain,
        "floor": least,
        "rounds": rounds,
    }


def state_copy(
    args: argparse.Namespace,
    backend: str,
    work: Path,
    source: sa.URL | Path,
    name: str,
    conn: dict[str, Any],
) -> tuple[dict[str, Any], sa.Engine]:
    """A copy of the database and store `source` named `name`: its `netmera_db` Connection
    (with `conn`'s extra) and an engine on it."""
    if backend == "postgres":
        copy = postgres_copy(args.pg, source.database, f"cs_bench_incremental_{name}")
        return {**netmera_db(copy), "extra": conn["extra"]}, sa.create_engine(copy)
    shutil.copyfile(source, work / f"{name}.sqlite")
    engine = sa.create_engine(f"sqlite:///{work / name}.sqlite")
    return {**sqlite_conn(work / f"{name}.sqlite"), "extra": conn["extra"]}, engine


def full_refresh(
    args: argparse.Namespace,
    backend: str,
    work: Path,
    source: sa.URL | Path,
    conn: dict[str, Any],
    segment: dict[str, Any],
    kept: bool = True,
) -> dict[str, Any]:
    """A full refresh of the current state, in a copy of database and store: keeping the
    resolutions (`full_refresh: true`, as every `full_refresh_days`), or without the change
    column (`kept=False`: a full refresh as before incremental matching, so the copy's kept
    resolutions are emptied first, untimed: dropping them is a one-off when the column goes,
    not what a refresh did before)."""
    name = "full" if kept else "plain"
    other, engine = state_copy(args, backend, work, source, name, conn)
    if not kept:
        other["extra"] = {}
        with engine.begin() as db:
            for table in ("cs_resolution_terms", "cs_resolutions", "cs_resolution_state"):
                db.exec_driver_sql(f"DELETE FROM {table}")
    engine.dispose()
    (work / name).mkdir()
    env = environment(work / name, other, [segment])
    conf = {"full_refresh": True} if kept else None
    return measure("incremental.refresh", env=env, segment_id=SEGMENT.id, conf=conf).result


# -- the report ----------------------------------------------------------------------------------

COMPARED = ("connector_users", "netmera_users", "reachable", "reasons", "matched_by", "members")


def _refresh_seconds(run: dict[str, Any]) -> float:
    """The refresh's own time: its steps, extract to publish, as the run record has them.
    `dag.test()` around it also builds Airflow's execution API in the process and starts the
    task (5-6 s here, the same for each), which a running deployment does not pay per run."""
    return sum(run["steps"].values())


def _matched(run: dict[str, Any]) -> int:
    """The source users a refresh matched (all of them where it keeps no resolutions)."""
    return run["connector_users"] if run["rematched"] is None else run["rematched"]


def report(args: argparse.Namespace, backend: str, found: dict[str, Any]) -> bool:
    full, inc, rounds = found["full"], found["rounds"][0], found["rounds"]
    plain = found["plain"]
    name = {"postgres": "PostgreSQL", "sqlite": "SQLite"}[backend]
    print(
        f"\n{name}: {args.audience:,} source rows x {found['users']:,} Netmera users; each round "
        "1 % of the source and 0.1 % of the users changed; round 1, seconds"
    )
    head = (
        ("refresh s", 10),
        ("dag.test s", 11),
        ("match s", 9),
        ("publish s", 10),
        ("re-matched", 12),
        ("x full", 8),
    )
    print(f"{'refresh':<17}" + "".join(f"{title:>{width}}" for title, width in head))
    for label, r in (("full, kept", full), ("full, as before", plain), ("incremental", inc)):
        print(
            f"{label:<17}{_refresh_seconds(r):>10.2f}{r['wall']:>11.2f}{r['steps']['match']:>9.2f}"
            f"{r['steps']['publish']:>10.2f}{_matched(r):>12,}"
            f"{_refresh_seconds(r) / _refresh_seconds(full):>8.2f}"
        )
    least = _floor_seconds(inc, found["floor"])
    print(
        f"{'floor':<17}{least:>10.2f}{'-':>11}{found['floor']['seconds']:>9.2f}"
        f"{inc['steps']['publish']:>10.2f}{0:>12,}{least / _refresh_seconds(full):>8.2f}"
    )
    same = all(full[k] == inc[k] == plain[k] for k in COMPARED)
    differ = [k for k in COMPARED if not full[k] == inc[k] == plain[k]]
    verdict = "the same members, counts, reasons and per-kind matches"
    print(f"  exact: {verdict if same else 'NO: ' + ', '.join(differ)}")
    audience = inc["connector_users"]
    written = max((r["added"] + r["removed"]) / audience for r in rounds)
    stored = rounds[-1]["stored"] / rounds[-1]["netmera_users"]
    ratio = _refresh_seconds(inc) / _refresh_seconds(full)
    print(
        f"  publish rows written per refresh: at most {written:.2%} of the audience; "
        f"cs_members after {len(rounds)} refreshes: {rounds[-1]['stored']:,} rows = "
        f"{stored:.2f} x the members"
    )
    print(
        f"  targets: incremental <= {TARGETS['time']:.0%} of full: {ratio:.1%}; rows written "
        f"<= {TARGETS['written']:.0%}: {written:.2%}; cs_members <= {TARGETS['stored']} x: "
        f"{stored:.2f}"
    )
    print(
        f"  floor: {least / _refresh_seconds(full):.1%} of full (the incremental refresh's "
        "extract, validate and publish, and what its match must do over every source user "
        "whatever changed: digests and their comparison, Netmera's changes, the deletion check)"
    )
    return same


def _floor_seconds(inc: dict[str, Any], least: dict[str, Any]) -> float:
    """The least an incremental refresh by issue 23's design can take here: its own steps
    other than match as measured, and the part of match that is the same whatever changed
    (`floor`)."""
    return _refresh_seconds(inc) - inc["steps"]["match"] + least["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000_000, help="PostgreSQL's users")
    parser.add_argument("--sqlite-users", type=int, default=200_000)
    parser.add_argument("--audience", type=int, default=1_000_000, help="source rows")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--pg", default=os.environ.get("CONNECTOR_SEGMENTS_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()
    exact = True
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"cs-bench-incremental-{backend}-") as tmp:
            found = run_backend(args, backend, Path(tmp))
        exact &= report(args, backend, found)
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
