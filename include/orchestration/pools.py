"""Airflow pools that cap how many worker slots the extracts of a rate-limited vendor take.

Each vendor project's own limits (queries an hour, requests at once) are its shared budget,
kept in the segment store and honoured by the clients (`include/store/vendor_budgets.py`).
An extract waiting on that budget still holds a worker slot, so the pool keeps one busy
project's segments from filling the workers; it is sized for several projects at once, since
a project's segments beyond its concurrency only wait (docs/decisions.md, "Vendor budgets").

`python -m include.orchestration.pools` creates or updates them (run by `make demo`, `make ui`,
the tests and the docker-compose init); override slots with `CONNECTOR_SEGMENTS_POOL_<NAME>`
(e.g. CONNECTOR_SEGMENTS_POOL_MIXPANEL_API=3).
"""

from __future__ import annotations

import os

# source type -> (pool, default slots, description)
POOLS = {
    "mixpanel": ("mixpanel_api", 16, "Mixpanel extracts (each project's budget is shared)"),
    "amplitude": ("amplitude_api", 16, "Amplitude extracts (each project's budget is shared)"),
}


def pool_for(source_type: str) -> str | None:
    entry = POOLS.get(source_type)
    return entry[0] if entry else None


def ensure_pools() -> None:
    from airflow.models.pool import Pool

    for name, slots, description in POOLS.values():
        slots = int(os.environ.get(f"CONNECTOR_SEGMENTS_POOL_{name.upper()}", slots))
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)


if __name__ == "__main__":
    ensure_pools()
