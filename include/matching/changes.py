"""What changed in Netmera's user table since the last match: for incremental matching
(`carry.py`).

Changes come from a column the `netmera_db` Connection's extra `changed_at_column` names: a
timestamp on the database's clock, set when a row is inserted and whenever its user's
identifiers or push permission change. The database's time read before a match is its *mark*;
the next match reads the rows changed at or after `mark - overlap` (extra
`changed_at_overlap_seconds`, default 600): a transaction that set its timestamp before the
mark but committed after it was read is still seen, as long as it commits within the overlap.
Deletions need no column: the Netmera users a stored resolution depends on are looked up by id
(the store shares the database with the user table), and those gone are changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from include.matching.rules import HASHED
from include.matching.user_table import KIND_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import IdentifierKind
    from include.matching.user_table import UserTable

CHANGED_AT_EXTRA = "changed_at_column"
OVERLAP_EXTRA = "changed_at_overlap_seconds"
DEFAULT_OVERLAP = 600


@dataclass(frozen=True)
class ChangeColumn:
    name: str
    overlap: float = DEFAULT_OVERLAP  # seconds

    @classmethod
    def from_extras(cls, extra: dict[str, Any]) -> ChangeColumn | None:
        name = extra.get(CHANGED_AT_EXTRA)
        if not name:
            return None
        if not isinstance(name, str):
            raise ValueError(
                f"connection 'netmera_db': extra {CHANGED_AT_EXTRA!r} is a column name"
            )
        overlap = extra.get(OVERLAP_EXTRA, DEFAULT_OVERLAP)
        if isinstance(overlap, bool) or not isinstance(overlap, int | float) or overlap < 0:
            raise ValueError(
                f"connection 'netmera_db': extra {OVERLAP_EXTRA!r} is a number of seconds >= 0"
            )
        return cls(name, float(overlap))


def _source(table: UserTable, *names: str) -> sa.TableClause:
    import sqlalchemy as sa

    return sa.table(table.table, *(sa.column(n) for n in names), schema=table.schema)


def read_mark(engine: sa.Engine) -> dict[str, Any]:
    """The Netmera database's time now, as it answers it (JSON: a match keeps it): the next
    match reads the rows changed since, less the overlap. The database's clock, not the
    worker's: the one `changed_at` is set by."""
    import sqlalchemy as sa

    if engine.dialect.name == "sqlite":  # CURRENT_TIMESTAMP has whole seconds only
        now: Any = sa.func.strftime("%Y-%m-%d %H:%M:%f", "now")
    elif engine.dialect.name == "postgresql":
        now = sa.func.clock_timestamp()
    else:
        now = sa.func.current_timestamp()
    with engine.connect() as conn:
        value = conn.execute(sa.select(now)).scalar()
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, int | float):
        return {"number": value}
    return {"text": str(value)}


def _since(mark: dict[str, Any], overlap: float) -> Any:
    """`mark - overlap`, in the form the column compares with."""
    back = timedelta(seconds=overlap)
    if "datetime" in mark:
        return datetime.fromisoformat(mark["datetime"]) - back
    if "number" in mark:
        return mark["number"] - overlap
    text = mark["text"]
    earlier = datetime.fromisoformat(text) - back
    return earlier.isoformat(sep="T" if "T" in text else " ")


def changed_rows(
    engine: sa.Engine,
    table: UserTable,
    column: ChangeColumn,
    mark: dict[str, Any] | None,
    kinds: set[IdentifierKind],
) -> pa.Table:
    """The rows changed since `mark - overlap` (every row with a change time if no mark):
    their user id and each value they now hold as `kinds` compare it (user_id, kind, value);
    the hashed kinds' values hashed as the lookup hashes them."""
    import hashlib

    import pyarrow as pa
    import sqlalchemy as sa

    columns = sorted({KIND_COLUMN[k] for k in kinds if table.columns.get(KIND_COLUMN[k])})
    names = [table.columns[c] for c in ["user_id", *columns]]
    source = _source(table, *names, column.name)
    # As the lookup reads them: text.
    query = sa.select(*(sa.cast(source.c[n], sa.Text) for n in names))
    changed_at = source.c[column.name]
    if mark is None:
        query = query.where(changed_at.is_not(None))
    else:
        query = query.where(changed_at >= sa.literal(_since(mark, column.overlap)))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    user_ids, kind_names, values = [], [], []
    for row in rows:
        stored = dict(zip(columns, row[1:], strict=True))
        for kind in kinds:
            value = stored.get(KIND_COLUMN[kind])
            if value is None:
                continue
            if kind in HASHED:
                value = hashlib.sha256(value.encode()).hexdigest()
            user_ids.append(row[0])
            kind_names.append(kind.value)
            values.append(value)
        user_ids.append(row[0])  # the user itself changed, whatever it holds now
        kind_names.append(None)
        values.append(None)
    return pa.table(
        {
            "user_id": pa.array(user_ids, pa.string()),
            "kind": pa.array(kind_names, pa.string()),
            "value": pa.array(values, pa.string()),
        }
    )


def missing_users(engine: sa.Engine, table: UserTable, user_ids: sa.Select) -> list[str]:
    """Which of the user ids `user_ids` selects (text, in the same database as the table: the
    segment store's) no row of the table has any more: deleted users. One anti-join in the
    database, through the user id column's index where there is one: no id leaves it."""
    import sqlalchemy as sa

    uid = table.columns["user_id"] or "user_id"
    source = _source(table, uid)
    kept = user_ids.subquery("cs_kept_users")
    (kept_id,) = kept.c
    with engine.connect() as conn:
        types = {
            c["name"]: c["type"]
            for c in sa.inspect(conn).get_columns(table.table, schema=table.schema)
        }
        # A text column is compared as is, through its index; another type as its text.
        stored = source.c[uid]
        if not isinstance(types.get(uid), sa.String):
            stored = sa.cast(stored, sa.Text)
        query = sa.select(kept_id).where(~sa.exists().where(stored == kept_id)).distinct()
        return list(conn.execute(query).scalars())
