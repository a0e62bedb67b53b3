"""Incremental matching publishes exactly what a full match of the same data publishes.

After any sequence of source and user-table changes, a match that carries stored resolutions
over (`match_audience` with the store's `SegmentResolutions`) gives the members, counts,
reasons, per-kind matches and unmatched source users that a full match gives, on both paths;
scenarios for each case the rules make delicate; a DAG run shows `mode` and `rematched`.
Real SQLite files (and PostgreSQL where reachable), real DuckDB, no mocks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.matching.pipeline import match_audience
from include.matching.user_table import UserTable
from include.staging import stage_audience
from include.store.repository import SegmentStore
from include.store.resolutions import SegmentResolutions
from include.store.tables import resolution_terms, resolutions
from tests.conftest import (
    USERS_CHANGED_DDL,
    cli,
    cli_json,
    run_segment,
    sqlite_conn,
    write_csv,
)
from tests.test_matching import segment

SEGMENT = segment(
    ("ext", "external_id"),
    ("mail", "email"),
    ("phone", "msisdn"),
    ("mail_hash", "email_sha256"),
    default_region="TR",
)
FIELDS = ("ext", "mail", "phone", "mail_hash")
# No overlap: these tests commit at once, so what they count re-matched is only what changed
# since the last match (the default overlap reads the last 10 minutes' changes again).
CHANGES = {"changed_at_column": "changed_at", "changed_at_overlap_seconds": 0}
PATHS = ("database", "worker")


def stamp(at: datetime | None = None) -> str:
    """A change time as SQLite's clock writes it (UTC, milliseconds)."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Netmera:
    """Netmera's user table as a map of devices (installation id → user id, extId, email,
    msisdn, push), each row's change time kept as a writer that honours the README's
    guarantee would: set, on the database's clock, on every row of a user whose identifiers
    or push permission changed (a device added, changed, moved or removed)."""

    def __init__(self, path: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}")
        self.devices: dict[str, tuple] = {}
        self.changed: dict[str, str] = {}
        with self.engine.begin() as conn:
            conn.exec_driver_sql(USERS_CHANGED_DDL)

    def set(self, devices: dict[str, tuple]) -> None:
        """The table now holds `devices`; the change times follow."""
        now = stamp()
        changed_users = {
            row[0]
            for d in set(self.devices) | set(devices)
            if self.devices.get(d) != devices.get(d)
            for row in (self.devices.get(d), devices.get(d))
            if row is not None
        }
        self.devices = dict(devices)
        self.changed = {
            d: now if row[0] in changed_users else self.changed.get(d, now)
            for d, row in devices.items()
        }
        self.write()

    def write(self, late: dict[str, str] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM netmera_users")
            rows = [
                (uid, ext, mail, phone, d, push, (late or {}).get(d, self.changed[d]))
                for d, (uid, ext, mail, phone, push) in sorted(self.devices.items())
            ]
            if rows:
                conn.exec_driver_sql("INSERT INTO netmera_users VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def stage(folder: Path, rows: list[dict]) -> Path:
    schema = pa.schema([(f, pa.string()) for f in ("uid", *FIELDS)])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    return Path(stage_audience([batch], ["uid", *FIELDS], "uid", folder / "audience.parquet").path)


def published(result) -> dict:
    """What a refresh publishes and records from a match."""
    found = {
        k: getattr(result, k)
        for k in ("connector_users", "netmera_users", "matched_source_users", "reachable")
    }
    found["reasons"], found["matched_by"] = result.reasons, result.matched_by
    found["members"] = sorted(
        (r["user_id"] or "", r["matched_by"])
        for r in pq.read_table(result.members_path).to_pylist()
    )
    found["unmatched"] = sorted(
        (r["user_key"], r["reason"]) for r in pq.read_table(result.unmatched_path).to_pylist()
    )
    return found


class Refreshes:
    """A segment refreshed again and again: each time incrementally (resolutions kept in a
    real store) and in full, side by side, on one path."""

    def __init__(self, folder: Path, path: str, netmera: Netmera, **extra) -> None:
        self.folder, self.path, self.netmera = folder, path, netmera
        self.extra = {"match_path": path, **CHANGES, **extra}
        # The store lives in the Netmera database, as in production (the deletion check joins
        # the kept users to the user table there).
        self.kept = SegmentResolutions(SegmentStore(netmera.engine).engine, SEGMENT.id)
        self.runs = itertools.count()

    def refresh(self, rows: list[dict], *, full_refresh: bool = False):
        """Match `rows` both ways; assert they publish the same; the incremental result."""
        n = next(self.runs)
        work = self.folder / f"run{n}"
        (work / "full").mkdir(parents=True)
        staged = stage(work, rows)
        engine = self.netmera.engine
        result = match_audience(
            SEGMENT,
            staged,
            engine,
            UserTable(),
            self.extra,
            work,
            self.kept,
            full_refresh=full_refresh,
        )
        self.kept.save(result.resolutions, f"run{n}")
        full = match_audience(
            SEGMENT, staged, engine, UserTable(), {"match_path": self.path}, work / "full"
        )
        assert published(result) == published(full)
        # What is kept, after any mix of incremental and (narrowed) full saves, is what a full
        # match into an empty store keeps.
        (work / "fresh").mkdir()
        fresh = SegmentResolutions(
            SegmentStore(sa.create_engine(f"sqlite:///{work / 'fresh.db'}")).engine, SEGMENT.id
        )
        first = match_audience(
            SEGMENT, staged, engine, UserTable(), self.extra, work / "fresh", fresh
        )
        fresh.save(first.resolutions, "fresh")
        assert kept_rows(self.kept) == kept_rows(fresh)
        return result


def kept_rows(kept: SegmentResolutions) -> tuple[list, list]:
    """Every kept resolution and term of the segment, in order."""
    with kept.engine.connect() as conn:
        return tuple(
            sorted(conn.execute(sa.select(*table.c).where(table.c.segment_id == SEGMENT.id)).all())
            for table in (resolutions, resolution_terms)
        )


# -- the property ------------------------------------------------------------------------------

USERS = ["U0", "U1", "U2", "U3"]
PHONES = ["+905320000001", "+905320000002"]
a_device = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from([None, "e0", "e1"]),
    st.sampled_from([None, "a@x.io", "b@x.io"]),
    st.sampled_from([None, *PHONES]),
    st.sampled_from([True, False, None]),
)
a_table = st.dictionaries(st.sampled_from([f"i{n}" for n in range(6)]), a_device, max_size=6)
a_source_row = st.fixed_dictionaries(
    {
        "ext": st.sampled_from([None, "e0", " e1", "e9"]),
        "mail": st.sampled_from([None, "a@x.io", "B@X.IO", "zz@x.io", "not-an-email"]),
        "phone": st.sampled_from([None, "05320000001", "+90 532 000 00 02", "12"]),
        "mail_hash": st.sampled_from([None, sha("a@x.io"), sha("b@x.io")]),
    }
)
an_audience = st.dictionaries(
    st.sampled_from(["k0", "k1", "k2", "k3", "k4"]),
    st.lists(a_source_row, min_size=1, max_size=2),  # a key in two rows: pooled identifiers
    max_size=5,
)


def rows_of(audience: dict[str, list[dict]]) -> list[dict]:
    return [{"uid": key, **row} for key, rows in sorted(audience.items()) for row in rows]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(PATHS),
    st.lists(st.tuples(a_table, an_audience, st.booleans()), min_size=2, max_size=4),
)
def test_incremental_publishes_what_a_full_match_publishes(path: str, steps: list) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        netmera = Netmera(Path(tmp) / "netmera.db")
        refreshes = Refreshes(Path(tmp), path, netmera)
        for n, (devices, audience, full_refresh) in enumerate(steps):
            netmera.set(devices)
            result = refreshes.refresh(rows_of(audience), full_refresh=full_refresh)
            assert result.mode == ("full" if n == 0 or full_refresh else "incremental")


