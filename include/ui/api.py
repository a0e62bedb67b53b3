"""The read-only JSON API under `/connector-segments/api/`, behind Airflow's login.

Each route answers the object the CLI prints with `--json` (built by the same functions), so
a script with a Bearer token from `POST /auth/token` sees what on-call sees. The dependency is
on the router: no route of it can be added without the login.
"""

from __future__ import annotations

from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query

from include.store.views import details, is_known, listed_segments, never_ran, search

DETAILS_RUNS = 5  # as `details` (its --runs default)
REPORT_SENDS = 20  # as `report` (its --limit default)

router = APIRouter(dependencies=[Depends(requires_authenticated())])


def _store():
    from include.orchestration.connections import netmera_database

    return netmera_database().store


@router.get("/segments")
def list_segments(
    q: str | None = None,
    status: str | None = None,
    source_type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """`list --json`'s objects with source type, schedule, reachable users and paused,
    filtered (q: name or id, any case) and paged; `total` counts every match."""
    from include.orchestration.dag_state import paused_dags

    found = search(listed_segments(_store(), paused_dags), q, status, source_type)
    return {"segments": found[offset : offset + limit], "total": len(found)}


@router.get("/segments/{segment_id}")
def segment_details(segment_id: str) -> dict[str, Any]:
    """As `details ID --json`."""
    found = details(_store(), segment_id, DETAILS_RUNS)
    if found is None:
        raise HTTPException(404, never_ran(segment_id))
    return found


@router.get("/segments/{segment_id}/report")
def segment_report(segment_id: str) -> list[dict[str, Any]]:
    """As `report ID --json`: without a usable Netmera Connection the sends come without
    stats, as in the CLI (which also warns on stderr)."""
    from include.campaign.report import message_report

    if not is_known(_store(), segment_id):
        raise HTTPException(404, f"unknown segment {segment_id!r}")
    return message_report(segment_id, REPORT_SENDS)[0]


def create_api_app() -> FastAPI:
    """The API as its own app, so that its errors keep FastAPI's `{"detail"}` shape while the
    webhook's keep Mixpanel's (see `include.ui.app`)."""
    app = FastAPI(title="Connector Segments API", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    return app
