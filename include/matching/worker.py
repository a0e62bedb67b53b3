"""The worker backend: the user table's identifier columns streamed out once into Parquet, the
lookup run on them in DuckDB on the worker (the decision's own session), within its memory
limit, spilling to disk past it. For any database; `paths.py` says when it is the faster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from include.matching import rules
from include.matching.lookup import lookup, resolver
from include.matching.user_table import export_users

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa

    from include.config.segments import SegmentConfig
    from include.matching.decide import DuckSession
    from include.matching.user_table import UserTable

USERS_FILE = "netmera_users.parquet"


@dataclass(frozen=True)
class Worker:
    """`users`: the user table's export (`user_table.export_users`)."""

    users: Path
    memory: str = "1GB"  # DuckDB joins the whole user table here

    def lookup(
        self, segment: SegmentConfig, identifiers: pa.RecordBatchReader, duck: DuckSession
    ) -> bool:
        """Stage 1 in `duck` over the export, the identifiers streamed straight in (no file
        written and read back); whether the table has push permissions."""
        import pyarrow.parquet as pq

        names = set(pq.read_schema(self.users).names)
        side = rules.UserSide(
            relation=rules.parquet(self.users),
            columns={c: f"u.{c}" for c in names},
            has_push="push_permitted" in names,
        )
        duck.load(rules.IDS, identifiers)
        lookup(duck, {i.kind for i in segment.identifiers}, side, rules.DUCKDB, resolver(segment))
        return side.has_push


@contextmanager
def exported(
    engine: sa.Engine, table: UserTable, segment: SegmentConfig, workdir: Path
) -> Iterator[Worker]:
    """The worker backend over a fresh export of the columns `segment` needs, removed after
    (the user table's copy is not needed past matching)."""
    users = workdir / USERS_FILE
    try:
        export_users(engine, table, {i.kind for i in segment.identifiers}, users)
        yield Worker(users)
    finally:
        users.unlink(missing_ok=True)
