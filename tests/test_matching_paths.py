"""Matching at scale: the database path and the worker path give identical results, on SQLite
and on PostgreSQL; the database path leaves nothing behind; the worker path spills within its
memory limit; the vectorised phone reading equals phonenumbers'; `doctor` says what is missing.

Everything runs through public interfaces (`match_audience`, the refresh's match step,
`normalize_array`, `include.cli.main`) on real SQLite files and a real PostgreSQL database.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import tempfile
from pathlib import Path

import phonenumbers
import pyarrow as pa
import pyarrow.compute
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.config.segments import IdentifierKind, SegmentConfig
from include.matching.audience import identifier_reader
from include.matching.normalize import normalize_array, to_e164
from include.matching.paths import choose_path
from include.matching.phones import e164_array
from include.matching.pipeline import match_audience, match_identifiers
from include.matching.rules import REASONS
from include.matching.user_table import UserTable
from include.matching.worker import Worker
from include.staging import run_dir, stage_audience
from tests.conftest import USERS_DDL, cli
from tests.test_matching import (
    PROPERTY_SEGMENT,
    USER_COLUMNS,
    expected_outcome,
    netmera_devices,
    segment,
    source_users,
)

FIELDS = ("ext", "mail", "phone", "mail_hash", "phone_hash", "dev")


def tr_segment(*identifiers: tuple[str, str]) -> SegmentConfig:
    return segment(*identifiers, default_region="TR")


DATABASE_PATH = {"match_path": "database"}  # the netmera_db extra forcing the database path
SEGMENT = tr_segment(
    ("ext", "external_id"),
    ("mail", "email"),
    ("phone", "msisdn"),
    ("mail_hash", "email_sha256"),
    ("phone_hash", "msisdn_sha256"),
    ("dev", "installation_id"),
)


# -- one data set exercising every rule ---------------------------------------------------------


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def phone(i: int) -> str:
    return f"+90532{i:07d}"


def netmera_rows() -> list[tuple]:
    """One row per device: two devices for some users, push permission varied, an email and an
    extId shared by two users, a row without user id, legacy and non-ASCII stored values."""
    rows = []
    for i in range(60):
        email = "shared@x.io" if i in (5, 6) else f"ü{i}@x.io" if i == 9 else f"m{i}@x.io"
        for d in range(1 + i % 2):
            rows.append(
                (
                    f"U{i:02d}",
                    f"e{i}",
                    email,
                    phone(i),
                    f"i{i}-{d}",
                    [True, False, None][(i + d) % 3],
                )
            )
    rows.append((None, "e-orphan", None, None, "i-orphan", True))
    rows.append(("U61", "e7", None, None, "i-61", True))  # e7 is U07's too: ambiguous
    rows.append(("U62", "e62", "Legacy@X.io", "05320000062", "i-62", True))  # stored as typed
    rows.append(("U63", "NA", None, None, "null", True))  # texts CSV readers take for null
    return rows


def audience_rows(seed: int = 4) -> list[dict]:
    """Source rows: right and messy spellings, unknown and invalid values, blanks, duplicates."""
    rng = random.Random(seed)
    rows = []
    for k in range(240):
        i = rng.randrange(70)  # >= 63: nobody in Netmera
        pick = rng.random
        rows.append(
            {
                "uid": f" s{k % 200} ",  # some keys twice: their identifiers are pooled
                "ext": rng.choice([f"e{i}", f" e{i}\t", "e-orphan", "", None])
                if pick() < 0.5
                else None,
                "mail": rng.choice(
                    [
                        f"m{i}@x.io",
                        f"M{i}@X.IO ",
                        "shared@x.io",
                        "legacy@x.io",
                        "not-an-email",
                        f"ü{i}@x.io",
                    ]
                )
                if pick() < 0.5
                else None,
                "phone": rng.choice(
                    [phone(i), f"0532 {i:03d} 00 00", f"90532{i:07d}", "12", f"+90 532 {i:07d}"]
                )
                if pick() < 0.4
                else None,
                "mail_hash": rng.choice([sha(f"m{i}@x.io"), sha(f"ü{i}@x.io").upper(), "zz"])
                if pick() < 0.2
                else None,
                "phone_hash": rng.choice([sha(phone(i)), sha(f"0532{i:07d}")])
                if pick() < 0.2
                else None,
                "dev": rng.choice([f"i{i}-0", f"i{i}-1", "i-orphan"]) if pick() < 0.3 else None,
            }
        )
    # Values CSV readers take for null by default: matched, or invalid, never lost.
    rows.append({"uid": "s-na", "ext": "NA", "phone": "n/a"})
    rows.append({"uid": "s-null", "phone": "n/a", "dev": "null"})
    rows.append({"uid": "s-phone-na", "phone": "N/A"})
    return rows


def stage(folder: Path, rows: list[dict]) -> Path:
    schema = pa.schema([(f, pa.string()) for f in SEGMENT.source_fields])
    batches = [
        pa.RecordBatch.from_pylist(rows[i : i + 50], schema=schema) for i in range(0, len(rows), 50)
    ]
    return Path(
        stage_audience(batches, SEGMENT.source_fields, "uid", folder / "audience.parquet").path
    )


def file_segment(workspace: Path) -> SegmentConfig:
    """SEGMENT reading the audience from a CSV file in `workspace`, as a refresh would."""
    csv = workspace / "audience.csv"
    pa.csv.write_csv(
        pa.Table.from_pylist(
            audience_rows(), pa.schema([(f, pa.string()) for f in ("uid", *FIELDS)])
        ),
        csv,
    )
    return SEGMENT.model_copy(
        update={"source": SEGMENT.source.model_copy(update={"path": str(csv)})}
    )


def load_users(engine: sa.Engine, rows: list[tuple]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(USERS_DDL)
        if rows:
            conn.execute(
                sa.text("INSERT INTO netmera_users VALUES (:u, :x, :e, :m, :i, :p)"),
                [dict(zip("uxemip", row, strict=True)) for row in rows],
            )


def members_of(path: str) -> list[dict]:
    """The members file's rows, in user id order (the file's order is not part of it)."""
    rows = pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda r: (r["user_id"] is None, r["user_id"] or ""))


def unmatched_of(result: dict) -> list[dict]:
    """The unmatched source users the result's file holds, by user key (popping its path)."""
    return sorted(
        pq.read_table(result.pop("unmatched_path")).to_pylist(), key=lambda r: r["user_key"]
    )


