"""Discovery: list a vendor's cohorts and write a YAML skeleton per cohort.

A skeleton is a starting point a person finishes (identifiers, region, schedule, guardrails);
an existing file is never overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from include.clients.mixpanel import MixpanelClient


@dataclass(frozen=True)
class Cohort:
    id: int | str
    name: str
    count: int | None
    description: str = ""


def mixpanel_cohorts(client: MixpanelClient, prefix: str | None = None) -> list[Cohort]:
    cohorts = [
        Cohort(c["id"], c.get("name") or str(c["id"]), c.get("count"), c.get("description") or "")
        for c in client.list_cohorts()
    ]
    return [c for c in cohorts if not prefix or c.name.startswith(prefix)]


def segment_id_for(cohort: Cohort) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", cohort.name.lower()).strip("_")
    return f"mixpanel_{slug or cohort.id}"


def mixpanel_skeleton(cohort: Cohort, conn_id: str) -> dict[str, Any]:
    source: dict[str, Any] = {"type": "mixpanel", "cohort_id": int(cohort.id)}
    if conn_id != "mixpanel_default":
        source["conn_id"] = conn_id
    return {
        "id": segment_id_for(cohort),
        "name": cohort.name,
        "description": cohort.description or f"Mixpanel cohort {cohort.id} ({cohort.name}).",
        "schedule": "0 3 * * *",
        "owner": "data-platform",
        "tags": ["mixpanel"],
        "source": source,
        "user_key": "$distinct_id",
        "identifiers": [
            {"field": "$distinct_id", "kind": "external_id"},
            {"field": "$email", "kind": "email"},
            {"field": "$phone", "kind": "msisdn"},
        ],
        "default_region": "TR",
        "guardrails": {"min_match_rate": 0.5, "max_shrink": 0.5, "max_growth": 3.0},
    }


def write_skeletons(
    cohorts: list[Cohort], directory: Path, conn_id: str
) -> list[tuple[Path, bool]]:
    """Write one YAML per cohort; returns (path, written) — False where a file already was."""
    directory.mkdir(parents=True, exist_ok=True)
    outcome = []
    for cohort in cohorts:
        skeleton = mixpanel_skeleton(cohort, conn_id)
        path = directory / f"{skeleton['id']}.yaml"
        try:
            with path.open("x", encoding="utf-8") as handle:  # "x": never overwrite
                handle.write(
                    f"# Discovered from Mixpanel cohort {cohort.id}; review identifiers,"
                    " default_region and guardrails before enabling.\n"
                )
                yaml.safe_dump(skeleton, handle, sort_keys=False, allow_unicode=True)
            outcome.append((path, True))
        except FileExistsError:
            outcome.append((path, False))
    return outcome
