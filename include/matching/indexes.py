"""The indexes the user table needs for the database path, and which of them it lacks.

The database path looks every audience value up in the column of its kind and finds matched
users' devices by user id (push permission): a B-tree index on `user_id` and on each identifier
column a segment matches on (`external_id`, `email`, `msisdn`, `installation_id`, under the
deployment's column names). On PostgreSQL those lookups then probe the index once per audience
value, so their cost follows the audience, not the table.

The hashed kinds compare the SHA-256 of the stored email or phone. PostgreSQL cannot index
`encode(sha256(convert_to(col, 'UTF8')), 'hex')` as is (`convert_to` is only STABLE), so the
recommendation is an IMMUTABLE wrapper, `cs_sha256_hex(text)`, and an index on it; without
them a hashed kind hashes every stored value on each run. SQLite gets no such index (its
hashing is a Python function of our connection). We only recommend: the user table is
Netmera's, never altered by us.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.matching.rules import HASHED, POSTGRES_SHA256_FUNCTION
from include.matching.user_table import KIND_COLUMN

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.config.segments import IdentifierKind
    from include.matching.user_table import UserTable

SHA256_FUNCTION_SQL = (
    f"CREATE OR REPLACE FUNCTION {POSTGRES_SHA256_FUNCTION}(text) RETURNS text"
    " LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE"
    " AS $$ SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex') $$"
)


@dataclass(frozen=True)
class IndexNeed:
    key: str  # what it serves: "user_id", or an identifier kind ("email", "email_sha256")
    column: str  # the deployment's column
    why: str
    hashed: bool = False  # an index on cs_sha256_hex(column)

    def create_sql(self, table: UserTable, dialect: sa.Dialect) -> list[str]:
        """Statements that create it (CONCURRENTLY on PostgreSQL: no write lock)."""
        quote = dialect.identifier_preparer.quote
        name = re.sub(r"\W", "_", f"cs_{table.table}_{self.key}_idx")
        target = quote(table.table)
        if table.schema:
            target = f"{quote(table.schema)}.{target}"
        expression = quote(self.column)
        if self.hashed:
            expression = f"{POSTGRES_SHA256_FUNCTION}({expression})"
        concurrently = " CONCURRENTLY" if dialect.name == "postgresql" else ""
        index = f"CREATE INDEX{concurrently} IF NOT EXISTS {quote(name)} ON {target} ({expression})"
        return [SHA256_FUNCTION_SQL, index] if self.hashed else [index]


def needed(table: UserTable, kinds: set[IdentifierKind], dialect: str) -> list[IndexNeed]:
    """user_id, then one per identifier kind (hashed kinds: on PostgreSQL only)."""
    wanted = [IndexNeed("user_id", table.columns["user_id"] or "", "finds matched users' devices")]
    for kind in sorted(kinds):
        column = table.columns.get(KIND_COLUMN[kind])
        if kind not in HASHED:
            wanted.append(IndexNeed(kind.value, column or "", f"looks up {kind.value} values"))
        elif dialect == "postgresql":
            why = f"looks up {kind.value} values (SHA-256 of {KIND_COLUMN[kind]})"
            wanted.append(IndexNeed(kind.value, column or "", why, hashed=True))
    seen: set[tuple[str, bool]] = set()
    unique = []
    for need in wanted:  # two kinds on one column (none today) would need one index
        if need.column and (need.column, need.hashed) not in seen:
            seen.add((need.column, need.hashed))
            unique.append(need)
    return unique


def missing(
    bind: sa.Engine | sa.Connection, table: UserTable, kinds: set[IdentifierKind]
) -> list[IndexNeed]:
    """Needed indexes with no index (or primary key) that leads with their column/expression."""
    import sqlalchemy as sa

    inspector = sa.inspect(bind)
    leading, hashed = set(), set()
    for index in inspector.get_indexes(table.table, schema=table.schema):
        first = (index.get("column_names") or [None])[0]
        if first:
            leading.add(first)
            continue
        expression = (index.get("expressions") or [""])[0].replace('"', "")
        found = re.fullmatch(rf"(?:\w+\.)?{POSTGRES_SHA256_FUNCTION}\((\w+)\)", expression)
        if found:
            hashed.add(found.group(1))
    primary = inspector.get_pk_constraint(table.table, schema=table.schema)
    leading.update(primary.get("constrained_columns", [])[:1])
    have_function = bind.dialect.name != "postgresql" or _has_sha256_function(bind)
    return [
        need
        for need in needed(table, kinds, bind.dialect.name)
        if not (
            (need.hashed and have_function and need.column in hashed)
            or (not need.hashed and need.column in leading)
        )
    ]


def _has_sha256_function(bind: sa.Engine | sa.Connection) -> bool:
    sql = f"SELECT to_regprocedure('{POSTGRES_SHA256_FUNCTION}(text)') IS NOT NULL"
    if hasattr(bind, "exec_driver_sql"):
        return bool(bind.exec_driver_sql(sql).scalar())
    with bind.connect() as conn:
        return bool(conn.exec_driver_sql(sql).scalar())
