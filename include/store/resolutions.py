"""The resolutions a segment's last match kept, for the next one to carry over
(include/matching/carry.py; docs/decisions.md, "Incremental matching").

They are a cache of what each source user resolves to against the user table as the match
read it, not a publication: a held or dry run keeps them as a published one does, and a
match writes them, with the state they were made in, in one transaction (a run that fails
before leaves the previous ones, still true of what they say).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from include.clients.database import read_arrow
from include.matching.rules import USER_TERM
from include.store.repository import _insert_batches, chunks
from include.store.tables import resolution_state, resolution_terms, resolutions

if TYPE_CHECKING:
    import pyarrow as pa

    from include.matching.carry import KeptState, Update


class SegmentResolutions:
    """One segment's kept resolutions (`include.matching.carry.Kept`)."""

    def __init__(self, engine: sa.Engine, segment_id: str) -> None:
        self.engine = engine
        self.segment_id = segment_id

    def state(self) -> KeptState | None:
        from include.matching.carry import KeptState

        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(resolution_state).where(resolution_state.c.segment_id == self.segment_id)
            ).first()
        if row is None:
            return None
        full_at = row.full_at if row.full_at.tzinfo else row.full_at.replace(tzinfo=UTC)
        return KeptState(row.basis, row.mark, full_at, row.airflow_run_id)

    def export(self, destination: Path) -> Path:
        """Every kept resolution → Parquet (`carry.resolution_schema`)."""
        from include.matching.carry import resolution_schema

        return self._export(resolutions, resolution_schema(), destination)

    def _export(self, table: sa.Table, schema: pa.Schema, destination: Path) -> Path:
        import pyarrow.parquet as pq

        query = sa.select(*(table.c[name] for name in schema.names)).where(
            table.c.segment_id == self.segment_id
        )
        with self.engine.connect() as conn:
            kept = read_arrow(conn, query, schema)
        # Scratch for this match's step, read where it is written: plain pages write in half
        # the time and read faster than compressed, dictionary-encoded ones.
        pq.write_table(kept, destination, compression="none", use_dictionary=False)
        return destination

    def export_terms(self, destination: Path) -> Path:
        """Every kept term → Parquet (`carry.terms_schema`)."""
        from include.matching.carry import terms_schema

        return self._export(resolution_terms, terms_schema(), destination)

    def user_ids(self) -> sa.Select:
        """Every Netmera user a kept resolution depends on (one range of the primary key), as
        a query: the deletion check runs beside them, in the database."""
        return sa.select(resolution_terms.c.value).where(
            resolution_terms.c.segment_id == self.segment_id,
            resolution_terms.c.kind == USER_TERM,
        )

    def keys_with_terms(self, terms: pa.Table) -> set[str]:
        """The user keys whose resolution depends on one of `terms` (kind, value): a probe of
        the primary key per term."""
        by_kind: dict[str, set[str]] = {}
        for kind, value in zip(terms["kind"].to_pylist(), terms["value"].to_pylist(), strict=True):
            by_kind.setdefault(kind, set()).add(value)
        keys: set[str] = set()
        with self.engine.connect() as conn:
            for kind, values in by_kind.items():
                for chunk in chunks(sorted(values)):
                    keys.update(
                        conn.execute(
                            sa.select(resolution_terms.c.user_key).where(
                                resolution_terms.c.segment_id == self.segment_id,
                                resolution_terms.c.kind == kind,
                                resolution_terms.c.value.in_(chunk),
                            )
                        ).scalars()
                    )
        return keys

    def save(self, update: Update, run_id: str) -> None:
        """Keep what a match made (`carry.Update`), in one transaction."""
        import pyarrow.parquet as pq

        now = datetime.now(UTC)
        segment = self.segment_id
        with self.engine.begin() as conn:
            if update.dropped:
                _delete_dropped(conn, segment, update.dropped)
            else:
                for table in (resolutions, resolution_terms):
                    conn.execute(table.delete().where(table.c.segment_id == segment))
            conn.execute(resolution_state.delete().where(resolution_state.c.segment_id == segment))
            if not update.resolutions:  # no change column: nothing is kept
                return
            for table, path in (
                (resolutions, update.resolutions),
                (resolution_terms, update.terms),
            ):
                batches = pq.ParquetFile(path).iter_batches(batch_size=50_000)
                _insert_batches(conn, table, batches, segment_id=segment)
            if update.full and conn.dialect.name == "postgresql":
                # Fresh statistics, so that the next match's probes take the primary key (a
                # planner that still thinks the tables empty scans them per probe).
                conn.exec_driver_sql("ANALYZE cs_resolutions, cs_resolution_terms")
            conn.execute(
                resolution_state.insert().values(
                    segment_id=segment,
                    basis=update.basis,
                    mark=update.mark,
                    full_at=update.full_at,
                    matched_at=now,
                    airflow_run_id=run_id,
                )
            )


def _delete_dropped(conn: sa.Connection, segment: str, path: str) -> None:
    """Delete the resolutions and terms of the user keys in the Parquet file `path`. The
    resolutions go a chunk of keys at a time, probes of their primary key (as many as keys go,
    whatever the planner thinks of a table the last match filled); so do the terms on
    PostgreSQL, through their (segment_id, user_key) index. SQLite has no such index (migration
    0015): there the terms go by one pass over the segment's range, joined to the keys in a
    temporary table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = pq.read_table(path, columns=["user_key"])["user_key"].combine_chunks()
    postgres = conn.dialect.name == "postgresql"
    by_key = (resolutions, resolution_terms) if postgres else (resolutions,)
    for chunk in chunks(keys.to_pylist()):
        for table in by_key:
            conn.execute(
                table.delete().where(table.c.segment_id == segment, table.c.user_key.in_(chunk))
            )
    if postgres:
        return
    dropped = sa.Table(
        "cs_dropped_keys", sa.MetaData(), sa.Column("user_key", sa.Text), prefixes=["TEMPORARY"]
    )
    dropped.create(conn)
    _insert_batches(conn, dropped, [pa.record_batch([keys], names=["user_key"])])
    conn.execute(
        resolution_terms.delete().where(
            resolution_terms.c.segment_id == segment,
            resolution_terms.c.user_key.in_(sa.select(dropped.c.user_key)),
        )
    )
    dropped.drop(conn)
