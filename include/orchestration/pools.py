"""Airflow pools that cap concurrent calls to rate-limited vendor APIs, across all segments.

`python -m include.orchestration.pools` creates or updates them (run by `make demo`, `make ui`,
the tests and the docker-compose init); slots follow the vendors' concurrency limits and can be
overridden with `CONNECTOR_SEGMENTS_POOL_<NAME>` (e.g. CONNECTOR_SEGMENTS_POOL_MIXPANEL_API=3).
"""

from __future__ import annotations

import os

# source type -> (pool, default slots, description)
POOLS = {
    "mixpanel": ("mixpanel_api", 5, "Mixpanel Query API: 5 concurrent queries per project"),
    "amplitude": ("amplitude_api", 4, "Amplitude cohort API: 4-5 concurrent requests"),
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