def outcome(engine: sa.Engine, folder: Path, path: str, rows: list[dict] | None = None) -> dict:
    """match_audience on one path → everything a run records, members as written."""
    work = folder / path
    work.mkdir()
    staged = stage(work, rows or audience_rows())
    result = match_audience(SEGMENT, staged, engine, UserTable(), {"match_path": path}, work)
    found = result.to_dict()
    found["members"] = members_of(found.pop("members_path"))
    found["unmatched"] = unmatched_of(found)
    return found


@pytest.fixture
def sqlite_users(tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'netmera.db'}")
    load_users(engine, netmera_rows())
    yield engine
    engine.dispose()


@pytest.fixture
def pg_users(pg_database: dict) -> sa.Engine:
    engine = sa.create_engine(pg_database["url"])
    load_users(engine, netmera_rows())
    yield engine
    engine.dispose()


def test_both_paths_give_identical_members_reasons_and_counts_on_sqlite(
    sqlite_users: sa.Engine, tmp_path: Path
) -> None:
    in_database = outcome(sqlite_users, tmp_path, "database")
    on_worker = outcome(sqlite_users, tmp_path, "worker")
    assert in_database == on_worker
    # The data set is worth comparing on: every reason and every kind occurs.
    assert all(in_database["reasons"][r] for r in REASONS), in_database["reasons"]
    assert all(in_database["matched_by"].values()), in_database["matched_by"]
    assert {"user_id": None, "matched_by": "external_id"} in in_database["members"]


@pytest.mark.postgres
def test_both_paths_on_postgres_equal_each_other_and_sqlite(
    pg_users: sa.Engine, sqlite_users: sa.Engine, tmp_path: Path
) -> None:
    (tmp_path / "sqlite").mkdir()
    reference = outcome(sqlite_users, tmp_path / "sqlite", "database")
    assert outcome(pg_users, tmp_path, "database") == reference
    assert outcome(pg_users, tmp_path, "worker") == reference
    # With the indexes `doctor` recommends, lookups go through them: the same results.
    create_recommended_indexes(pg_users, SEGMENT)
    (tmp_path / "indexed").mkdir()
    assert outcome(pg_users, tmp_path / "indexed", "database") == reference