# -- scenarios ---------------------------------------------------------------------------------


@pytest.fixture(params=PATHS)
def refreshes(request: pytest.FixtureRequest, tmp_path: Path) -> Refreshes:
    return Refreshes(tmp_path, request.param, Netmera(tmp_path / "netmera.db"))


def test_a_user_gains_the_identifier_of_a_not_found_source_user(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "mail": "new@x.io"}, {"uid": "k2", "ext": "e2"}]
    netmera.set({"i1": ("U2", "e2", None, None, True)})
    refreshes.refresh(rows)
    netmera.set({"i1": ("U2", "e2", None, None, True), "i2": ("U1", None, "new@x.io", None, True)})
    result = refreshes.refresh(rows)
    assert (result.mode, result.rematched) == ("incremental", 1)  # k1 only
    assert result.matched_by["email"] == 1 and result.reasons["not_found"] == 0


def test_a_second_user_takes_an_email_and_gives_it_up(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "mail": "a@x.io"}, {"uid": "k2", "ext": "e2"}]
    alone = {"i1": ("U1", None, "a@x.io", None, True), "i2": ("U2", "e2", None, None, False)}
    netmera.set(alone)
    assert refreshes.refresh(rows).netmera_users == 2
    netmera.set({**alone, "i3": ("U3", None, "a@x.io", None, True)})
    ambiguous = refreshes.refresh(rows)
    assert (ambiguous.reasons["ambiguous"], ambiguous.rematched) == (1, 1)
    netmera.set(alone)  # U3 gives it up: matched to U1 again (U3 changed, a candidate)
    again = refreshes.refresh(rows)
    assert (again.reasons["ambiguous"], again.netmera_users, again.rematched) == (0, 2, 1)


