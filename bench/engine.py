"""Engine group: users and audience both as Parquet, on the worker.

- `floor`: a plain DuckDB join of the already-normalised identifiers (prepared before timing)
  with the user table, one join per kind, writing the distinct (source user, Netmera user)
  pairs: what any matcher must at least do, with none of the rules;
- `ours`: the matcher core (`pipeline.match_identifiers` on the worker backend): normalisation,
  priority, ambiguity, reasons, members file; and the reachable count when the users file has
  the push permission column (bench/matching.py times it with and without);
- `pandas_merge`: bench/pandas_baseline.py on DataFrames read from the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow  # noqa: F401  (imported before timing, as by the other tasks)

from bench import pandas_baseline
from bench.data import SEGMENT
from include.matching.audience import identifier_reader
from include.matching.pipeline import match_identifiers
from include.matching.result import MatchResult
from include.matching.rules import HASHED
from include.matching.user_table import KIND_COLUMN
from include.matching.worker import Worker

# What every approach must agree on (a result's paths, mode and kept resolutions are ours).
COUNTED = (
    "connector_users",
    "matched_source_users",
    "netmera_users",
    "reachable",
    "reasons",
    "matched_by",
)


def counts(result: MatchResult) -> dict[str, Any]:
    found = result.to_dict()
    return {k: found[k] for k in COUNTED}


def ours(users: str, audience: str, workdir: str) -> dict[str, Any]:
    identifiers = identifier_reader(SEGMENT, Path(audience))
    return counts(match_identifiers(SEGMENT, identifiers, Worker(Path(users)), Path(workdir)))


def floor(users: str, identifiers: str, workdir: str) -> dict[str, Any]:
    joins = " UNION ALL ".join(
        f"SELECT s.user_key, u.user_id FROM read_parquet('{identifiers}') s"
        f" JOIN read_parquet('{users}') u"
        f" ON {'sha256(u.' + KIND_COLUMN[k] + ')' if k in HASHED else 'u.' + KIND_COLUMN[k]}"
        f" = s.value WHERE s.kind = '{k.value}'"
        for k in sorted({i.kind for i in SEGMENT.identifiers})
    )
    pairs = Path(workdir) / "pairs.parquet"
    con = duckdb.connect(config={"threads": os.cpu_count() or 2})
    con.execute(f"COPY (SELECT DISTINCT user_key, user_id FROM ({joins})) TO '{pairs}'")
    found, users_reached = con.execute(
        f"SELECT count(*), count(DISTINCT user_id) FROM read_parquet('{pairs}')"
    ).fetchone()
    con.close()
    return {"pairs": found, "netmera_users": users_reached}


def pandas_merge(users: str, audience: str) -> dict[str, Any]:
    return pandas_baseline.match(SEGMENT, pd.read_parquet(audience), pd.read_parquet(users))
