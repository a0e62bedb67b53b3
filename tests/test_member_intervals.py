"""Membership kept as intervals (issue 23, item 1), through the segment store's own interface
on SQLite and PostgreSQL: every kept version reads what was published, a publish or a restore
writes rows in proportion to the change, pruning keeps exactly the stays a kept version spans,
and migration 0011 turns a store of full copies into stays and back."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pyarrow as pa
import pytest
import sqlalchemy as sa

from include.config.segments import SegmentConfig
from include.store.repository import SegmentStore
from tests.store_rows import stored_rows, version_members
from tests.test_config_in_flight import alembic_to

CONFIG = SegmentConfig.model_validate(
    {
        "id": "intervals",
        "name": "Intervals",
        "source": {"type": "file", "path": "data/a.csv"},
        "user_key": "uid",
        "identifiers": [{"field": "uid", "kind": "external_id"}],
    }
)
KINDS = ("external_id", "email", "msisdn")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_database")["url"].render_as_string(hide_password=False)


@pytest.fixture
def store(url) -> SegmentStore:
    engine = sa.create_engine(url)
    yield SegmentStore(engine)
    engine.dispose()


def publish(store: SegmentStore, user_ids: list[str], n: int = 0):
    """One published refresh of these members (kinds varied), as the refresh step calls it."""
    run_id = f"run_{len(store.runs(CONFIG.id, limit=1000))}"
    store.start_run(CONFIG, run_id, dry_run=False, approve=False)
    kinds = [KINDS[(n + i) % 3] for i in range(len(user_ids))]
    batch = pa.record_batch(
        [pa.array(user_ids, pa.string()), pa.array(kinds, pa.string())],
        names=["user_id", "matched_by"],
    )
    counts = {"connector_users": len(user_ids), "netmera_users": len(user_ids), "reachable": None}
    store.record_run(CONFIG.id, run_id, **counts)  # what the match step records
    return store.publish(
        CONFIG.id, run_id, [batch], counts=SimpleNamespace(**counts), dry_run=False
    )


def churned(members: list[str], rng: random.Random, share: float, next_id: list[int]) -> list[str]:
    """`share` of the members replaced by new users."""
    leaving = set(rng.sample(members, int(len(members) * share)))
    fresh = [f"nm-{next_id[0] + i}" for i in range(len(leaving))]
    next_id[0] += len(leaving)
    return [m for m in members if m not in leaving] + fresh


def test_every_kept_version_reads_what_was_published_and_rows_follow_the_change(store, url):
    rng, next_id = random.Random(7), [1000]
    audience = [f"nm-{i}" for i in range(1000)]
    published = {}
    outcome = publish(store, audience)
    published[outcome.version] = set(audience)
    assert stored_rows(url) == 1000
    for n in range(1, 11):  # ten refreshes, 1 % of the audience changing each time
        before = stored_rows(url)
        audience = churned(audience, rng, 0.01, next_id)
        outcome = publish(store, audience, n)
        published[outcome.version] = set(audience)
        assert (outcome.added, outcome.removed) == (10, 10)
        assert stored_rows(url) - before == 10  # the 10 who entered; the 10 who left: updated
    assert stored_rows(url) <= 1.2 * len(audience)  # 1,100 rows: not 11 copies
    for version, members in published.items():
        assert version_members(url, CONFIG.id, version) == members
    assert set(store.member_ids(CONFIG.id)) == set(audience)
    assert list(store.member_ids(CONFIG.id)) == sorted(audience)


def test_a_user_who_leaves_and_comes_back_has_two_stays_and_each_version_is_right(store, url):
    publish(store, ["a", "b", "c"])
    publish(store, ["a", "b"])
    publish(store, ["a", "b", "c"])
    publish(store, [])
    publish(store, ["c"])
    assert [version_members(url, CONFIG.id, v) for v in range(1, 6)] == [
        {"a", "b", "c"},
        {"a", "b"},
        {"a", "b", "c"},
        set(),
        {"c"},
    ]
    assert stored_rows(url) == 5  # a: 1-4, b: 1-4, c: 1-2, 3-4, 5-


def test_a_restore_writes_only_the_difference(store, url):
    first = [f"nm-{i}" for i in range(100)]
    publish(store, first)
    second = [*first[5:], "x1", "x2", "x3"]
    publish(store, second)
    rows = stored_rows(url)
    store.start_run(CONFIG, "restore_1", dry_run=False, approve=False, restore_version=1)
    outcome = store.restore(CONFIG.id, "restore_1", 1)
    assert (outcome.version, outcome.added, outcome.removed) == (3, 5, 3)
    assert stored_rows(url) == rows + 5  # those back in; the three who leave are closed
    assert version_members(url, CONFIG.id, 3) == set(first)
    assert version_members(url, CONFIG.id, 2) == set(second)


def test_a_dry_run_and_a_failed_publish_change_no_row(store, url):
    publish(store, ["a", "b"])
    rows = stored_rows(url)
    store.start_run(CONFIG, "dry", dry_run=True, approve=False)
    batch = pa.record_batch(
        [pa.array(["b", "c"]), pa.array(["email", "email"])], names=["user_id", "matched_by"]
    )
    counts = SimpleNamespace(connector_users=2, netmera_users=2, reachable=None)
    outcome = store.publish(CONFIG.id, "dry", [batch], counts=counts, dry_run=True)
    assert (outcome.added, outcome.removed) == (1, 1)
    store.start_run(CONFIG, "broken", dry_run=False, approve=False)
    too_long = pa.record_batch(
        [pa.array(["c", "x" * 300]), pa.array(["email", "email"])], names=["user_id", "matched_by"]
    )
    if store.engine.dialect.name == "postgresql":  # SQLite does not enforce the length
        with pytest.raises(Exception, match="value too long"):
            store.publish(CONFIG.id, "broken", [too_long], counts=counts, dry_run=False)
    assert stored_rows(url) == rows
    assert set(store.member_ids(CONFIG.id)) == {"a", "b"}


def test_pruning_drops_only_stays_no_kept_version_spans(store, url, monkeypatch):
    monkeypatch.setenv("CONNECTOR_SEGMENTS_KEEP_VERSIONS", "3")
    for members in (["a", "b"], ["b", "c"], ["c", "d"], ["d", "e"], ["e"]):
        publish(store, members)
    # Kept: 3, 4, 5. a (in 1, left in 2) ended before 3: gone. b left in 3: kept, version 3's
    # changes name it. c (2-3), d (3-4) and e (4-) span kept versions.
    assert [v["version"] for v in store.kept_versions(CONFIG.id)] == [5, 4, 3]
    assert stored_rows(url) == 4
    assert [version_members(url, CONFIG.id, v) for v in (3, 4, 5)] == [
        {"c", "d"},
        {"d", "e"},
        {"e"},
    ]


def test_migration_0011_turns_full_copies_into_stays_and_back(url):
    engine = sa.create_engine(url)
    alembic_to(engine, "0010")
    # Three kept versions (2, 3, 4) as full copies: a in all, b leaves and comes back, c
    # changes the kind it matched by, d only in the oldest, e only in the current one.
    old = {
        2: {"a": "external_id", "b": "email", "c": "email", "d": "email"},
        3: {"a": "external_id", "c": "msisdn"},
        4: {"a": "external_id", "b": "email", "c": "msisdn", "e": "email"},
    }
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO cs_segments (id, name, description, source_type, current_version, "
                "connector_users, netmera_users, message_sent, updated_at) "
                "VALUES ('intervals', 'I', '', 'file', 4, 4, 4, 0, '2026-01-01')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO cs_members VALUES ('intervals', :v, :u, :k)"),
            [{"v": v, "u": u, "k": k} for v, users in old.items() for u, k in users.items()],
        )
    alembic_to(engine, "head")
    for version, users in old.items():
        assert version_members(url, CONFIG.id, version) == set(users)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT user_id, entered_version, left_version, matched_by FROM cs_members "
                "ORDER BY user_id, entered_version"
            )
        ).all()
    # A stay already running in the oldest kept version began before the store kept history:
    # version 0, so that no send to those who entered since takes it for a newcomer.
    assert [tuple(r) for r in rows] == [
        ("a", 0, None, "external_id"),
        ("b", 0, 3, "email"),
        ("b", 4, None, "email"),
        ("c", 0, None, "email"),  # the kind of the stay's first kept version
        ("d", 0, 3, "email"),
        ("e", 4, None, "email"),
    ]
    alembic_to(engine, "0010", down=True)
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT version, user_id FROM cs_members")).all()
    assert {(v, u) for v, u in back} == {(v, u) for v, users in old.items() for u in users}
    engine.dispose()