def test_the_first_user_of_an_ambiguous_email_gives_it_up(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "mail": "a@x.io"}]
    both = {"i1": ("U1", None, "a@x.io", None, True), "i3": ("U3", None, "a@x.io", None, True)}
    netmera.set(both)
    assert refreshes.refresh(rows).reasons["ambiguous"] == 1
    netmera.set({"i1": ("U1", None, "other@x.io", None, True), "i3": both["i3"]})
    assert refreshes.refresh(rows).netmera_users == 1


def test_a_higher_priority_identifier_appears(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "ext": "e1", "mail": "a@x.io"}]
    netmera.set({"i1": ("U1", None, "a@x.io", None, True)})
    assert refreshes.refresh(rows).matched_by["email"] == 1
    netmera.set({"i1": ("U1", None, "a@x.io", None, True), "i2": ("U2", "e1", None, None, False)})
    result = refreshes.refresh(rows)
    assert result.matched_by == {"external_id": 1, "email": 0, "msisdn": 0, "email_sha256": 0}
    assert result.reachable == 0


def test_a_deleted_user(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "ext": "e1"}, {"uid": "k2", "mail": "b@x.io"}]
    netmera.set({"i1": ("U1", "e1", None, None, True), "i2": ("U2", None, "b@x.io", None, True)})
    assert refreshes.refresh(rows).netmera_users == 2
    with netmera.engine.begin() as conn:  # deleted: nothing marks it, its id is gone
        conn.exec_driver_sql("DELETE FROM netmera_users WHERE user_id = 'U1'")
    netmera.devices.pop("i1")
    result = refreshes.refresh(rows)
    assert (result.netmera_users, result.reasons["not_found"], result.rematched) == (1, 1, 1)


def test_identifiers_change_but_not_the_key(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    netmera.set({"i1": ("U1", "e1", None, None, True), "i2": ("U2", None, "b@x.io", None, None)})
    refreshes.refresh([{"uid": "k1", "ext": "e1"}, {"uid": "k2", "ext": "e9"}])
    result = refreshes.refresh([{"uid": "k1", "ext": "e1"}, {"uid": "k2", "mail": "B@x.io "}])
    assert (result.netmera_users, result.rematched) == (2, 1)


def test_a_push_permission_change_changes_reachable(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "ext": "e1"}, {"uid": "k2", "ext": "e2"}]
    netmera.set({"i1": ("U1", "e1", None, None, True), "i2": ("U2", "e2", None, None, False)})
    assert refreshes.refresh(rows).reachable == 1
    netmera.set({"i1": ("U1", "e1", None, None, True), "i2": ("U2", "e2", None, None, True)})
    result = refreshes.refresh(rows)
    assert (result.reachable, result.rematched) == (2, 1)


def test_removed_source_users_and_nothing_changed(refreshes: Refreshes) -> None:
    netmera = refreshes.netmera
    netmera.set({"i1": ("U1", "e1", None, None, True), "i2": ("U2", "e2", None, None, True)})
    refreshes.refresh([{"uid": "k1", "ext": "e1"}, {"uid": "k2", "ext": "e2"}])
    same = refreshes.refresh([{"uid": "k1", "ext": "e1"}, {"uid": "k2", "ext": "e2"}])
    assert (same.mode, same.rematched, same.netmera_users) == ("incremental", 0, 2)
    fewer = refreshes.refresh([{"uid": "k2", "ext": "e2"}])
    assert (fewer.rematched, fewer.connector_users, fewer.netmera_users) == (0, 1, 1)


def test_a_late_commit_within_the_overlap_is_read(tmp_path: Path) -> None:
    """A change stamped before the last match read the database's time, committed after it:
    within the overlap (default 10 minutes), the next match reads it."""
    netmera = Netmera(tmp_path / "netmera.db")
    refreshes = Refreshes(tmp_path, "database", netmera, changed_at_overlap_seconds=600)
    rows = [{"uid": "k1", "ext": "e1"}, {"uid": "k2", "ext": "e2"}]
    netmera.set({"i1": ("U1", "e1", None, None, True)})
    assert refreshes.refresh(rows).netmera_users == 1
    netmera.devices["i2"] = ("U2", "e2", None, None, True)
    netmera.changed["i2"] = stamp(datetime.now(UTC) - timedelta(minutes=5))
    netmera.write()
    assert refreshes.refresh(rows).netmera_users == 2


