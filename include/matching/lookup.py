"""Stage 1 of the rules (`rules.py`), the lookup, run where the user table is: through a
`Session` on DuckDB (worker path) or on the Netmera database (database path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from include.config.segments import IdentifierKind
from include.matching import rules
from include.matching.normalize import normalize_trimmed

if TYPE_CHECKING:
    import pyarrow as pa

    from include.config.segments import SegmentConfig

Resolve = Callable[[IdentifierKind, "pa.Array"], "pa.Array"]  # deferred raw texts → values


class Session(Protocol):
    """An engine holding `cs_ids` (DuckDB on the worker, or the Netmera database)."""

    def run(self, sql: str) -> Sequence[Sequence[Any]]: ...

    def fetch(self, sql: str) -> pa.Table: ...  # a text column, audience-sized

    def load(self, table: str, data: pa.Table) -> None: ...  # a new temporary table

    def analyze(self, table: str) -> None: ...  # statistics, where the engine wants them


def resolver(segment: SegmentConfig) -> Resolve:
    """How deferred values of this segment are normalised."""
    return lambda kind, raws: normalize_trimmed(kind, raws, segment.default_region)


def lookup(
    session: Session,
    kinds: set[IdentifierKind],
    users: rules.UserSide,
    dialect: rules.Dialect,
    resolve: Resolve,
) -> None:
    """Stage 1 over `cs_ids`: `cs_hits`, `cs_resolved`, `cs_candidates` and (with push)
    `cs_reach`.

    One kind at a time, not one UNION ALL: DuckDB then stays within its memory limit. Deferred
    values (`raw`) are normalised by `resolve`, priority by priority, only for source users
    that no earlier identifier matched alone (a value can change no other user's result);
    reading a few more than needed would be harmless, reading one less never happens."""
    session.run(rules.create_hits(min(kinds), users, dialect))
    if dialect.index_hits:
        # Every later lookup asks cs_hits, per audience row, whether its source user is
        # settled (user_key) and, after an inner join, whether its value was found (value).
        # Without these SQLite scans all of cs_hits for each row: at 200,000 source rows
        # ~10^10 row visits per kind (issue #9: not done after 15 minutes); with them, a probe.
        for statement in rules.HITS_INDEXES:
            session.run(statement)
    session.run(rules.CREATE_RESOLVED)
    deferred = session.run(rules.DEFERRED_KINDS)
    later = {IdentifierKind(kind) for _, kind in deferred}
    sizes, first = {}, {}
    for kind, values, rows, priority in session.run(rules.KIND_SIZES):
        sizes[kind], first[IdentifierKind(kind)] = (int(values), int(rows)), int(priority)

    def insert(kind: IdentifierKind) -> None:
        probe = users.probes(kind.value, sizes[kind.value][1])
        for statement in rules.insert_hits(kind, users, dialect, probe, kind in later):
            session.run(statement)

    # In priority order: the users an earlier kind matches are left out of the later lookups.
    for kind in sorted(kinds - later, key=lambda k: first.get(k, 0)):
        if sizes.get(kind.value, (0, 0))[0]:
            insert(kind)
    # Users matched by a kind looked up so far are settled; a kind with deferred values is
    # looked up once they are read, so the user table is still read once per kind.
    for priority, kind in deferred:
        _resolve(session, int(priority), IdentifierKind(kind), resolve)
    for kind in sorted(later, key=lambda k: first[k]):
        insert(kind)
    session.analyze(rules.HITS)
    if users.has_push:
        ((alone,),) = session.run(rules.ALONE_COUNT)
        session.run(rules.create_reach(users, dialect, alone))
    # Few rows (ambiguous values only), read for incremental matching (`carry.py`).
    session.run(rules.CREATE_CANDIDATES)
    for kind, values in session.run(rules.AMBIGUOUS_KINDS):
        probe = users.probes(kind, int(values))
        session.run(rules.insert_candidates(IdentifierKind(kind), users, dialect, probe))


def _resolve(session: Session, priority: int, kind: IdentifierKind, resolve: Resolve) -> None:
    """Normalise the deferred values at `priority` of the users still open into cs_resolved."""
    import pyarrow as pa

    raws = session.fetch(rules.open_raws(priority)).column(0).combine_chunks()
    if len(raws):
        session.load(rules.RESOLVED_IN, pa.table({"raw": raws, "value": resolve(kind, raws)}))
        for statement in rules.add_resolved(priority):
            session.run(statement)
