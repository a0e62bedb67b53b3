"""Incremental matching: which source users a match must resolve again, and which carry their
stored resolution over (docs/decisions.md, "Incremental matching").

A source user's resolution (its Netmera user, or its one reason; reachable or not) depends
only on its identifier values and on which Netmera users hold each value it looked up, up to
the first that found exactly one. The store keeps, per source user, that resolution, the
digest of its identifier fields and its *terms*: each (kind, value) it looked up (the value
hashed) and each Netmera user it found (alone, or among the candidates of an ambiguous value).
A refresh re-matches the source users
- added, or whose identifier fields changed (a new digest); removed ones are dropped;
- with a term naming a Netmera user that changed (`changes.changed_rows`) or was deleted
  (`changes.missing_users`): it may have lost a value or its push permission;
- with a term (kind, value) that a changed Netmera user now holds: it may have gained it;
and carries everyone else over. Members and counts are then decided over all of them, so
they are exactly what a full match of the same data gives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from include.matching.changes import ChangeColumn, changed_rows, missing_users, read_mark
from include.matching.decide import duckdb_config
from include.matching.rules import RESOLUTIONS_ORDER, RULES_VERSION, TERMS_ORDER, USER_TERM

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import SegmentConfig
    from include.matching.user_table import UserTable

log = logging.getLogger(__name__)

DIGESTS_FILE = "digests.parquet"
KEPT_FILE = "kept.parquet"
REMATCH_FILE = "rematch.parquet"  # the staged rows of the source users matched again
RESOLUTIONS_FILE = "resolutions.parquet"
TERMS_FILE = "terms.parquet"
KEPT_TERMS_FILE = "kept_terms.parquet"
CHANGED_RESOLUTIONS_FILE = "changed_resolutions.parquet"
CHANGED_TERMS_FILE = "changed_terms.parquet"
DROPPED_FILE = "dropped.parquet"
PLAN_MEMORY = "512MB"


def resolution_schema() -> pa.Schema:
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("user_key", text),
            ("digest", text),
            ("user_id", text),
            ("matched_by", text),
            ("priority", pa.int16()),
            ("reason", text),
            ("reachable", pa.bool_()),
        ]
    )


def terms_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("user_key", pa.string()), ("kind", pa.string()), ("value", pa.string())])


@dataclass(frozen=True)
class KeptState:
    """What the last match kept besides the resolutions: under which rules and settings
    (`basis`), the newest change time read before it (`mark`), when the last full one ran,
    and the run that made it (`run_id`)."""

    basis: str
    mark: dict[str, Any] | None
    full_at: datetime
    run_id: str


class Kept(Protocol):
    """The resolutions the last match of a segment kept (the segment store keeps them)."""

    def state(self) -> KeptState | None: ...

    def export(self, destination: Path) -> Path: ...  # Parquet, `resolution_schema`

    def export_terms(self, destination: Path) -> Path: ...  # Parquet, `terms_schema`

    def user_ids(self) -> sa.Select: ...  # every Netmera user a kept term names, in SQL

    def keys_with_terms(self, terms: pa.Table) -> set[str]: ...  # (kind, value) → user keys


@dataclass(frozen=True)
class Update:
    """What the store keeps after a match: the resolutions and terms of the user keys in
    `dropped` (Parquet) go, `resolutions` and `terms` (Parquet) come; without `dropped` every
    kept one goes (no change column: none are kept, `resolutions` is empty). `full`: a full
    match made it, at `full_at`."""

    full: bool
    basis: str = ""
    mark: dict[str, Any] | None = None
    full_at: datetime | None = None
    resolutions: str = ""
    terms: str = ""
    dropped: str = ""


def basis(segment: SegmentConfig, users: UserTable, change: ChangeColumn | None) -> str:
    """Everything besides the data that a resolution depends on: the rules' version, how
    digests are made, the segment's identifiers and region, the user table and its change
    column."""
    import duckdb

    described = {
        "rules": RULES_VERSION,
        "digest": f"duckdb {duckdb.__version__} hash",  # write_digests
        "user_key": segment.user_key,
        "identifiers": [[i.field, i.kind.value] for i in segment.identifiers],
        "default_region": segment.default_region,
        "table": [users.schema, users.table, users.columns],
        "changed_at": change.name if change else None,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def full_reason(
    segment: SegmentConfig,
    change: ChangeColumn | None,
    state: KeptState | None,
    now_basis: str,
    asked: bool,
    now: datetime,
) -> str | None:
    """Why this match must be a full one, or None: it can be incremental."""
    if change is None:
        return "the netmera_db Connection names no changed_at_column"
    if asked:
        return "full_refresh: true"
    if state is None:
        return "no resolutions kept from an earlier match"
    if state.basis != now_basis:
        return (
            "the matching rules, the digests' hash (DuckDB's version), the segment's"
            " identifiers or the user table changed"
        )
    if now - state.full_at >= timedelta(days=segment.full_refresh_days):
        return f"the last full match is {segment.full_refresh_days} or more days old"
    return None


@dataclass(frozen=True)
class Planned:
    """What a match with kept resolutions does: match the source users in `staged` (all of
    them, or the re-matched ones' rows) and have the store keep `update` (to which the match
    adds the resolutions and terms it wrote). An incremental match has every `kept`
    resolution (None: a full match), made by the run `kept_by`: the decision carries over
    those whose key is not in `update.dropped`, and decides the members' change against that
    run's members."""

    staged: Path
    digests: Path  # (user_key, digest) of every source user
    update: Update
    kept: Path | None = None
    kept_by: str | None = None