def create_recommended_indexes(engine: sa.Engine, seg: SegmentConfig) -> None:
    from include.matching import indexes

    kinds = {i.kind for i in seg.identifiers}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for need in indexes.needed(UserTable(), kinds, "postgresql"):
            for statement in need.create_sql(UserTable(), engine.dialect):
                conn.exec_driver_sql(statement)
    assert indexes.missing(engine, UserTable(), kinds) == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source_users(), netmera_devices)
def test_database_path_follows_the_matching_rules(rows, devices) -> None:
    """The property test of tests/test_matching.py, run on the database path (SQLite)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        engine = sa.create_engine(f"sqlite:///{folder / 'netmera.db'}")
        load_users(engine, devices)
        schema = pa.schema([(f, pa.string()) for f in PROPERTY_SEGMENT.source_fields])
        staged = stage_audience(
            [pa.RecordBatch.from_pylist([r for r, _ in rows], schema=schema)],
            PROPERTY_SEGMENT.source_fields,
            "uid",
            folder / "audience.parquet",
        )
        result = match_audience(
            PROPERTY_SEGMENT, Path(staged.path), engine, UserTable(), DATABASE_PATH, folder
        )
        members = {m["user_id"] for m in pq.read_table(result.members_path).to_pylist()}
        engine.dispose()
    want = expected_outcome(rows, devices)
    assert {
        "connector_users": result.connector_users,
        "matched_source_users": result.matched_source_users,
        "netmera_users": result.netmera_users,
        "members": members,
        "reachable": result.reachable,
        "reasons": result.reasons,
        "matched_by": {k: n for k, n in result.matched_by.items() if n},
    } == want


# -- the path is chosen per deployment ----------------------------------------------------------


def create_sqlite_indexes(engine: sa.Engine, kinds: set[IdentifierKind]) -> None:
    """The indexes `doctor` recommends on SQLite for `kinds`, by its own statements."""
    from include.matching import indexes

    with engine.begin() as conn:
        for need in indexes.needed(UserTable(), kinds, "sqlite"):
            for statement in need.create_sql(UserTable(), engine.dialect):
                conn.exec_driver_sql(statement)


def test_auto_on_sqlite_takes_the_database_path_only_indexed_and_for_a_small_audience(
    sqlite_users: sa.Engine,
) -> None:
    """Issue #9: without the indexes the database path needs, SQLite builds one over the whole
    table per kind on every run, and with them a large audience costs more looked up than the
    whole table streamed to the worker: auto takes the worker path for both."""
    table, rows = UserTable(), len(netmera_rows())
    kinds = {i.kind for i in SEGMENT.identifiers}
    small, large = rows // 20, rows // 5  # 1/20 and 1/5 of the table's rows
    # No index on any identifier column: the worker path, whatever the audience.
    assert choose_path(sqlite_users, {}, table, small, kinds) == "worker"
    assert choose_path(sqlite_users, {}, table, 1) == "worker"
    create_sqlite_indexes(sqlite_users, kinds - {IdentifierKind.EMAIL})
    # One kind of the segment lacks its index: still the worker path; a segment that does
    # not match on it takes the database path.
    assert choose_path(sqlite_users, {}, table, small, kinds) == "worker"
    assert choose_path(sqlite_users, {}, table, small, kinds - {IdentifierKind.EMAIL}) == (
        "database"
    )
    create_sqlite_indexes(sqlite_users, kinds)
    # Every index: the database path for a small audience, the worker path for a large one.
    assert choose_path(sqlite_users, {}, table, small, kinds) == "database"
    assert choose_path(sqlite_users, {"match_path": "auto"}, table, small) == "database"
    assert choose_path(sqlite_users, {}, table, large, kinds) == "worker"
    assert choose_path(sqlite_users, {}, table, 10**6, kinds) == "worker"


def test_the_connection_extra_overrides_auto(sqlite_users: sa.Engine) -> None:
    table = UserTable()
    assert choose_path(sqlite_users, {"match_path": "database"}, table, 10**6) == "database"
    assert choose_path(sqlite_users, {"match_path": "worker"}, table, 10) == "worker"
    with pytest.raises(ValueError, match="match_path"):
        choose_path(sqlite_users, {"match_path": "in-memory"}, table, 10)


def test_refresh_with_auto_on_sqlite_takes_the_path_its_indexes_allow(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh's match step with `match_path` unset: the worker path on a table without
    indexes, the database path once `doctor`'s indexes exist (the audience being a small part
    of the table); the same run record either way."""
    from include.orchestration import refresh

    engine = sa.create_engine(f"sqlite:///{workspace / 'netmera.db'}")
    filler = [(f"F{i}", f"f{i}", f"f{i}@y.io", None, f"fi{i}", False) for i in range(3_000)]
    load_users(engine, netmera_rows() + filler)
    config = file_segment(workspace)
    recorded = {}
    for indexed in (False, True):
        if indexed:
            create_sqlite_indexes(engine, {i.kind for i in SEGMENT.identifiers})
        run_id = f"manual__{indexed}"
        refresh.start(config, run_id, dry_run=False, approve=False)
        staged = refresh.extract(config, run_id)
        result = refresh.match(config, run_id, staged).to_dict()
        # Only the database path brings lookups back from the database (hits.parquet).
        assert (run_dir(config.id, run_id) / "hits.parquet").exists() == indexed
        result["unmatched"] = unmatched_of(result)
        recorded[indexed] = (result, members_of(result.pop("members_path")))
    engine.dispose()
    assert recorded[False] == recorded[True]