def test_full_refresh_triggers(refreshes: Refreshes, tmp_path: Path) -> None:
    netmera = refreshes.netmera
    rows = [{"uid": "k1", "ext": "e1"}]
    netmera.set({"i1": ("U1", "e1", None, None, True)})
    assert refreshes.refresh(rows).mode == "full"  # nothing kept yet
    assert refreshes.refresh(rows).mode == "incremental"
    assert refreshes.refresh(rows, full_refresh=True).mode == "full"
    # Older than full_refresh_days (7 by default).
    work = tmp_path / "later"
    work.mkdir()
    later = match_audience(
        SEGMENT,
        stage(work, rows),
        netmera.engine,
        UserTable(),
        refreshes.extra,
        work,
        refreshes.kept,
        now=datetime.now(UTC) + timedelta(days=7),
    )
    assert later.mode == "full"
    # The rules' version, the segment's identifiers or the table: another basis.
    state = refreshes.kept.state()
    with refreshes.kept.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE cs_resolution_state SET basis = 'older rules'")
    assert refreshes.refresh(rows).mode == "full"
    assert refreshes.kept.state().basis == state.basis
    # No change column: in full, and nothing kept.
    work = tmp_path / "plain"
    work.mkdir()
    plain = match_audience(
        SEGMENT,
        stage(work, rows),
        netmera.engine,
        UserTable(),
        {"match_path": refreshes.path},
        work,
        refreshes.kept,
    )
    refreshes.kept.save(plain.resolutions, "plain")
    assert plain.mode == "full" and refreshes.kept.state() is None


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("path", PATHS)
def test_incremental_equals_full_on_postgres(pg_database: dict, tmp_path: Path, path: str) -> None:
    """Store and user table on PostgreSQL (timestamptz change times, COPY in and out)."""
    engine = sa.create_engine(pg_database["url"])
    with engine.begin() as conn:
        conn.exec_driver_sql(USERS_CHANGED_DDL.replace("TIMESTAMP", "TIMESTAMPTZ"))
    kept = SegmentResolutions(SegmentStore(engine).engine, SEGMENT.id)
    tables = [
        [("U1", "e1", "a@x.io", None, "i1", True)],
        [  # U3 takes a@x.io (k2 ambiguous), U1 deleted, U4 gains k3's phone
            ("U3", None, "a@x.io", None, "i3", False),
            ("U2", "e2", "a@x.io", None, "i2", True),
            ("U4", None, None, "+905320000001", "i4", True),
        ],
    ]
    audiences = [
        [{"uid": "k1", "ext": "e1"}, {"uid": "k2", "mail": "a@x.io"}, {"uid": "k3", "phone": "1"}],
        [
            {"uid": "k1", "ext": "e1"},
            {"uid": "k2", "mail": "a@x.io"},
            {"uid": "k3", "ext": "e9", "phone": "05320000001"},
        ],
    ]
    for n, (table, audience) in enumerate(zip(tables, audiences, strict=True)):
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM netmera_users")
            conn.execute(
                sa.text("INSERT INTO netmera_users VALUES (:u, :x, :e, :m, :i, :p, :c)"),
                [
                    {**dict(zip("uxemip", row, strict=True)), "c": datetime.now(UTC)}
                    for row in table
                ],
            )
        work = tmp_path / f"run{n}"
        (work / "full").mkdir(parents=True)
        staged = stage(work, audience)
        extra = {"match_path": path, **CHANGES}
        result = match_audience(SEGMENT, staged, engine, UserTable(), extra, work, kept)
        kept.save(result.resolutions, f"run{n}")
        full = match_audience(
            SEGMENT, staged, engine, UserTable(), {"match_path": path}, work / "full"
        )
        assert published(result) == published(full)
        assert result.mode == ("full" if n == 0 else "incremental")
    assert (result.reasons["ambiguous"], result.reasons["not_found"], result.netmera_users) == (
        1,
        1,
        1,
    )
    engine.dispose()


# -- through a DAG run -------------------------------------------------------------------------