def prepare(
    segment: SegmentConfig,
    staged: Path,
    engine: sa.Engine,
    users: UserTable,
    extra: dict[str, Any],
    workdir: Path,
    kept: Kept,
    full_refresh: bool,
    now: datetime,
) -> Planned | None:
    """Plan a match that keeps resolutions: in full (`full_reason`) or incremental; None when
    the Connection names no change column (nothing can be kept)."""
    import duckdb

    change = ChangeColumn.from_extras(extra)
    if change is None:
        return None
    state, now_basis = kept.state(), basis(segment, users, change)
    why = full_reason(segment, change, state, now_basis, full_refresh, now)
    mark = read_mark(engine)  # before any lookup: what changes after it is read again
    digests = workdir / DIGESTS_FILE
    con = duckdb.connect(config=duckdb_config(workdir, PLAN_MEMORY))
    try:
        # What changed in Netmera is asked of the database while the worker digests the
        # audience and reads the kept resolutions: the two overlap.
        with ThreadPoolExecutor(max_workers=1) as pool:
            asked = None
            if why is None and state is not None:
                asked = pool.submit(affected, segment, engine, users, change, state, kept)
            write_digests(con, segment, staged, digests)
            if asked is None or state is None:
                log.info("segment %s: matching in full: %s", segment.id, why)
                return Planned(staged, digests, Update(True, now_basis, mark, now))
            kept_file = kept.export(workdir / KEPT_FILE)
            keys, changed, gone = asked.result()
        found = plan(con, digests, kept_file, keys, workdir)
    finally:
        con.close()
    rematch = workdir / REMATCH_FILE
    write_rematch(segment, staged, found.rematch, rematch)
    log.info(
        "segment %s: incremental match: %d source users to match again (%d Netmera users"
        " changed, %d deleted)",
        segment.id,
        len(found.rematch),
        changed,
        gone,
    )
    update = Update(False, now_basis, mark, state.full_at, dropped=str(found.dropped))
    return Planned(rematch, digests, update, kept_file, state.run_id)


def affected(
    segment: SegmentConfig,
    engine: sa.Engine,
    users: UserTable,
    change: ChangeColumn,
    state: KeptState,
    kept: Kept,
) -> tuple[set[str], int, int]:
    """The kept user keys whose resolution a Netmera change since the last match may alter;
    how many Netmera users changed and were deleted."""
    changed = changed_rows(engine, users, change, state.mark, {i.kind for i in segment.identifiers})
    gone = missing_users(engine, users, kept.user_ids())
    keys = kept.keys_with_terms(changed_terms(changed, gone))
    return keys, len(set(changed["user_id"].to_pylist())), len(gone)


