"""The matching rules as SQL, written once for both paths: every statement over the temporary
tables of a match, and their names. Text only: `lookup.py` runs stage 1, `decide.py` stage 2.

1. **Lookup**, where the user table is: DuckDB over its Parquet export (worker path), or
   PostgreSQL/SQLite over the real indexed table (database path). Input `cs_ids(user_key,
   priority, kind, value, raw)` (see `audience.py`). Output, audience-sized:
   - `cs_hits(user_key, priority, kind, value, n, user_id)`: for each `cs_ids` row with a
     value, of a source user no earlier identifier matched, how many Netmera users hold it
     (`n`: 0, 1, or 2 for several; a null user id counts as a user) and the user id when
     one. Only audience values are looked up: the work follows the audience, never the
     table. Per row rather than per value: which source users are already matched is then a
     filter, not a join (see `open_raws`), and the decision needs no join either. (SQLite
     runs a LEFT JOIN row by row, hashing the whole table for each row of a hashed kind:
     there the rows found come from an inner join and the others are added after it, see
     `Dialect.outer_join`; and it answers a correlated NOT EXISTS over `cs_hits` by a scan of
     it per row unless `cs_hits` is indexed, see `Dialect.index_hits`);
   - `cs_resolved(priority, raw, value)`: the deferred values it normalised (`cs_resolved_in`
     brings in one priority's);
   - `cs_reach(user_id)`: the users found alone that have a device permitting push (when
     the table says so).
2. **Decide**, always in DuckDB on the worker, over those tables: per source user the first
   identifier by priority (ties: lowest value) that finds exactly one user, otherwise one
   reason, the first that applies of ambiguous → not_found → invalid_identifier →
   no_identifier (`cs_source_users`); the members (distinct users, each credited to the
   best-priority kind that reached it: `cs_members`); the counts.

The lookup SQL differs per engine only in how it hashes and joins (`Dialect`); the decisions
are one SQL text, so both paths give identical members, reasons and counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from include.config.segments import IdentifierKind
from include.matching.user_table import KIND_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa

REASONS = ("ambiguous", "not_found", "invalid_identifier", "no_identifier")
# The version of what a source user resolves to: bump it with any change to normalisation
# (normalize.py, phones.py) or to these rules. Incremental matching carries a resolution over
# only when it was made under the same version (`carry.basis`); a new one matches in full.
RULES_VERSION = 1
HASHED = {IdentifierKind.EMAIL_SHA256, IdentifierKind.MSISDN_SHA256}
PROBE_RATIO = 25  # measured on PostgreSQL 15: ~7 µs an index probe, ~0.3 µs a hashed row
# The temporary tables stage 1 makes where it runs, by the names other modules use (the SQL here
# spells them out); the decision adds cs_source_users and cs_members, in DuckDB only.
IDS = "cs_ids"  # the normalised identifier rows (audience.py)
RESOLVED = "cs_resolved"  # deferred values, as normalised during the lookup
RESOLVED_IN = "cs_resolved_in"  # one priority's of them, on their way in
HITS = "cs_hits"
REACH = "cs_reach"
# Every Netmera user holding a value found by several (`n > 1` in cs_hits): who an ambiguous
# identifier depends on, kept with the resolution so that a change of any of them re-matches it.
CANDIDATES = "cs_candidates"
LOOKUP_TABLES = (RESOLVED_IN, RESOLVED, REACH, CANDIDATES, HITS, IDS)
CREATE_RESOLVED = "CREATE TEMP TABLE cs_resolved (priority SMALLINT, raw TEXT, value TEXT)"
# The identifier rows, deferred values as normalised so far (`cs_resolved`, small): a join, not
# an UPDATE of cs_ids (DuckDB: ~0.25 s at 1M source rows, most of a small kind's lookup).
# `unread`: a deferred value never normalised (its source user was matched before it counted).
ROWS = (
    "(SELECT s.user_key, s.priority, s.kind, coalesce(s.value, r.value) AS value,"
    " s.raw IS NOT NULL AND r.raw IS NULL AS unread FROM cs_ids s"
    " LEFT JOIN cs_resolved r ON r.priority = s.priority AND r.raw = s.raw)"
)


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
# The databases the database path runs on, by SQLAlchemy dialect name.
DIALECTS = {"postgresql": POSTGRES, "sqlite": SQLITE}


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


# Stage 1's statements, in the order `lookup.lookup` runs them.
HITS_INDEXES = (
    "CREATE INDEX cs_hits_user_key ON cs_hits (user_key, priority)",
    "CREATE INDEX cs_hits_value ON cs_hits (value, kind)",
)
DEFERRED_KINDS = (
    "SELECT DISTINCT priority, kind FROM cs_ids WHERE raw IS NOT NULL ORDER BY priority"
)
KIND_SIZES = (
    "SELECT kind, count(value), count(*), min(priority) FROM cs_ids"
    " WHERE kind IS NOT NULL GROUP BY kind"
)
FOUND_ALONE = "SELECT user_id FROM cs_hits WHERE n = 1"
ALONE_COUNT = f"SELECT count(*) FROM ({FOUND_ALONE}) f"


def create_hits(kind: IdentifierKind, users: UserSide, dialect: Dialect) -> str:
    """An empty `cs_hits`, typed as the lookups of `kind` write it."""
    return (
        f"CREATE TEMP TABLE cs_hits AS {_hits_sql(kind, users, dialect, open_only=False)} LIMIT 0"
    )


def insert_hits(
    kind: IdentifierKind, users: UserSide, dialect: Dialect, probe: bool, deferred: bool
) -> list[str]:
    """The lookup of one kind into `cs_hits` (see `_hits_sql`); without `outer_join`, the rows
    not found after those found."""
    statements = [f"INSERT INTO cs_hits {_hits_sql(kind, users, dialect, probe, deferred)}"]
    if not dialect.outer_join:
        statements.append(f"INSERT INTO cs_hits {_not_found_sql(kind, deferred)}")
    return statements


def open_raws(priority: int) -> str:
    """The distinct deferred texts at `priority` of source users no earlier identifier matched
    alone. NOT EXISTS, not NOT IN: an anti-join PostgreSQL can hash whatever the work_mem."""
    return (
        f"SELECT DISTINCT d.raw FROM cs_ids d WHERE d.priority = {priority}"
        f" AND d.raw IS NOT NULL AND NOT EXISTS (SELECT 1 FROM cs_hits h"
        f" WHERE h.user_key = d.user_key AND h.n = 1 AND h.priority < {priority})"
    )


def add_resolved(priority: int) -> list[str]:
    """`cs_resolved_in` (raw, value), just loaded, into `cs_resolved` at `priority`."""
    return [
        f"INSERT INTO cs_resolved SELECT {priority}, raw, value FROM cs_resolved_in",
        "DROP TABLE cs_resolved_in",
    ]


CREATE_CANDIDATES = "CREATE TEMP TABLE cs_candidates (kind TEXT, value TEXT, user_id TEXT)"
AMBIGUOUS_KINDS = "SELECT kind, count(DISTINCT value) FROM cs_hits WHERE n > 1 GROUP BY kind"


def insert_candidates(
    kind: IdentifierKind, users: UserSide, dialect: Dialect, probe: bool = False
) -> str:
    """The users holding each value of `kind` that several hold (few: the ambiguous ones),
    through the kind's index when `probe`. A row without a user id has no key to follow, so
    it is not listed."""
    user_id = users.columns["user_id"]
    column = users.columns[KIND_COLUMN[kind]]
    stored = dialect.sha256_hex.format(column) if kind in HASHED else column
    values = f"SELECT value FROM cs_hits WHERE kind = '{kind.value}' AND n > 1"
    wanted = f"= ANY(ARRAY({values}))" if probe else f"IN ({values})"
    return (
        f"INSERT INTO cs_candidates SELECT DISTINCT '{kind.value}', {stored},"
        f" CAST({user_id} AS TEXT) FROM {users.relation} u"
        f" WHERE {stored} {wanted} AND {user_id} IS NOT NULL"
    )


def create_reach(users: UserSide, dialect: Dialect, alone: int) -> str:
    """`cs_reach` from the `alone` users found alone: through the user id's index when it pays."""
    user_id = users.columns["user_id"]
    push = dialect.is_true.format(users.columns["push_permitted"])
    wanted = (
        f"= ANY(ARRAY({FOUND_ALONE}))" if users.probes("user_id", alone) else f"IN ({FOUND_ALONE})"
    )
    return (
        f"CREATE TEMP TABLE cs_reach AS SELECT DISTINCT {user_id} AS user_id"
        f" FROM {users.relation} u WHERE {push} AND {user_id} {wanted}"
    )