def test_sqlite_database_path_work_grows_linearly_with_the_audience(tmp_path: Path) -> None:
    """Issue #9: each lookup asked, per audience row, whether that row's source user or value
    was already in cs_hits, and SQLite (no hash join) answered by scanning all of cs_hits:
    work quadratic in the audience (200,000 source rows: not done in 15 minutes). Counted in
    SQLite VM steps (deterministic, unlike time): twice the audience must cost about twice
    the steps, not four times."""
    from sqlalchemy import event

    def steps(size: int) -> int:
        folder = tmp_path / str(size)
        folder.mkdir()
        engine = sa.create_engine(f"sqlite:///{folder / 'netmera.db'}")
        load_users(
            engine,
            [(f"U{i}", f"e{i}", f"m{i}@x.io", phone(i), f"i{i}", i % 2 == 0) for i in range(size)],
        )
        create_sqlite_indexes(engine, {i.kind for i in SEGMENT.identifiers})
        # Source users matched by each kind in turn, and some by none: every lookup and every
        # "not found" pass sees audience-sized tables.
        rows = [
            {
                "uid": f"s{i}",
                "ext": f"e{i}" if i % 4 == 0 else f"x{i}",
                "mail": f"m{i}@x.io" if i % 4 == 1 else f"x{i}@z.io",
                "phone": phone(i) if i % 4 == 2 else None,
                "mail_hash": sha(f"m{i}@x.io") if i % 4 == 3 else None,
            }
            for i in range(size)
        ]
        counted = [0]

        @event.listens_for(engine, "connect")
        def count_steps(dbapi_connection, _record) -> None:
            def step() -> int:
                counted[0] += 1
                return 0  # carry on

            dbapi_connection.set_progress_handler(step, 1_000)

        engine.pool.dispose()  # the connection load_users opened has no handler
        result = match_audience(
            SEGMENT, stage(folder, rows), engine, UserTable(), DATABASE_PATH, folder
        )
        engine.dispose()
        assert result.matched_source_users == size // 4 * 4
        return counted[0]

    small, large = steps(2_000), steps(4_000)
    assert large < 3 * small, (small, large)