def _keyed_batches(segment: SegmentConfig, staged: Path) -> Any:
    """The staged batches with `cs_key`, the user key as matching reads it (trimmed)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(staged).iter_batches(batch_size=100_000):
        key = pc.utf8_trim_whitespace(batch.column(segment.user_key))
        yield batch, key


def write_digests(con: Any, segment: SegmentConfig, staged: Path, destination: Path) -> Path:
    """(user_key, digest) of every source user: an MD5 over its rows' identifier fields, in
    any row order (a user may come in several rows)."""
    import pyarrow as pa

    fields = list(dict.fromkeys(i.field for i in segment.identifiers))
    schema = pa.schema(
        [("cs_key", pa.string()), *((f"f{n}", pa.string()) for n in range(len(fields)))]
    )

    def rows():
        for batch, key in _keyed_batches(segment, staged):
            columns = [key, *(batch.column(f) for f in fields)]
            yield pa.record_batch(columns, schema=schema)

    con.register("cs_staged", pa.RecordBatchReader.from_batches(schema, rows()))
    # A field's null and its text are told apart by a separator no text holds as is. The rows'
    # 64-bit hashes are summed, not sorted and concatenated: the same for any row order, and
    # cheap. DuckDB's hash may change with its version: `basis` names it, so an upgrade makes
    # the next match a full one rather than a wrong one.
    row = (
        "concat_ws(chr(31), "
        + ", ".join(f"coalesce(f{n}, chr(30))" for n in range(len(fields)))
        + ")"
    )
    con.execute(
        "COPY (SELECT cs_key AS user_key, md5(sum(hash(r))::VARCHAR || ':' ||"
        " count(*)::VARCHAR) AS digest"
        f" FROM (SELECT cs_key, {row} AS r FROM cs_staged) GROUP BY cs_key)"
        f" TO {_quoted(destination)} (FORMAT parquet)"
    )
    con.unregister("cs_staged")
    return destination


def changed_terms(changed: pa.Table, gone: list[str]) -> pa.Table:
    """The terms a kept resolution must not carry over with: each changed user's (USER_TERM,
    id) and (kind, SHA-256 of the value) of what it holds now, each deleted user's
    (USER_TERM, id)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    held = changed.filter(pc.is_valid(changed["kind"]))
    # As the store keeps them (rules.copy_terms): hashed.
    hashed = [hashlib.sha256(v.encode()).hexdigest() for v in held["value"].to_pylist()]
    users = pc.unique(
        pa.concat_arrays([changed["user_id"].combine_chunks(), pa.array(gone, pa.string())])
    )
    users = users.filter(pc.is_valid(users))
    return pa.table(
        {
            "kind": pa.concat_arrays(
                [held["kind"].combine_chunks(), pa.repeat(pa.scalar(USER_TERM), len(users))]
            ),
            "value": pa.concat_arrays([pa.array(hashed, pa.string()), users]),
        }
    )


@dataclass(frozen=True)
class Plan:
    rematch: pa.Array  # the user keys matched again
    dropped: Path  # the kept user keys not carried over (re-matched or gone): their rows go