# Between the engines (database path): a lookup table of text columns (and a smallint
# `priority`) loaded into the database, and the outputs read back out, user ids as text as the
# worker path has them.
def create_text_table(table: str, names: list[str]) -> str:
    columns = ", ".join(f"{c} {'SMALLINT' if c == 'priority' else 'TEXT'}" for c in names)
    return f"CREATE TEMP TABLE {table} ({columns})"


def insert_rows(table: str, width: int) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join('?' * width)})"


def analyze(table: str) -> str:
    return f"ANALYZE {table}"  # PostgreSQL: autovacuum never sees temporary tables


def drop(table: str) -> str:
    return f"DROP TABLE IF EXISTS {table}"


EXPORTS = {
    RESOLVED: "SELECT priority, raw, value FROM cs_resolved",
    HITS: "SELECT user_key, priority, kind, value, n, CAST(user_id AS TEXT) FROM cs_hits",
    REACH: "SELECT CAST(user_id AS TEXT) FROM cs_reach",
    CANDIDATES: "SELECT kind, value, user_id FROM cs_candidates",
}


def export_schema(table: str) -> pa.Schema:
    """The Arrow schema of `EXPORTS[table]`."""
    import pyarrow as pa

    text = pa.string()
    return {
        RESOLVED: pa.schema([("priority", pa.int16()), ("raw", text), ("value", text)]),
        HITS: pa.schema(
            [
                ("user_key", text),
                ("priority", pa.int16()),
                ("kind", text),
                ("value", text),
                ("n", pa.int32()),
                ("user_id", text),
            ]
        ),
        REACH: pa.schema([("user_id", text)]),
        CANDIDATES: pa.schema([("kind", text), ("value", text), ("user_id", text)]),
    }[table]