@pytest.mark.postgres
def test_auto_on_postgres_streams_the_table_only_for_an_audience_too_large_to_probe(
    pg_users: sa.Engine,
) -> None:
    with pg_users.begin() as conn:
        conn.exec_driver_sql("ANALYZE netmera_users")  # the row estimate auto reads
    rows = len(netmera_rows())
    table = UserTable()
    assert choose_path(pg_users, {}, table, rows // 50) == "database"
    assert choose_path(pg_users, {}, table, rows // 5) == "worker"
    assert choose_path(pg_users, {"match_path": "database"}, table, rows) == "database"


def test_refresh_match_step_gives_the_same_run_record_on_either_path(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.orchestration import refresh

    engine = sa.create_engine(f"sqlite:///{workspace / 'netmera.db'}")
    load_users(engine, netmera_rows())
    engine.dispose()
    config = file_segment(workspace)
    recorded = {}
    for path in ("database", "worker"):
        extra = {"match_path": path}
        monkeypatch.setenv(
            "AIRFLOW_CONN_NETMERA_DB",
            json.dumps(
                {"conn_type": "sqlite", "host": str(workspace / "netmera.db"), "extra": extra}
            ),
        )
        run_id = f"manual__{path}"
        refresh.start(config, run_id, dry_run=False, approve=False)
        staged = refresh.extract(config, run_id)
        result = refresh.match(config, run_id, staged).to_dict()
        # Only the database path brings lookups back from the database (hits.parquet).
        looked_up = (run_dir(config.id, run_id) / "hits.parquet").exists()
        assert looked_up == (path == "database")
        members = members_of(result.pop("members_path"))
        result["unmatched"] = unmatched_of(result)
        recorded[path] = (result, members)
    assert recorded["database"] == recorded["worker"]


# -- bounded memory -----------------------------------------------------------------------------


def test_database_path_leaves_no_table_behind_and_never_writes_the_user_table(
    sqlite_users: sa.Engine, tmp_path: Path
) -> None:
    before = (
        sqlite3.connect(tmp_path / "netmera.db").execute("SELECT * FROM netmera_users").fetchall()
    )
    first = outcome(sqlite_users, tmp_path, "database")
    # The pooled connection is reused: a leftover temporary table would break this run.
    (tmp_path / "again").mkdir()
    assert outcome(sqlite_users, tmp_path / "again", "database") == first
    with sqlite_users.connect() as conn:
        temp = conn.exec_driver_sql("SELECT name FROM sqlite_temp_master").fetchall()
        tables = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ).fetchall()
    assert temp == []
    assert tables == [("netmera_users",)]
    after = (
        sqlite3.connect(tmp_path / "netmera.db").execute("SELECT * FROM netmera_users").fetchall()
    )
    assert after == before


@pytest.mark.postgres
def test_database_path_on_postgres_leaves_no_table_behind(
    pg_users: sa.Engine, tmp_path: Path
) -> None:
    first = outcome(pg_users, tmp_path, "database")
    (tmp_path / "again").mkdir()
    assert outcome(pg_users, tmp_path / "again", "database") == first
    with pg_users.connect() as conn:
        leftovers = conn.execute(
            sa.text("SELECT relname FROM pg_class WHERE relname LIKE :p AND relkind = 'r'"),
            {"p": "cs\\_%"},
        ).fetchall()
        rows = conn.exec_driver_sql("SELECT count(*) FROM netmera_users").scalar()
    assert leftovers == []
    assert rows == len(netmera_rows())


def test_worker_path_spills_to_disk_within_its_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400,000 users under a 64 MB limit (its temporary tables alone take ~80 MB): DuckDB spills
    to the run folder, and the results are those of an unlimited run."""
    size = 400_000
    numbers = pa.array(range(size)).cast(pa.string())
    join = pa.compute.binary_join_element_wise
    users = tmp_path / "users.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": join("U", numbers, ""),
                "external_id": join("e", numbers, ""),
                "email": join("m", numbers, "@x.io", ""),
                "push_permitted": pa.array([i % 2 == 0 for i in range(size)]),
            }
        ),
        users,
        row_group_size=50_000,
    )
    half = numbers.slice(0, size // 2)
    audience = tmp_path / "audience.parquet"
    pq.write_table(
        pa.table(
            {
                "uid": join("s", half, ""),
                "ext": join("e", half, "0", ""),
                "mail": join("M", half, "@X.io", ""),
            }
        ),
        audience,
    )
    segment = SegmentConfig.model_validate(
        {
            **SEGMENT.model_dump(exclude={"identifiers"}),
            "identifiers": [
                {"field": "ext", "kind": "external_id"},
                {"field": "mail", "kind": "email"},
            ],
        }
    )
    results = []
    for limit in ("8GB", "64MB"):
        monkeypatch.setenv("CONNECTOR_SEGMENTS_DUCKDB_MEMORY", limit)
        work = tmp_path / limit
        work.mkdir()
        identifiers = identifier_reader(segment, audience)
        result = match_identifiers(segment, identifiers, Worker(users), work).to_dict()
        result["members"] = members_of(result.pop("members_path"))
        result["unmatched"] = unmatched_of(result)
        results.append(result)
    assert results[0] == results[1]
    assert results[0]["matched_source_users"] == size // 2


# -- phones only phonenumbers can read are read only where they can change a result --------


PHONE_NUMBERS = [f"+90532{i:07d}" for i in range(4)]
# Spellings of a number the vectorised reading leaves to phonenumbers (and one it cannot read).
DEFERRED_SPELLINGS = [
    lambda e164: f"Tel: {e164}",
    lambda e164: f"{e164} ext. 5",
    lambda e164: "\uff10" + e164[3:],  # full-width trunk zero, then the national number
    lambda e164: "n/a",
]
DEFER_SEGMENT = tr_segment(("ext", "external_id"), ("mail", "email"), ("phone", "msisdn"))


@st.composite
def deferred_audiences(draw: st.DrawFn) -> tuple[list[dict], list[tuple]]:
    devices = [
        (
            draw(st.sampled_from(["u0", "u1", "u2", None])),
            draw(st.sampled_from([None, "e0", "e1"])),
            draw(st.sampled_from([None, "m0@x.io", "m1@x.io"])),
            draw(st.sampled_from([None, *PHONE_NUMBERS])),
            None,
            draw(st.booleans()),
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    rows = []
    for key in range(draw(st.integers(1, 6))):
        number = draw(st.sampled_from(PHONE_NUMBERS))
        spell = draw(st.sampled_from([lambda e: e, *DEFERRED_SPELLINGS]))
        rows.append(
            {
                "uid": f"s{key % 4}",
                "ext": draw(st.sampled_from([None, "e0", "e1", "e9"])),
                "mail": draw(st.sampled_from([None, "m0@x.io", "M1@x.io", "zz@x.io"])),
                "phone": draw(st.sampled_from([None, spell(number)])),
            }
        )
    return rows, devices


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deferred_audiences())
def test_deferred_phones_give_the_results_of_reading_every_phone(case) -> None:
    """Deferring, reading only open users' deferred phones, gives exactly what normalising
    every phone up front gives."""
    rows, devices = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        schema = pa.schema([(f, pa.string()) for f in DEFER_SEGMENT.source_fields])
        staged = Path(
            stage_audience(
                [pa.RecordBatch.from_pylist(rows, schema=schema)],
                DEFER_SEGMENT.source_fields,
                "uid",
                folder / "audience.parquet",
            ).path
        )
        pq.write_table(
            pa.Table.from_pylist(
                [dict(zip(USER_COLUMNS, d, strict=True)) for d in devices],
                pa.schema(
                    [
                        (c, pa.bool_() if c == "push_permitted" else pa.string())
                        for c in USER_COLUMNS
                    ]
                ),
            ),
            folder / "users.parquet",
        )
        results = []
        for defer in (True, False):
            work = folder / str(defer)
            work.mkdir()
            identifiers = identifier_reader(DEFER_SEGMENT, staged, defer=defer)
            users = Worker(folder / "users.parquet")
            found = match_identifiers(DEFER_SEGMENT, identifiers, users, work).to_dict()
            found["members"] = members_of(found.pop("members_path"))
            found["unmatched"] = unmatched_of(found)
            results.append(found)
    assert results[0] == results[1]


# -- the vectorised phone reading is phonenumbers' reading --------------------------------------

REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


@st.composite
def phone_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(default region, a spelling): example numbers of a region with digits changed, written
    as sources write them (E.164, spaced, national with trunk prefix, digits only, 00, ...)."""
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from(phonenumbers.PhoneNumberType.values()))
    example = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(
        region
    )
    nsn = list(phonenumbers.national_significant_number(example)) if example else ["5"]
    for _ in range(draw(st.integers(0, 3))):
        nsn[draw(st.integers(0, len(nsn) - 1))] = draw(st.sampled_from("0123456789"))
    nsn = "".join(nsn) + draw(st.sampled_from(["", "", "7"]))
    code = str(example.country_code if example else 1)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    trunk = (metadata.national_prefix or "") if metadata else ""
    spelled = draw(
        st.sampled_from(
            [
                f"+{code}{nsn}",
                f"+{code} {nsn[:3]} {nsn[3:]}",
                f"+{code} (0) {nsn}",
                f"{trunk}{nsn}",
                f"{trunk} {nsn[:2]}-{nsn[2:]}.",
                f"({nsn[:3]}) {nsn[3:]}",
                f"{code}{nsn}",
                f"00{code}{nsn}",
                f"011 {code} {nsn}",
                f"{nsn[:2]}",
                f"+{nsn}",
            ]
        )
    )
    default = draw(st.sampled_from([region, region, "TR", "US", "GB", "DE", "BR", None]))
    return default, spelled


@settings(max_examples=400, deadline=None)
@given(st.lists(phone_spellings(), min_size=1, max_size=20))
def test_vectorised_phone_reading_equals_phonenumbers(cases: list[tuple[str, str]]) -> None:
    for region in {r for r, _ in cases}:
        values = [v for r, v in cases if r == region]
        got = normalize_array(IdentifierKind.MSISDN, pa.array(values, pa.string()), region)
        assert got.to_pylist() == [to_e164.__wrapped__(v, region) for v in values], region


def test_common_spellings_take_the_vectorised_reading() -> None:
    values = [
        "+905321234567",
        "+90 532 123 45 67",
        "0532 123 45 67",
        "905321234567",
        "0090-532-1234567",
        "(532) 123-4567",
        "12345",
        "+4915123456789",
    ]
    formatted, decided = e164_array(pa.array(values), "TR")
    assert decided.all()
    assert formatted.to_pylist() == [to_e164.__wrapped__(v, "TR") for v in values]


# -- doctor -------------------------------------------------------------------------------------


def doctor(capsys) -> tuple[int, dict]:
    code, out, _ = cli(capsys, "doctor", "--json")
    return code, {c["check"]: c for c in json.loads(out)["checks"]}


def test_doctor_names_what_is_missing_and_is_satisfied_once_it_is_done(
    workspace: Path, capsys
) -> None:
    engine = sa.create_engine(f"sqlite:///{workspace / 'netmera.db'}")
    load_users(engine, netmera_rows())
    code, checks = doctor(capsys)
    assert code == 1
    assert checks["connection"]["status"] == "ok"
    # SQLite without the database path's indexes: auto takes the worker path until they exist.
    assert "match path: worker (auto: database path once" in checks["connection"]["detail"]
    assert checks["migrations"]["status"] == "missing"
    assert "cs_alembic_version" in checks["migrations"]["detail"]
    missing = [c for c in checks.values() if c["check"].startswith("index ")]
    assert {c["check"] for c in missing} == {
        "index user_id",
        "index external_id",
        "index email",
        "index msisdn",
        "index installation_id",
    }
    assert all(c["status"] == "missing" for c in missing)

    # Do what it says: its statements create the indexes; any CLI command migrates the store.
    with engine.begin() as conn:
        for check in missing:
            conn.exec_driver_sql(check["fix"].rstrip(";"))
    engine.dispose()
    cli(capsys, "details", "any")  # opening the store migrates it
    code, checks = doctor(capsys)
    assert code == 0, checks
    assert {c["status"] for c in checks.values()} <= {"ok", "warn"}  # warn: hashed kinds
    # The database path for audiences under 1/10 of the table's rows, now that they exist.
    limit = -(-len(netmera_rows()) // 10)
    assert (
        f"match path: database (auto: worker for audiences of {limit} rows or more)"
        in (checks["connection"]["detail"])
    )
    code, out, _ = cli(capsys, "doctor")
    assert code == 0 and "0 missing" in out


def test_doctor_without_a_connection_says_so(
    workspace: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NETMERA_DB")
    code, checks = doctor(capsys)
    assert code == 1
    assert checks["connection"]["status"] == "missing"
    assert "netmera_db" in checks["connection"]["detail"]


@pytest.mark.postgres
def test_doctor_on_postgres_recommends_concurrent_indexes_that_then_satisfy_it(
    workspace: Path, capsys, monkeypatch: pytest.MonkeyPatch, pg_users: sa.Engine, pg_database: dict
) -> None:
    pg = {k: v for k, v in pg_database.items() if k != "url"}
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", json.dumps(pg))
    cli(capsys, "details", "any")  # opening the store migrates it
    code, checks = doctor(capsys)
    assert code == 1
    fixes = [c["fix"] for c in checks.values() if c["status"] == "missing"]
    assert fixes and all("CREATE INDEX CONCURRENTLY" in f for f in fixes)
    assert any("cs_sha256_hex" in f for f in fixes)  # hashed kinds get an expression index
    with pg_users.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for fix in fixes:
            for statement in filter(None, (s.strip() for s in fix.split(";"))):
                conn.exec_driver_sql(statement)
    code, checks = doctor(capsys)
    assert code == 0, checks