def plan(con: Any, digests: Path, kept: Path, affected: set[str], workdir: Path) -> Plan:
    """Who is matched again (new, changed or `affected`) and whose kept rows go (changed,
    `affected` or gone): one join of the kept digests to the source users' answers both, and
    everyone else carries over as kept. Nothing audience-sized is written: the decision reads
    the carried resolutions from `kept`, less `dropped`."""
    import pyarrow as pa

    dropped = workdir / DROPPED_FILE
    con.register("cs_affected", pa.table({"user_key": pa.array(sorted(affected), pa.string())}))
    con.execute(
        "CREATE TEMP TABLE cs_replaced AS SELECT k.user_key AS kept_key, n.user_key AS source_key"
        f" FROM (SELECT user_key, digest FROM read_parquet({_quoted(kept)})) k"
        f" FULL JOIN read_parquet({_quoted(digests)}) n ON n.user_key = k.user_key"
        " WHERE k.digest IS DISTINCT FROM n.digest"
        " OR k.user_key IN (SELECT user_key FROM cs_affected)"
    )
    con.unregister("cs_affected")
    con.execute(
        "COPY (SELECT kept_key AS user_key FROM cs_replaced WHERE kept_key IS NOT NULL)"
        f" TO {_quoted(dropped)} (FORMAT parquet)"
    )
    rematch = con.sql(
        "SELECT source_key AS user_key FROM cs_replaced WHERE source_key IS NOT NULL"
    ).to_arrow_table()
    con.execute("DROP TABLE cs_replaced")
    return Plan(rematch["user_key"].combine_chunks().cast(pa.string()), dropped)


def narrowed(update: Update, kept: Kept, workdir: Path) -> Update:
    """A full match's resolutions and terms as their difference to those kept: the user keys
    whose resolution or terms changed, and those gone, are dropped; the changed ones' rows
    come again; everyone else's rows stay as they are. Rewriting a million rows the match
    found as they were would cost the store more than the match (docs/decisions.md)."""
    import duckdb

    new_res, new_terms = _quoted(Path(update.resolutions)), _quoted(Path(update.terms))
    old_res = _quoted(kept.export(workdir / KEPT_FILE))
    old_terms = _quoted(kept.export_terms(workdir / KEPT_TERMS_FILE))
    differs = " OR ".join(
        f"n.{name} IS DISTINCT FROM k.{name}" for name in resolution_schema().names[1:]
    )
    terms = "user_key, kind, value"
    dropped = workdir / DROPPED_FILE
    resolutions = workdir / CHANGED_RESOLUTIONS_FILE
    changed_terms = workdir / CHANGED_TERMS_FILE
    con = duckdb.connect(config=duckdb_config(workdir, PLAN_MEMORY))
    try:
        con.execute(
            "CREATE TEMP TABLE cs_changed AS"
            " SELECT coalesce(n.user_key, k.user_key) AS user_key"
            f" FROM read_parquet({new_res}) n FULL JOIN read_parquet({old_res}) k"
            " ON n.user_key = k.user_key"
            f" WHERE n.user_key IS NULL OR k.user_key IS NULL OR {differs}"
            f" UNION SELECT user_key FROM (SELECT {terms} FROM read_parquet({new_terms})"
            f" EXCEPT SELECT {terms} FROM read_parquet({old_terms}))"
            f" UNION SELECT user_key FROM (SELECT {terms} FROM read_parquet({old_terms})"
            f" EXCEPT SELECT {terms} FROM read_parquet({new_terms}))"
        )
        con.execute(f"COPY cs_changed TO {_quoted(dropped)} (FORMAT parquet)")
        # In the order of the store's primary key (rules.py).
        for source, order, destination in (
            (new_res, RESOLUTIONS_ORDER, resolutions),
            (new_terms, TERMS_ORDER, changed_terms),
        ):
            con.execute(
                f"COPY (SELECT * FROM read_parquet({source}) WHERE user_key IN"
                f" (SELECT user_key FROM cs_changed) ORDER BY {order})"
                f" TO {_quoted(destination)} (FORMAT parquet)"
            )
    finally:
        con.close()
    return replace(
        update, resolutions=str(resolutions), terms=str(changed_terms), dropped=str(dropped)
    )


def write_rematch(segment: SegmentConfig, staged: Path, keys: pa.Array, destination: Path) -> int:
    """The staged rows of the source users `keys` → Parquet at `destination`; its rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = 0
    with pq.ParquetWriter(destination, pq.read_schema(staged)) as writer:
        for batch, key in _keyed_batches(segment, staged):
            kept = batch.filter(pc.is_in(key, value_set=keys))
            rows += kept.num_rows
            writer.write_batch(kept)
    return rows


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"