# DuckDB: a table from a Parquet file or a registered view, and the members out to Parquet.
def parquet(path: Path) -> str:
    return f"read_parquet({_quoted(path)})"


def create_from(table: str, source: str) -> str:
    return f"CREATE TEMP TABLE {table} AS SELECT * FROM {source}"


def copy_members(path: Path) -> str:
    return _copy_out("SELECT user_id, matched_by FROM cs_members", path)


def copy_unmatched(path: Path) -> str:
    """Every unmatched source user's key and its one reason, out to Parquet."""
    return _copy_out("SELECT user_key, reason FROM cs_source_users WHERE NOT matched", path)


def _copy_out(query: str, path: Path) -> str:
    return f"COPY ({query}) TO {_quoted(path)} (FORMAT parquet)"


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


DECIDE = """
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
""".replace("CS_ROWS", ROWS)

# Several source users may land on one Netmera user: one member, credited to the
# best-priority identifier that reached it. Over every source user: those just decided and,
# in an incremental match, those carried over (`add_carried`).
MEMBERS = """
CREATE TEMP TABLE cs_members AS
SELECT user_id, arg_min(matched_by, priority) AS matched_by
FROM cs_source_users WHERE matched GROUP BY user_id;
"""

# Stage 1's tables, empty, for an incremental match that re-matches nobody (DuckDB).
EMPTY_LOOKUP = (
    "CREATE TEMP TABLE cs_ids (user_key TEXT, priority SMALLINT, kind TEXT, value TEXT, raw TEXT)",
    CREATE_RESOLVED,
    "CREATE TEMP TABLE cs_hits (user_key TEXT, priority SMALLINT, kind TEXT, value TEXT,"
    " n INTEGER, user_id TEXT)",
    "CREATE TEMP TABLE cs_reach (user_id TEXT)",
    CREATE_CANDIDATES,
)


# Incremental matching (`carry.py`): what the source users just decided resolve to, with the
# digest of their identifier fields (`cs_digests`) and whether their user can get a push...
# What the store keeps is written in the order of its primary key (`*_ORDER`): its index then
# grows at one end as they are copied in, where a random order costs a page visit a row. A
# full match's are narrowed to what changed first (`carry.narrowed`), which orders them then.
RESOLUTIONS_ORDER = "user_key"
TERMS_ORDER = "kind, value, user_key"


