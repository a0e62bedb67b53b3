"""Source queries can only read: two layers, each enough for the common cases.

1. Before it runs (`read_only_problem`, with sqlparse): exactly one statement, a SELECT,
   VALUES or WITH ... SELECT, with no data-modifying keyword anywhere (writable CTEs,
   SELECT ... INTO, FOR UPDATE) and no call to a function known to change the database or the
   session (nextval, set_config, advisory locks, large objects, ...). The error says why.
2. While it runs (`source_engine_for` / `read_only_connection`): the database itself refuses
   every write: SQLite opened read-only with `query_only` and an authorizer that allows only
   reads, PostgreSQL and MySQL in a READ ONLY transaction checked against the server.

Some things no read-only transaction stops (PostgreSQL's `COPY ... TO` file as a superuser,
MySQL's `INTO OUTFILE` with FILE): only layer 1 does, so a source login should only read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from include.clients.database import sqlalchemy_url

if TYPE_CHECKING:
    import sqlalchemy as sa

    from include.clients.connection import ConnectionInfo

READS = "a source query may only read: one SELECT, VALUES or WITH ... SELECT statement"

# Keywords that make a statement write, wherever they stand (a writable CTE hides a DELETE
# behind WITH; SELECT ... INTO creates a table, or on MySQL a file; FOR UPDATE locks rows).
_WRITING_KEYWORDS = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "UPSERT",
        "REPLACE",
        "CREATE",
        "DROP",
        "ALTER",
        "TRUNCATE",
        "INTO",
        "ATTACH",
        "DETACH",
        "PRAGMA",
        "VACUUM",
        "COPY",
        "GRANT",
        "REVOKE",
        "COMMIT",
        "ROLLBACK",
    }
)
# Functions that change the database, the server or the session, or read server files.
_WRITING_FUNCTIONS = frozenset(
    {
        "nextval",
        "setval",
        "set_config",
        "lo_import",
        "lo_export",
        "lo_unlink",
        "lo_create",
        "lo_creat",
        "lo_put",
        "lo_from_bytea",
        "lo_truncate",
        "lowrite",
        "pg_notify",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "load_extension",
        "readfile",
        "writefile",
        "get_lock",
        "release_lock",
        "release_all_locks",
        "load_file",
        "sys_exec",
        "sys_eval",
    }
)
_WRITING_FUNCTION_PREFIXES = ("pg_advisory_", "pg_try_advisory_", "dblink")


def read_only_problem(query: str) -> str | None:
    """Why `query` is not one reading statement, or None. Never quotes the query."""
    import sqlparse
    from sqlparse import tokens as T

    problem = several_statements(query)
    if problem:
        return problem
    statements = [s for s in sqlparse.parse(query) if s.token_first(skip_cm=True) is not None]
    if not statements:
        return "it is empty"
    if len(statements) != 1:
        return f"it holds {len(statements)} statements"
    tokens = [
        t for t in statements[0].flatten() if not t.is_whitespace and t.ttype not in T.Comment
    ]
    if any(t.ttype in T.Error for t in tokens):
        return "it cannot be parsed (an unclosed quote?)"
    opening = next((t for t in tokens if t.value != "("), None)
    if opening is None or opening.normalized.upper() not in ("SELECT", "VALUES", "WITH"):
        first = opening.normalized.upper() if opening is not None else "nothing"
        return f"it starts with {first}, not SELECT, VALUES or WITH"
    for index, token in enumerate(tokens):
        word = token.normalized.upper()
        following = tokens[index + 1].value if index + 1 < len(tokens) else ""
        if token.ttype in T.Keyword and word in _WRITING_KEYWORDS and following != "(":
            return f"it contains {word}, which writes"
        if following == "(" and (token.ttype in T.Name or token.ttype in T.Literal.String.Symbol):
            function = token.value.strip('"`').lower()
            if function in _WRITING_FUNCTIONS or function.startswith(_WRITING_FUNCTION_PREFIXES):
                return f"it calls {function}(), which changes the database, server or session"
    return None


class NotReadOnly(ValueError):
    """A source query that is not one reading statement, or a connection that did not become
    read-only. The text says why, without quoting the query."""


def source_engine_for(conn: ConnectionInfo) -> sa.Engine:
    """An engine whose every connection is read-only at the database, for `sql` sources.

    - SQLite: the file is opened with `mode=ro` (a missing file is an error, never created) and
      `PRAGMA query_only=ON`; `read_only_connection` adds an authorizer. No `journal_mode` pragma
      (changing it is a write). A database in WAL mode still gets SQLite's own `-wal`/`-shm`
      files next to it, as for any reader.
    - PostgreSQL: `read_only_connection` begins the transaction READ ONLY (psycopg2's
      `readonly`, then `SET TRANSACTION READ ONLY`) and checks it. Transaction-scoped on
      purpose: a session-level default would be refused by PgBouncer (`options`) or leak to
      other clients of a pooled server connection, and stops nothing a session default could.
    - MySQL/MariaDB: the session's transactions are READ ONLY (`init_command`), and
      `read_only_connection` starts a READ ONLY transaction and checks it.

    On every dialect a statement with a `;` before its end never reaches the driver (psycopg2
    sends a string as one simple query: a `COMMIT` inside would end the read-only transaction).
    One connection per engine use (NullPool): session state never outlives the query.
    """
    import sqlalchemy as sa

    url = sqlalchemy_url(conn)
    backend = url.get_backend_name()
    common = {"hide_parameters": True, "poolclass": sa.pool.NullPool}
    if backend == "sqlite":
        uri = _sqlite_read_only_uri(url.database)
        engine = sa.create_engine(
            "sqlite://", creator=lambda: _sqlite_read_only_connect(uri), **common
        )
    elif backend == "postgresql":
        engine = sa.create_engine(url, **common)
    elif backend == "mysql":
        engine = sa.create_engine(
            url, connect_args={"init_command": "SET SESSION TRANSACTION READ ONLY"}, **common
        )
    else:  # sqlalchemy_url only builds the three above
        raise ValueError(f"connection {conn.conn_id!r}: no read-only mode for {backend!r}")
    sa.event.listen(engine, "before_cursor_execute", _refuse_several_statements, retval=False)
    return engine


def _sqlite_read_only_uri(path: str) -> str:
    from urllib.parse import quote

    return f"file:{quote(path)}?mode=ro"


def _sqlite_read_only_connect(uri: str) -> sqlite3.Connection:
    connection = sqlite3.connect(uri, uri=True, timeout=60)
    connection.execute("PRAGMA query_only=ON")
    return connection


def _refuse_several_statements(_conn, _cursor, statement, _params, _context, _many) -> None:
    problem = several_statements(statement)
    if problem:
        raise NotReadOnly(problem)


def several_statements(query: str) -> str | None:
    """Why `query` may hold more than one statement, or None.

    A `;` anywhere but at the end is refused, even inside a string literal or a comment: the
    databases' lexers differ (backslashes, nested comments, dollar quotes), and without a `;`
    no dialect can read two statements.
    """
    if ";" in query.strip().rstrip(";"):
        return (
            "it holds more than one statement: ';' may only end it (a ';' inside a string or "
            "a comment is refused too; write chr(59) or char(59))"
        )
    return None


_SQLITE_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_SQLITE_REFUSED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit"})


def _sqlite_authorizer(action: int, arg1, arg2, _db, _trigger) -> int:
    """Reading only: SELECT, reading columns, functions, recursive CTEs. ATTACH (creates a
    file), PRAGMA, VACUUM INTO, temp tables and every write are denied."""
    if action not in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQLITE_REFUSED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


@contextmanager
def read_only_connection(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection of `source_engine_for(...)` inside a transaction the server holds
    read-only, checked against the server before anything else runs on it."""
    with engine.connect() as conn:
        backend = engine.dialect.name
        if backend == "sqlite":
            if conn.exec_driver_sql("PRAGMA query_only").scalar() != 1:
                raise NotReadOnly("SQLite did not turn query_only on")
            # Installed last: from here on the connection can only read.
            conn.connection.dbapi_connection.set_authorizer(_sqlite_authorizer)
        elif backend == "postgresql":
            conn.execution_options(postgresql_readonly=True)  # psycopg2: BEGIN READ ONLY
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            if conn.exec_driver_sql("SHOW transaction_read_only").scalar() != "on":
                raise NotReadOnly("PostgreSQL did not make the transaction read-only")
        elif backend == "mysql":
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
            if _mysql_read_only(conn) != 1:
                raise NotReadOnly("MySQL did not make the session read-only")
        else:
            raise NotReadOnly(f"no read-only mode for {backend!r}")
        yield conn


