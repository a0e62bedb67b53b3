"""`python -m include.cli doctor`: is this deployment ready to match at scale?

Checks, in order, each `ok`, `missing` (exit 1) or `warn`, with what to do about it:
- connection: `netmera_db` is defined and answers; which matching path it will take (with
  `auto`, for which audiences);
- migrations: the store's version table (`cs_alembic_version`) is at the head of
  include/store/migrations (they run on first use; the doctor itself never writes);
- user table: it exists and has every column the connection's extras map;
- indexes: what the database path needs for the identifier kinds the configured segments use
  (include/matching/indexes.py), with the statement that creates each missing one; on SQLite
  `auto` takes the worker path until they all exist.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from include.matching.rules import POSTGRES_SHA256_FUNCTION

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.config.segments import IdentifierKind
    from include.matching.user_table import UserTable

OK, MISSING, WARN = "ok", "missing", "warn"


@dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    fix: str | None = None


def diagnose() -> list[Check]:
    """Every check; a failed connection stops there (nothing else can be read)."""
    from include.matching.paths import choose_path
    from include.orchestration.connections import netmera_database
    from include.store.database import NETMERA_DB_CONN_ID

    try:
        db = netmera_database()
        engine, info, table = db.engine, db.info, db.users
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        kinds, used_by = _segment_kinds(table)
        path = choose_path(engine, info.extra, table, 0, kinds)
    except Exception as exc:  # any failure here is the finding itself
        return [
            Check(
                "connection",
                MISSING,
                f"{NETMERA_DB_CONN_ID}: {type(exc).__name__}: {exc}",
                "define the Airflow Connection netmera_db (README: Connections)",
            )
        ]
    where = engine.url.render_as_string(hide_password=True)
    checks = [
        Check(
            "connection",
            OK,
            f"{NETMERA_DB_CONN_ID}: {where}; {_path_note(engine, info, table, path, kinds)}",
        )
    ]
    checks.append(_migrations(engine))
    columns = _user_table(engine, table)
    checks.append(columns)
    if columns.status == OK:
        checks.extend(_indexes(engine, info.extra, table, kinds, used_by))
    return checks


def _path_note(
    engine: sa.Engine, info: Any, table: UserTable, path: str, kinds: set[IdentifierKind]
) -> str:
    from include.matching import indexes
    from include.matching.paths import PATH_EXTRA, SQLITE_RATIO
    from include.matching.rules import PROBE_RATIO
    from include.matching.user_table import table_rows

    note = f"match path: {path}"
    if (info.extra.get(PATH_EXTRA) or "auto") != "auto":
        return note
    if engine.dialect.name == "postgresql":
        rows = table_rows(engine, table)
        if rows:
            note += f" (auto: worker for audiences of more than {rows // PROBE_RATIO:,} rows)"
    elif engine.dialect.name == "sqlite" and _has_table(engine, table):
        if indexes.missing(engine, table, kinds):
            note += " (auto: database path once the indexes below exist)"
        elif rows := table_rows(engine, table):
            limit = -(-rows // SQLITE_RATIO)  # auto: worker from 1/SQLITE_RATIO of the rows
            note += f" (auto: worker for audiences of {limit:,} rows or more)"
        else:
            note += " (auto: the user table is empty)"
    return note


def _has_table(engine: sa.Engine, table: UserTable) -> bool:
    import sqlalchemy as sa

    return sa.inspect(engine).has_table(table.table, schema=table.schema)


def _migrations(engine: sa.Engine) -> Check:
    import sqlalchemy as sa

    from include.store.migrate import VERSION_TABLE, heads_and_pending

    current: set[str] = set()
    if sa.inspect(engine).has_table(VERSION_TABLE):
        with engine.connect() as conn:
            current = {
                r[0] for r in conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")
            }
    heads, pending = heads_and_pending(current)
    if current == heads:
        return Check("migrations", OK, f"store at head {', '.join(sorted(heads))}")
    return Check(
        "migrations",
        MISSING,
        f"store at {', '.join(sorted(current)) or 'nothing (no ' + VERSION_TABLE + ')'}, "
        f"head {', '.join(sorted(heads))}: pending {', '.join(pending)}",
        "they run on first use of any task or CLI command, e.g. `python -m include.cli list`",
    )


def _user_table(engine: sa.Engine, table: UserTable) -> Check:
    import sqlalchemy as sa

    name = f"{table.schema}.{table.table}" if table.schema else table.table
    inspector = sa.inspect(engine)
    if not inspector.has_table(table.table, schema=table.schema):
        return Check("user table", MISSING, f"no table {name}", "set users_table/users_schema")
    present = {c["name"] for c in inspector.get_columns(table.table, schema=table.schema)}
    absent = sorted(
        f"{logical} (as {actual!r})"
        for logical, actual in table.columns.items()
        if actual and actual not in present
    )
    if absent:
        return Check(
            "user table",
            MISSING,
            f"{name} has no column for {', '.join(absent)}",
            "map them in the netmera_db extra 'user_columns' (null if the table has none)",
        )
    return Check("user table", OK, f"{name}: every mapped column present")


def _indexes(
    engine: sa.Engine,
    extra: dict[str, Any],
    table: UserTable,
    kinds: set[IdentifierKind],
    used_by: str,
) -> list[Check]:
    from include.matching import indexes
    from include.matching.paths import PATH_EXTRA, supported
    from include.matching.rules import HASHED

    if (extra.get(PATH_EXTRA) or "auto") == "worker" or not supported(engine):
        return [Check("indexes", OK, "worker path: the table is read in full, no index used")]
    # With `auto` too: on SQLite it takes the worker path until they all exist.
    lacking = {need.key for need in indexes.missing(engine, table, kinds)}
    checks = []
    for need in indexes.needed(table, kinds, engine.dialect.name):
        target = f"{POSTGRES_SHA256_FUNCTION}({need.column})" if need.hashed else need.column
        checks.append(
            Check(
                f"index {need.key}",
                MISSING if need.key in lacking else OK,
                f"{table.table}({target}): {need.why} ({used_by})",
                "; ".join(need.create_sql(table, engine.dialect)) + ";"
                if need.key in lacking
                else None,
            )
        )
    if engine.dialect.name != "postgresql":
        checks.extend(
            Check(
                f"hashed {kind.value}",
                WARN,
                f"{kind.value} hashes every stored value on each run: no index can serve it",
                "see docs/matching-at-scale.md (Indexes)",
            )
            for kind in sorted(kinds & HASHED)
        )
    return checks


def _segment_kinds(table: UserTable) -> tuple[set[IdentifierKind], str]:
    """Kinds the configured segments match on (all mapped kinds when none is configured)."""
    from include.config.segments import IdentifierKind, load_segments
    from include.matching.user_table import KIND_COLUMN

    segments = load_segments().segments
    if not segments:
        mapped = {k for k in IdentifierKind if table.columns.get(KIND_COLUMN[k])}
        return mapped, "no segment configured: every mapped kind"
    kinds = {i.kind for s in segments for i in s.identifiers}
    return kinds, f"{len(segments)} segment(s) configured"


def render(checks: list[Check]) -> str:
    width = max(len(c.check) for c in checks)
    lines = []
    for c in checks:
        lines.append(
            f"{c.check.ljust(width)}  {c.status.upper() if c.status != OK else OK:8} {c.detail}"
        )
        if c.fix:
            lines.append(f"{' ' * width}  {'':8} fix: {c.fix}")
    missing = sum(c.status == MISSING for c in checks)
    warnings = sum(c.status == WARN for c in checks)
    lines.append(f"{missing} missing, {warnings} warning(s)")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": all(c.status != MISSING for c in checks), "checks": [asdict(c) for c in checks]}