def _ordered(query: str, order: str, ordered: bool) -> str:
    return f"{query} ORDER BY {order}" if ordered else query


def copy_resolutions(path: Path, has_push: bool, ordered: bool) -> str:
    reachable = (  # of a matched user (an IN over no rows is false, even for a null)
        "CASE WHEN s.user_id IS NOT NULL THEN s.user_id IN (SELECT user_id FROM cs_reach) END"
        if has_push
        else "CAST(NULL AS BOOLEAN)"
    )
    query = (
        "SELECT s.user_key, d.digest, s.user_id, s.matched_by, CAST(s.priority AS SMALLINT)"
        f" AS priority, s.reason, {reachable} AS reachable FROM cs_source_users s"
        " JOIN cs_digests d ON d.user_key = s.user_key"
    )
    return _copy_out(_ordered(query, RESOLUTIONS_ORDER, ordered), path)


# ... what they depend on: each identifier value looked up, (kind, its SHA-256: the store keeps
# no email or phone), and each Netmera user found, (USER_TERM, user id), alone or among the
# candidates of an ambiguous value ...
USER_TERM = "@user"  # no identifier kind starts with "@"


def copy_terms(path: Path, ordered: bool) -> str:
    query = (
        "SELECT DISTINCT user_key, kind, sha256(value) AS value FROM cs_hits"
        " WHERE value IS NOT NULL"
        f" UNION SELECT DISTINCT user_key, '{USER_TERM}', user_id FROM cs_hits"
        " WHERE n = 1 AND user_id IS NOT NULL"
        f" UNION SELECT DISTINCT h.user_key, '{USER_TERM}', c.user_id FROM cs_hits h"
        " JOIN cs_candidates c ON c.kind = h.kind AND c.value = h.value WHERE h.n > 1"
    )
    return _copy_out(_ordered(query, TERMS_ORDER, ordered), path)


# ... and the source users carried over (the last match's resolutions, `kept`: Parquet,
# `carry.resolution_schema`, less the user keys in `dropped`), with the users they reach, join
# the decision; that match's members are kept aside for the members' change.
def add_carried(kept: Path, dropped: Path, has_push: bool) -> list[str]:
    statements = [
        f"CREATE TEMP TABLE cs_previous_members AS SELECT DISTINCT user_id FROM {parquet(kept)}"
        " WHERE reason IS NULL",  # a matched user has no reason
        f"CREATE TEMP VIEW cs_carried AS SELECT * FROM {parquet(kept)} k WHERE NOT EXISTS"
        f" (SELECT 1 FROM {parquet(dropped)} d WHERE d.user_key = k.user_key)",
        "INSERT INTO cs_source_users SELECT user_key, user_id, matched_by,"
        " priority, reason IS NULL, reason FROM cs_carried",
    ]
    if has_push:
        statements.append(
            "INSERT INTO cs_reach SELECT DISTINCT user_id FROM cs_carried WHERE reachable"
        )
    return statements


# The members' change against the previous match's members (`add_carried` set them aside): who
# entered, with the kind that reached them, and who left. A publish over the version that match
# made writes these and reads nothing.
def copy_entered(path: Path) -> str:
    query = (
        "SELECT user_id, matched_by FROM cs_members m WHERE NOT EXISTS (SELECT 1 FROM"
        " cs_previous_members p WHERE p.user_id = m.user_id)"
    )
    return _copy_out(query, path)


def copy_left(path: Path) -> str:
    query = (
        "SELECT user_id FROM cs_previous_members p WHERE NOT EXISTS"
        " (SELECT 1 FROM cs_members m WHERE m.user_id = p.user_id)"
    )
    return _copy_out(query, path)


# Stage 2's counts, after DECIDE.
SOURCE_USER_COUNTS = "SELECT count(*), count(*) FILTER (WHERE matched) FROM cs_source_users"
REASON_COUNTS = "SELECT reason, count(*) FROM cs_source_users GROUP BY reason"
MATCHED_BY_COUNTS = "SELECT matched_by, count(*) FROM cs_source_users GROUP BY 1"
MEMBER_COUNT = "SELECT count(*) FROM cs_members"
REACHABLE_COUNT = "SELECT count(*) FROM cs_members WHERE user_id IN (SELECT user_id FROM cs_reach)"
