"""Matching at scale, side by side, on the same data in one run (docs/matching-at-scale.md).

    python -m bench.matching                                   # 10,000,000 users x 1,000,000
    python -m bench.matching --users 200000 --audience 20000   # a quick run
    python -m bench.matching --groups engine,dags              # skip PostgreSQL
    python -m bench.matching --groups sqlite                   # SQLite, 1,000,000 x 200,000

Groups (each figure measured in a child process of its own: wall time, peak RSS; best of
`--repeat` runs, the pandas baselines once):
- engine: users and audience as Parquet: DuckDB join of already-normalised identifiers (the
  floor) vs our matcher core (normalisation, priority, ambiguity, reasons: the user table
  without its push permission column) vs our matcher with the reachable count (one more pass
  over the user table) vs pandas `merge`;
- database: the users in PostgreSQL, indexed as `doctor` recommends: the database path (a) vs
  the worker path (b) vs pandas `read_sql` + `merge`;
- dags: parsing the segment DAG files (every shard) with 500 segment files vs one;
- sqlite: the embedded default at a small tenant's size (`--sqlite-users`, `--sqlite-audience`:
  1,000,000 x 200,000, every identifier kind), users in SQLite with the indexes `doctor`
  recommends and without any on the identifier columns: the worker path vs the database path
  (killed past `--sqlite-limit` seconds, printed "> N") vs `auto` (its choice timed too); and
  an audience of a tenth of that on the indexed table, where auto takes the database path.
Ratios are to the first row of each group: the floor (engine), the path `auto` takes
(database), the one-segment parse (dags), the worker path (sqlite). Every approach of a group
must report the same counts as our matcher, or the run fails. Generated data is kept under
.local/bench/ (the PostgreSQL users in database `cs_bench_<users>`, `--drop-database` removes
it afterwards; the SQLite users in .local/bench/<users>x<audience>/netmera_*.sqlite).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import ROOT, Measurement, measure

MIB = 1024 * 1024
DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def prepare(users: int, audience: int, folder: Path) -> dict[str, Path]:
    """Generate (or reuse) the data, the normalised identifiers the floor starts from, and the
    users without their push permission column (what our core is timed on)."""
    import pyarrow.parquet as pq

    from bench import data
    from include.matching.audience import identifier_reader, write_identifiers

    users_path, audience_path = data.write(folder, users, audience)
    identifiers = folder / "identifiers.parquet"
    if not identifiers.exists():
        write_identifiers(identifier_reader(data.SEGMENT, audience_path, defer=False), identifiers)
    users_ids = folder / "users_identifiers.parquet"
    if not users_ids.exists():  # row group by row group: the same layout as users.parquet
        source = pq.ParquetFile(users_path)
        schema = source.schema_arrow.remove(source.schema_arrow.get_field_index("push_permitted"))
        with pq.ParquetWriter(users_ids.with_suffix(".tmp"), schema) as writer:
            for group in range(source.num_row_groups):
                writer.write_table(source.read_row_group(group, columns=schema.names))
        users_ids.with_suffix(".tmp").rename(users_ids)
    return {
        "users": users_path,
        "users_ids": users_ids,
        "audience": audience_path,
        "identifiers": identifiers,
    }


def _folder(work: Path, name: str) -> str:
    (work / name).mkdir()
    return str(work / name)


def best(repeat: int, task: str, **kwargs: Any) -> Measurement:
    """The fastest of `repeat` runs (this machine's timings vary by ~10% run to run)."""
    return min((measure(task, **kwargs) for _ in range(repeat)), key=lambda m: m.seconds)


def engine_group(files: dict[str, Path], work: Path, repeat: int) -> list[tuple[str, Measurement]]:
    users, audience = str(files["users"]), str(files["audience"])
    floor = best(
        repeat,
        "engine.floor",
        users=users,
        identifiers=str(files["identifiers"]),
        workdir=_folder(work, "floor"),
    )
    core, ours = (
        best(
            repeat, "engine.ours", users=str(table), audience=audience, workdir=_folder(work, name)
        )
        for name, table in (("core", files["users_ids"]), ("ours", users))
    )
    return [
        ("DuckDB join, normalised ids (floor)", floor),
        ("our matcher core", core),
        ("our matcher + reachable count", ours),
        ("pandas merge", measure("engine.pandas", users=users, audience=audience)),
    ]


def database_group(
    files: dict[str, Path], work: Path, admin_url: str, users: int, repeat: int
) -> list[tuple[str, Measurement]]:
    from bench.database import load_users

    url = load_users(admin_url, f"cs_bench_{users}", files["users"])
    audience = str(files["audience"])
    chosen = _auto_choice(url, files["audience"])
    paths = [
        (
            f"path ({letter}): {where}" + (" (auto)" if chosen == path else ""),
            best(
                repeat,
                f"database.path_{letter}",
                url=url,
                audience=audience,
                workdir=_folder(work, f"path_{letter}"),
            ),
        )
        for letter, path, where in (
            ("a", "database", "in PostgreSQL"),
            ("b", "worker", "on the worker"),
        )
    ]
    paths.sort(key=lambda row: not row[0].endswith("(auto)"))  # the path auto takes first
    return [
        *paths,
        ("pandas read_sql + merge", measure("database.pandas", url=url, audience=audience)),
    ]


def _auto_choice(url: str, audience: Path) -> str:
    """The path `match_path: auto` takes for this audience."""
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from bench.data import SEGMENT
    from include.matching.paths import choose_path
    from include.matching.user_table import UserTable

    engine = sa.create_engine(url)
    rows = pq.ParquetFile(audience).metadata.num_rows
    path = choose_path(engine, {}, UserTable(), rows, {i.kind for i in SEGMENT.identifiers})
    engine.dispose()
    return path


def sqlite_group(
    folder: Path, users: int, audience: int, work: Path, repeat: int, limit: float
) -> list[tuple[str, list[tuple[str, Measurement]]]]:
    """(title, rows) per table: the worker path first (the ratios' base), the database path,
    auto (labelled with the path it took); on the first table also the database path as it
    was before issue #9's fix. The database path is cut at `limit` seconds. Runs interleave
    (each approach once per round, best of `repeat` rounds): this machine's load drifts."""
    from bench import data
    from bench.sqlite import load_users

    users_path, audience_path = data.write(folder, users, audience)
    small = audience // 10
    small_path = data.write_audience(folder / f"audience_{small}.parquet", users, small)
    databases = load_users(folder, users_path)
    size = f"{users:,} users x {{:,}} source rows, users in SQLite"
    cases = [
        (size.format(audience) + ", indexed as doctor recommends", "indexed", audience_path),
        (size.format(audience) + ", no index on identifiers", "bare", audience_path),
        (size.format(small) + ", indexed as doctor recommends", "indexed", small_path),
    ]
    groups, reference = [], {}
    for number, (title, db, source) in enumerate(cases):
        approaches = [("worker path", "worker", False), ("database path", "database", False)]
        if number == 0:
            approaches.append(("database path before #9's fix", "database", True))
        approaches.append(("auto", "auto", False))
        found: dict[str, Measurement] = {}
        for round_ in range(repeat):
            for index, (label, path, before_9) in enumerate(approaches):
                if label in found and found[label].cut:
                    continue  # it would be cut again
                m = measure(
                    "sqlite.run",
                    timeout=limit if path == "database" else None,
                    db=str(databases[db]),
                    audience=str(source),
                    workdir=_folder(work, f"sqlite_{number}_{index}_{round_}"),
                    path=path,
                    before_9=before_9,
                )
                if label not in found or m.seconds < found[label].seconds:
                    found[label] = m
        rows = []
        for label, m in found.items():
            took = m.result.pop("path", None)
            rows.append((f"auto (took the {took} path)" if label == "auto" else label, m))
        # Every path on either table gives the same counts for the same audience.
        check_same(rows, reference.setdefault(source, rows[0][1].result))
        groups.append((f"sqlite: {title}", rows))
    return groups


def dags_group(work: Path, repeat: int) -> list[tuple[str, Measurement]]:
    from bench.dags import PRELOAD_ENV, write_segments

    rows = []
    for preload, when in (("1", "Airflow imported"), ("0", "fresh process")):
        for count in (1, 500):
            env = {
                "CONNECTOR_SEGMENTS_DIR": str(write_segments(work / f"segments_{count}", count)),
                "AIRFLOW_HOME": str(work / "airflow"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                PRELOAD_ENV: preload,
            }
            rows.append((f"{count} segment(s), {when}", best(repeat, "dags.parse", env=env)))
    return rows


def check_same(rows: list[tuple[str, Measurement]], reference: dict) -> None:
    """Each approach must report exactly our matcher's counts and reasons (one cut at its time
    limit reports none)."""
    for label, m in rows:
        if not m.cut and m.result != reference:
            raise SystemExit(f"{label} disagrees with our matcher:\n{m.result}\n{reference}")


def table(title: str, rows: list[tuple[str, Measurement]]) -> str:
    base = rows[0][1].seconds
    lines = [title, f"{'approach':40} {'wall s':>9} {'x first':>8} {'peak RSS MiB':>13}"]
    for label, m in rows:
        if m.cut:  # killed at its time limit: at least that long, no RSS
            seconds, ratio = f"> {m.seconds:g}", f"> {m.seconds / base:.1f}"
            lines.append(f"{label:40} {seconds:>9} {ratio:>8} {'-':>13}")
            continue
        lines.append(
            f"{label:40} {m.seconds:9.2f} {m.seconds / base:8.2f} {m.peak_rss / MIB:13,.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.matching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--audience", type=int, default=1_000_000)
    parser.add_argument("--groups", default="engine,database,dags")
    parser.add_argument(
        "--pg",
        default=os.environ.get("CONNECTOR_SEGMENTS_BENCH_PG", DEFAULT_PG),
        help="PostgreSQL URL to create the benchmark database from",
    )
    parser.add_argument("--data", type=Path, default=ROOT / ".local" / "bench")
    parser.add_argument("--drop-database", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per approach (best kept)")
    parser.add_argument("--sqlite-users", type=int, default=1_000_000)
    parser.add_argument("--sqlite-audience", type=int, default=200_000)
    parser.add_argument(
        "--sqlite-limit", type=float, default=300, help="sqlite: cut the database path (s)"
    )
    args = parser.parse_args(argv)
    groups = set(args.groups.split(","))
    files: dict[str, Path] = {}
    if groups & {"engine", "database"}:
        files = prepare(args.users, args.audience, args.data / f"{args.users}x{args.audience}")
    args.data.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cs-bench-", dir=args.data))
    size = f"{args.users:,} users x {args.audience:,} source rows"
    try:
        reference = None
        if "engine" in groups:
            rows = engine_group(files, work, args.repeat)
            reference = rows[2][1].result
            check_same(rows[3:], reference)
            check_same(rows[1:2], {**reference, "reachable": None})
            print(table(f"engine: {size}, both as Parquet", rows), "\n", flush=True)
        if "database" in groups:
            rows = database_group(files, work, args.pg, args.users, args.repeat)
            check_same(rows, reference or rows[0][1].result)
            print(table(f"database: {size}, users in PostgreSQL", rows), "\n", flush=True)
        if "dags" in groups:
            rows = dags_group(work, args.repeat)
            title = f"dags: parse dags/connector_segments_*.py (DagBag), best of {args.repeat}"
            print(table(title, rows[:2]), "\n", flush=True)
            print(table(title, rows[2:]), "\n", flush=True)
        if "sqlite" in groups:
            sqlite_size = (args.sqlite_users, args.sqlite_audience)
            results = sqlite_group(
                args.data / "{}x{}".format(*sqlite_size),
                *sqlite_size,
                work,
                args.repeat,
                args.sqlite_limit,
            )
            for title, rows in results:
                print(table(title, rows), "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.drop_database:
            _drop(args.pg, f"cs_bench_{args.users}")
    return 0


def _drop(admin_url: str, database: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