def dag_segment(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, segment_id: str, audience: int
) -> tuple[Path, Path]:
    """A file segment `segment_id` of `audience` source users k0... (ext e0...) over five
    Netmera users U0..U4 holding e0..e4, with a change column: (the Netmera db, the CSV)."""
    netmera_db = workspace / "netmera.db"
    with sqlite3.connect(netmera_db) as conn:
        conn.execute(USERS_CHANGED_DDL)
        conn.executemany(
            "INSERT INTO netmera_users VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(f"U{i}", f"e{i}", None, None, f"i{i}", True, stamp()) for i in range(5)],
        )
    conn_value = json.loads(sqlite_conn(netmera_db))
    conn_value["extra"] = CHANGES
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", json.dumps(conn_value))
    rows = [[f"k{i}", f"e{i}"] for i in range(audience)]
    csv = write_csv(workspace / f"{segment_id}.csv", ["uid", "ext"], rows)
    (workspace / "segments" / f"{segment_id}.yaml").write_text(
        f"id: {segment_id}\nname: Incremental\nsource: {{type: file, path: {csv}}}\n"
        "user_key: uid\nidentifiers: [{field: ext, kind: external_id}]\n"
        "full_refresh_days: 3\n"
    )
    return netmera_db, csv


def move_e3_to_u4(netmera_db: Path) -> None:
    with sqlite3.connect(netmera_db) as conn:
        conn.execute(
            "UPDATE netmera_users SET external_id = NULL, changed_at = ? WHERE user_id = 'U3'",
            (stamp(),),
        )
        conn.execute(
            "UPDATE netmera_users SET external_id = 'e3', changed_at = ? WHERE user_id = 'U4'",
            (stamp(),),
        )


def test_a_dag_run_records_mode_and_rematched(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    netmera_db, _ = dag_segment(workspace, monkeypatch, "incr", 4)
    assert run_segment("incr") == "success"
    move_e3_to_u4(netmera_db)  # k3 is matched again
    assert run_segment("incr") == "success"
    assert run_segment("incr", full_refresh=True) == "success"
    runs = cli_json(capsys, "details", "incr")["runs"]
    assert [(r["mode"], r["rematched"]) for r in runs] == [
        ("full", 4),
        ("incremental", 1),
        ("full", 4),
    ]
    assert [r["netmera_users"] for r in runs] == [4, 4, 4]


def test_publish_takes_the_members_change_only_against_the_current_version(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """An incremental match decides who entered and left against the previous match's
    members: the publish writes that, but only when the current version is that match's. A
    dry run between them matched (and kept resolutions) without publishing: the next publish
    must then compare with the current version, or k0's leaving would be lost."""
    netmera_db, csv = dag_segment(workspace, monkeypatch, "incr_change", 4)

    def published() -> tuple[list[str], tuple[int, int]]:
        code, out, err = cli(capsys, "members", "incr_change")
        assert code == 0, err
        run = cli_json(capsys, "details", "incr_change")["runs"][0]
        return sorted(out.split()), (run["added"], run["removed"])

    assert run_segment("incr_change") == "success"
    move_e3_to_u4(netmera_db)
    assert run_segment("incr_change") == "success"  # against the version run 1 published
    assert published() == (["U0", "U1", "U2", "U4"], (1, 1))
    write_csv(csv, ["uid", "ext"], [[f"k{i}", f"e{i}"] for i in range(1, 4)])  # k0 leaves
    assert run_segment("incr_change", dry_run=True) == "success"
    assert published()[0] == ["U0", "U1", "U2", "U4"]
    assert run_segment("incr_change") == "success"  # the dry run's match is not published
    assert published() == (["U1", "U2", "U4"], (0, 1))
    runs = cli_json(capsys, "details", "incr_change")["runs"]
    assert [r["mode"] for r in reversed(runs)] == ["full"] + ["incremental"] * 3


def test_full_refresh_days_is_a_whole_number_of_days_at_least_one() -> None:
    from pydantic import ValidationError

    from include.config.segments import SegmentConfig

    base = SEGMENT.model_dump(mode="json")
    assert SegmentConfig.model_validate(base).full_refresh_days == 7
    assert SegmentConfig.model_validate({**base, "full_refresh_days": 1}).full_refresh_days == 1
    for bad in (0, -1, "7", 1.5, True):
        with pytest.raises(ValidationError, match="full_refresh_days"):
            SegmentConfig.model_validate({**base, "full_refresh_days": bad})


def test_the_change_column_extras_are_checked() -> None:
    from include.matching.changes import ChangeColumn

    assert ChangeColumn.from_extras({}) is None
    assert ChangeColumn.from_extras({"changed_at_column": "c"}) == ChangeColumn("c", 600)
    for bad in (
        {"changed_at_column": 5},
        {"changed_at_column": "c", "changed_at_overlap_seconds": -1},
        {"changed_at_column": "c", "changed_at_overlap_seconds": "600"},
    ):
        with pytest.raises(ValueError, match="netmera_db"):
            ChangeColumn.from_extras(bad)
