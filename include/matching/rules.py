"""The matching rules, written once for both paths, in two stages.

1. **Lookup**, where the user table is: DuckDB over its Parquet export (worker path), or
   PostgreSQL/SQLite over the real indexed table (database path). Input `cs_ids(user_key,
   priority, kind, value, raw)` (see `audience.py`). Output, audience-sized:
   - `cs_hits(user_key, priority, kind, value, n, user_id)`: for each `cs_ids` row with a
     value, of a source user no earlier identifier matched, how many Netmera users hold it
     (`n`: 0, 1, or 2 for several; a null user id counts as a user) and the user id when
     one. Only audience values are looked up: the work follows the audience, never the
     table. Per row rather than per value: which source users are already matched is then a
     filter, not a join (see `_resolve`), and the decision needs no join either. (SQLite
     runs a LEFT JOIN row by row, hashing the whole table for each row of a hashed kind:
     there the rows found come from an inner join and the others are added after it, see
     `Dialect.outer_join`; and it answers a correlated NOT EXISTS over `cs_hits` by a scan of
     it per row unless `cs_hits` is indexed, see `Dialect.index_hits`);
   - `cs_reach(user_id)`: the users found alone that have a device permitting push (when
     the table says so).
2. **Decide**, always in DuckDB on the worker, over those tables: per source user the first
   identifier by priority (ties: lowest value) that finds exactly one user, otherwise one
   reason, the first that applies of ambiguous → not_found → invalid_identifier →
   no_identifier; the members (distinct users, each credited to the best-priority kind that
   reached it); the counts.

The lookup SQL differs per engine only in how it hashes and joins (`Dialect`); the decisions
are one SQL text, so both paths give identical members, reasons and counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from include.config import IdentifierKind
from include.matching.user_table import KIND_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa

REASONS = ("ambiguous", "not_found", "invalid_identifier", "no_identifier")
HASHED = {IdentifierKind.EMAIL_SHA256, IdentifierKind.MSISDN_SHA256}
PROBE_RATIO = 25  # measured on PostgreSQL 15: ~7 µs an index probe, ~0.3 µs a hashed row
HITS_INDEXES = {"cs_hits_user_key": "user_key, priority", "cs_hits_value": "value, kind"}
LOOKUP_TABLES = ("cs_resolved_in", "cs_resolved", "cs_reach", "cs_hits", "cs_ids")
CREATE_RESOLVED = "CREATE TEMP TABLE cs_resolved (priority SMALLINT, raw TEXT, value TEXT)"
# The identifier rows, deferred values as normalised so far (`cs_resolved`, small): a join, not
# an UPDATE of cs_ids (DuckDB: ~0.25 s at 1M source rows, most of a small kind's lookup).
# `unread`: a deferred value never normalised (its source user was matched before it counted).
ROWS = (
    "(SELECT s.user_key, s.priority, s.kind, coalesce(s.value, r.value) AS value,"
    " s.raw IS NOT NULL AND r.raw IS NULL AS unread FROM cs_ids s"
    " LEFT JOIN cs_resolved r ON r.priority = s.priority AND r.raw = s.raw)"
)

Run = Callable[[str], Sequence[Sequence[Any]]]  # executes one statement, returns its rows


@dataclass(frozen=True)
class Dialect:
    """How one engine writes the lower-case hex SHA-256 of a stored value, reads a
    push-permission column as a condition, whether it hash-joins a LEFT JOIN, and whether
    `cs_hits` needs indexes (an engine without hash joins runs each NOT EXISTS over it as a
    scan of the whole table per audience row: quadratic in the audience)."""

    sha256_hex: str  # format string over a column expression
    is_true: str = "{}"
    outer_join: bool = True
    index_hits: bool = False


DUCKDB = Dialect(sha256_hex="sha256({})")
# cs_sha256: a Python function registered by database.py
# SQLite has no hash join: a LEFT JOIN or a correlated NOT EXISTS is a nested loop, served by
# an index on its inner table or else a scan of it per outer row (see `lookup`).
SQLITE = Dialect(sha256_hex="cs_sha256({})", outer_join=False, index_hits=True)
POSTGRES = Dialect(
    sha256_hex="encode(sha256(convert_to({}, 'UTF8')), 'hex')", is_true="CAST({} AS BOOLEAN)"
)
# The same, through the IMMUTABLE wrapper a deployment may create to index it (indexes.py).
POSTGRES_SHA256_FUNCTION = "cs_sha256_hex"
POSTGRES_INDEXED_HASH = Dialect(
    sha256_hex=POSTGRES_SHA256_FUNCTION + "({})", is_true="CAST({} AS BOOLEAN)"
)


@dataclass(frozen=True)
class UserSide:
    """Where the user table is read: a FROM item and its logical columns as SQL expressions
    over alias `u`. `indexed`: the kinds (and "user_id") an index serves, looked up value by
    value through it (PostgreSQL) instead of by one hash join over the whole table."""

    relation: str
    columns: dict[str, str]
    has_push: bool = True
    indexed: frozenset[str] = frozenset()
    rows: int = 0  # the table's size, as the database estimates it

    def probes(self, key: str, values: int) -> bool:
        """Look `values` up through the index of `key` rather than hash-join the table? An
        index probe costs about what hashing PROBE_RATIO table rows does."""
        return key in self.indexed and values * PROBE_RATIO < self.rows


@dataclass(frozen=True)
class Counts:
    connector_users: int
    matched_source_users: int
    netmera_users: int
    reachable: int | None
    reasons: dict[str, int] = field(default_factory=dict)
    matched_by: dict[str, int] = field(default_factory=dict)


def _how_many(user_id: str, found: str = "*") -> str:
    """0 if no row was found (`found`: a column null on the rows a LEFT JOIN adds), 1 if the
    rows found are one user, 2 if several: all the rules need, and cheaper than
    count(DISTINCT). A null user id is a user too: validation must see it, not lose it."""
    return (
        f"CASE WHEN count({found}) = 0 THEN 0"
        f" WHEN count({user_id}) = 0 THEN 1 WHEN count({user_id}) < count({found}) THEN 2"
        f" WHEN min({user_id}) = max({user_id}) THEN 1 ELSE 2 END"
    )


def _hits_sql(
    kind: IdentifierKind,
    users: UserSide,
    dialect: Dialect,
    probe: bool = False,
    deferred: bool = False,
    open_only: bool = True,
) -> str:
    """Hits of one kind: each of its open rows (`_open_rows`) with how many users hold its
    value (n = 0: none) and who (`probe`: each value looked up through the index; `deferred`:
    the kind has deferred rows, their values are in cs_resolved)."""
    user_id = users.columns["user_id"]
    column = users.columns[KIND_COLUMN[kind]]
    stored = dialect.sha256_hex.format(column) if kind in HASHED else column
    rows = _open_rows(kind, deferred, open_only)
    if probe:
        # PostgreSQL: one index probe per audience value (the array is built once); asked, the
        # planner would hash the whole table, too slow when the audience is a sliver of it.
        counts = f"{_how_many(user_id)} AS n, min({user_id}) AS user_id"
        found = (
            f"SELECT {stored} AS value, {counts} FROM {users.relation} u"
            f" WHERE {stored} = ANY(ARRAY(SELECT s.value FROM {rows}))"
            f" GROUP BY {stored}"
        )
        return (
            f"SELECT s.user_key, s.priority, s.kind, s.value, coalesce(c.n, 0) AS n, c.user_id"
            f" FROM {rows} LEFT JOIN ({found}) c ON c.value = s.value"
        )
    # A row twice (a duplicated source row) joins twice: `_how_many` and min() do not mind.
    # Without `outer_join` only the rows found come back; `_not_found_sql` adds the others.
    counts = f"{_how_many(user_id, column)} AS n, min({user_id}) AS user_id"
    join = "LEFT JOIN" if dialect.outer_join else "JOIN"
    return (
        f"SELECT s.user_key, s.priority, '{kind.value}' AS kind, s.value, {counts}"
        f" FROM {rows} {join} {users.relation} u ON {stored} = s.value AND {column} IS NOT NULL"
        f" GROUP BY s.user_key, s.priority, s.value"
    )


def _open_rows(kind: IdentifierKind, deferred: bool, open_only: bool = True) -> str:
    """A FROM item `s`: the kind's rows with a value, of source users no identifier of an
    earlier priority has matched alone (as far as looked up): for any other, this identifier
    can change nothing. Looking up only those makes every later kind's lookup, and the
    decision, smaller."""
    rows = f"{ROWS} s" if deferred else "cs_ids s"
    settled = (
        " AND NOT EXISTS (SELECT 1 FROM cs_hits h WHERE h.user_key = s.user_key AND h.n = 1"
        " AND h.priority < s.priority)"
    )
    return (
        f"(SELECT s.user_key, s.priority, s.kind, s.value FROM {rows}"
        f" WHERE s.kind = '{kind.value}' AND s.value IS NOT NULL{settled if open_only else ''}) s"
    )


def _not_found_sql(kind: IdentifierKind, deferred: bool) -> str:
    """The open rows of one kind whose value no user holds, after an inner-join lookup."""
    return (
        f"SELECT s.user_key, s.priority, s.kind, s.value, 0, NULL FROM {_open_rows(kind, deferred)}"
        f" WHERE NOT EXISTS (SELECT 1 FROM cs_hits h WHERE h.kind = s.kind AND h.value = s.value)"
    )


class Session(Protocol):
    """An engine holding `cs_ids` (DuckDB on the worker, or the Netmera database)."""

    def run(self, sql: str) -> Sequence[Sequence[Any]]: ...

    def fetch(self, sql: str) -> pa.Table: ...  # a text column, audience-sized

    def load(self, table: str, data: pa.Table) -> None: ...  # a new temporary table

    def analyze(self, table: str) -> None: ...  # statistics, where the engine wants them


Resolve = Callable[[IdentifierKind, "pa.Array"], "pa.Array"]  # deferred raw texts → values


def lookup(
    session: Session,
    kinds: set[IdentifierKind],
    users: UserSide,
    dialect: Dialect,
    resolve: Resolve,
) -> dict[int, pa.Table]:
    """Stage 1 over `cs_ids`; returns the deferred values it normalised, per priority.

    One kind at a time, not one UNION ALL: DuckDB then stays within its memory limit. Deferred
    values (`raw`) are normalised by `resolve`, priority by priority, only for source users
    that no earlier identifier matched alone (a value can change no other user's result);
    reading a few more than needed would be harmless, reading one less never happens."""
    template = _hits_sql(min(kinds), users, dialect, open_only=False)
    session.run(f"CREATE TEMP TABLE cs_hits AS {template} LIMIT 0")
    if dialect.index_hits:
        # Every later lookup asks cs_hits, per audience row, whether its source user is
        # settled (user_key) and, after an inner join, whether its value was found (value).
        # Without these SQLite scans all of cs_hits for each row: at 200,000 source rows
        # ~10^10 row visits per kind (issue #9: not done after 15 minutes); with them, a probe.
        for name, columns in HITS_INDEXES.items():
            session.run(f"CREATE INDEX {name} ON cs_hits ({columns})")
    session.run(CREATE_RESOLVED)
    deferred = session.run(
        "SELECT DISTINCT priority, kind FROM cs_ids WHERE raw IS NOT NULL ORDER BY priority"
    )
    later = {IdentifierKind(kind) for _, kind in deferred}
    sizes, first = {}, {}
    for kind, values, rows, priority in session.run(
        "SELECT kind, count(value), count(*), min(priority) FROM cs_ids"
        " WHERE kind IS NOT NULL GROUP BY kind"
    ):
        sizes[kind], first[IdentifierKind(kind)] = (int(values), int(rows)), int(priority)

    def insert(kind: IdentifierKind) -> None:
        probe = users.probes(kind.value, sizes[kind.value][1])
        hits = _hits_sql(kind, users, dialect, probe, deferred=kind in later)
        session.run(f"INSERT INTO cs_hits {hits}")
        if not dialect.outer_join:
            session.run(f"INSERT INTO cs_hits {_not_found_sql(kind, kind in later)}")

    # In priority order: the users an earlier kind matches are left out of the later lookups.
    for kind in sorted(kinds - later, key=lambda k: first.get(k, 0)):
        if sizes.get(kind.value, (0, 0))[0]:
            insert(kind)
    # Users matched by a kind looked up so far are settled; a kind with deferred values is
    # looked up once they are read, so the user table is still read once per kind.
    resolved = {}
    for priority, kind in deferred:
        pairs = _resolve(session, int(priority), IdentifierKind(kind), resolve)
        if pairs is not None:
            resolved[int(priority)] = pairs
    for kind in sorted(later, key=lambda k: first[k]):
        insert(kind)
    session.analyze("cs_hits")
    if users.has_push:
        user_id = users.columns["user_id"]
        push = dialect.is_true.format(users.columns["push_permitted"])
        found = "SELECT user_id FROM cs_hits WHERE n = 1"
        ((alone,),) = session.run(f"SELECT count(*) FROM ({found}) f")
        wanted = f"= ANY(ARRAY({found}))" if users.probes("user_id", alone) else f"IN ({found})"
        session.run(
            f"CREATE TEMP TABLE cs_reach AS SELECT DISTINCT {user_id} AS user_id"
            f" FROM {users.relation} u WHERE {push} AND {user_id} {wanted}"
        )
    return resolved


def _resolve(
    session: Session, priority: int, kind: IdentifierKind, resolve: Resolve
) -> pa.Table | None:
    """Normalise the deferred values at `priority` of the users still open into cs_resolved;
    return the (raw, value) pairs."""
    import pyarrow as pa

    # NOT EXISTS, not NOT IN: an anti-join PostgreSQL can hash whatever the work_mem.
    settled = (
        f"SELECT 1 FROM cs_hits h WHERE h.user_key = d.user_key AND h.n = 1"
        f" AND h.priority < {priority}"
    )
    raws = (
        session.fetch(
            f"SELECT DISTINCT d.raw FROM cs_ids d WHERE d.priority = {priority}"
            f" AND d.raw IS NOT NULL AND NOT EXISTS ({settled})"
        )
        .column(0)
        .combine_chunks()
    )
    if not len(raws):
        return None
    resolved = pa.table({"raw": raws, "value": resolve(kind, raws)})
    apply_resolved(session, priority, resolved)
    return resolved


def apply_resolved(session: Session, priority: int, resolved: pa.Table) -> None:
    """Add (raw, value) pairs of the deferred rows at `priority` to cs_resolved."""
    session.load("cs_resolved_in", resolved)
    session.run(f"INSERT INTO cs_resolved SELECT {priority}, raw, value FROM cs_resolved_in")
    session.run("DROP TABLE cs_resolved_in")


_DECIDE = """
CREATE TEMP TABLE cs_source_users AS
WITH hits AS (
    -- every identifier row: those with a value were all looked up
    -- (the rows with a value not looked up are those of users matched earlier: no matter)
    SELECT user_key, priority, kind, value, n, user_id FROM cs_hits
    UNION ALL
    SELECT user_key, priority, kind, value, 0, NULL FROM CS_ROWS s
    WHERE value IS NULL AND NOT unread
), per_user AS (
    SELECT user_key,
           -- the first identifier by priority, then by lowest value, that finds one user
           -- (arg_min_null: that user's id even when null, a user too)
           min(priority) FILTER (WHERE n = 1) AS priority,
           arg_min_null(user_id, (priority, value)) FILTER (WHERE n = 1) AS user_id,
           max(n) > 1 AS ambiguous,
           count(value) > 0 AS any_valid,
           count(priority) > 0 AS any_present
    FROM hits GROUP BY user_key
)
SELECT p.user_key, p.user_id, k.kind AS matched_by, p.priority, p.priority IS NOT NULL AS matched,
       CASE WHEN p.priority IS NOT NULL THEN NULL
            WHEN ambiguous THEN 'ambiguous'
            WHEN any_valid THEN 'not_found'
            WHEN any_present THEN 'invalid_identifier'
            ELSE 'no_identifier' END AS reason
FROM per_user p  -- one priority is one kind
LEFT JOIN (SELECT DISTINCT priority, kind FROM cs_ids WHERE priority IS NOT NULL) k
    ON k.priority = p.priority;

-- Several source users may land on one Netmera user: one member, credited to the
-- best-priority identifier that reached it.
CREATE TEMP TABLE cs_members AS
SELECT user_id, arg_min(matched_by, priority) AS matched_by
FROM cs_source_users WHERE matched GROUP BY user_id;
""".replace("CS_ROWS", ROWS)


def decide(run: Run, has_push: bool) -> Counts:
    """Stage 2, in DuckDB, over `cs_ids`, `cs_resolved`, `cs_hits` and (with push)
    `cs_reach`."""
    run(_DECIDE)
    ((total, matched),) = run(
        "SELECT count(*), count(*) FILTER (WHERE matched) FROM cs_source_users"
    )
    reasons = dict(run("SELECT reason, count(*) FROM cs_source_users GROUP BY reason"))
    matched_by = dict(run("SELECT matched_by, count(*) FROM cs_source_users GROUP BY 1"))
    ((members,),) = run("SELECT count(*) FROM cs_members")
    reachable = None
    if has_push:
        ((reachable,),) = run(
            "SELECT count(*) FROM cs_members WHERE user_id IN (SELECT user_id FROM cs_reach)"
        )
    return Counts(
        connector_users=total,
        matched_source_users=matched,
        netmera_users=members,
        reachable=reachable,
        reasons={r: reasons.get(r, 0) for r in REASONS},
        matched_by={k: n for k, n in matched_by.items() if k is not None},
    )