def _mysql_read_only(conn: sa.Connection) -> int | None:
    import sqlalchemy as sa

    try:  # MySQL 8 and MariaDB 11.1+
        return int(conn.exec_driver_sql("SELECT @@session.transaction_read_only").scalar())
    except sa.exc.DBAPIError:  # older MariaDB and MySQL 5.7 spell it tx_read_only
        return int(conn.exec_driver_sql("SELECT @@session.tx_read_only").scalar())


# SQLSTATE / error numbers / messages with which each database refuses a write.
_PG_REFUSALS = {"25006"}  # read_only_sql_transaction
_MYSQL_REFUSALS = {1792, 1290}  # read-only transaction; --read-only server
_SQLITE_REFUSALS = (
    "not authorized",
    "authorization denied",
    "attempt to write a readonly database",
    "one statement at a time",
)


def refused_as_a_write(exc: BaseException) -> bool:
    """Whether a driver error is the database refusing to change something."""
    if isinstance(exc, NotReadOnly):
        return True
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, NotReadOnly):
        return True
    if getattr(orig, "pgcode", None) in _PG_REFUSALS:
        return True
    if "data-modifying statements" in str(orig):  # PostgreSQL: writable CTE under DECLARE
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_REFUSALS:
        return True
    if isinstance(orig, sqlite3.Error):
        return any(text in str(orig) for text in _SQLITE_REFUSALS)
    return False
