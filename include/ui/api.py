"""The JSON API under `/connector-segments/api/`, behind Airflow's login: what the page shows
and does, and what a script with a Bearer token from `POST /auth/token` may too.

Reads answer the objects the CLI prints with `--json` (built by the same functions). Actions
(Refresh, Send Message, Approve, Restore) are DAG runs of the segment, triggered as the
logged-in user after three checks: the request is not cross-site, the user may trigger that
DAG (a viewer gets 403, as from Airflow's own API), and the segment's state allows it (409).
The login is a dependency of the router: no route can be added without it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import (
    GetUserDep,
    requires_access_dag,
    requires_authenticated,
)
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from include.config.catalog import SegmentCatalog
from include.config.segments import SegmentConfig, SegmentConfigError, find_segment
from include.store.repository import CALCULATING, HELD, READY
from include.store.views import details, is_known, listed, never_ran, page_rows, search

DETAILS_RUNS = 5  # as `details` (its --runs default)
REPORT_SENDS = 20  # as `report` (its --limit default)
SEGMENT_ID = re.compile(r"^[a-z0-9_]{1,200}$")  # as the YAML's `id`

router = APIRouter(dependencies=[Depends(requires_authenticated())])
_catalog = SegmentCatalog()  # the API server lists every segment on each page load


def _db():
    from include.orchestration.connections import netmera_database

    return netmera_database()


def _store():
    return _db().store


# -- reads ---------------------------------------------------------------------------------------


@router.get("/segments")
def list_segments(
    user: GetUserDep,
    q: str | None = None,
    status: str | None = None,
    source_type: str | None = None,
    id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """`list --json`'s objects with source type, schedule, reachable users, DAG, paused, its
    active run and the actions this user may take now, filtered (q: name or id, any case;
    id: exactly that segment) and paged; `total` counts every match."""
    from include.orchestration.dag_state import dag_states

    states = dag_states()
    found = search(listed(_store(), _catalog.segments()), states, q, status, source_type)
    if id is not None:
        found = [segment for segment in found if segment.id == id]
    page = page_rows(found[offset : offset + limit], states)
    for row in page:
        if row["actions"] and not _allowed(row["dag_id"], user):
            row["actions"] = []
    return {"segments": page, "total": len(found)}


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

    _require_known(segment_id)
    return message_report(segment_id, REPORT_SENDS)[0]


@router.get("/segments/{segment_id}/campaign")
def segment_campaign(segment_id: str) -> dict[str, Any]:
    """What Send Message would send, before the user confirms: the YAML campaign (title and
    text may be null: the form asks for them) and the published version's recipients."""
    from include.campaign.send import DEFAULT_PLATFORMS, audience

    config = _config(segment_id)
    version = _published_version(segment_id)
    db = _db()
    target = audience(db.engine, db.users, segment_id, version)
    campaign = config.campaign
    return {
        "title": campaign.title if campaign else None,
        "text": campaign.text if campaign else None,
        "platforms": list(campaign.platforms if campaign else DEFAULT_PLATFORMS),
        "version": version,
        "recipients": target.recipients,
        "not_addressable": target.not_addressable,
    }


@router.get("/segments/{segment_id}/members.csv")
def members_csv(segment_id: str) -> StreamingResponse:
    """The current members' Netmera user ids (as `members ID`)."""
    _require_known(segment_id)
    rows = ((user_id,) for user_id in _store().member_ids(segment_id))
    return _csv(f"{segment_id}-members.csv", ("user_id",), rows)


@router.get("/segments/{segment_id}/unmatched.csv")
def unmatched_csv(segment_id: str) -> StreamingResponse:
    """The last refresh's unmatched source users: their source user key and why."""
    _require_known(segment_id)
    return _csv(
        f"{segment_id}-unmatched.csv", ("user_key", "reason"), _store().unmatched(segment_id)
    )


# -- actions -------------------------------------------------------------------------------------


def refuse_cross_site(request: Request) -> None:
    """Airflow has no CSRF token and its `_token` cookie is SameSite-Lax: a form on another
    site (another port of this host included) would send it. Browsers say where a request
    comes from in `Sec-Fetch-Site`; scripts send none."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")


actions = APIRouter(dependencies=[Depends(refuse_cross_site)])


def _allowed(dag_id: str, user: BaseUser) -> bool:
    """The check `_may_trigger` makes, as a yes or no (for the list's actions)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return get_auth_manager().is_authorized_dag(
        method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )


def _may_trigger(segment_id: str, request: Request, user: GetUserDep) -> tuple[SegmentConfig, str]:
    """The segment (404 unknown) and the user's name, if they may trigger its DAG's runs."""
    config = _config(segment_id)
    check = requires_access_dag(
        method="POST", access_entity=DagAccessEntity.RUN, param_dag_id=config.dag_id
    )
    check(request, user)
    return config, user.get_name()


Actor = Annotated[tuple[SegmentConfig, str], Depends(_may_trigger)]


@actions.post("/segments/{segment_id}/refresh", status_code=202)
def refresh(actor: Actor) -> dict[str, str]:
    config, _ = actor
    _require_not_calculating(config.id)
    return _trigger(actor, "refresh", {})


@actions.post("/segments/{segment_id}/send", status_code=202)
def send(
    actor: Actor,
    title: Annotated[str | None, Body(max_length=500)] = None,
    text: Annotated[str | None, Body(max_length=5000)] = None,
) -> dict[str, str]:
    """Send Message to the published version: the YAML campaign, or `title`/`text`."""
    from include.campaign.message import message_for
    from include.campaign.send import send_key
    from include.store import sends as ledger

    config, _ = actor
    row = _segment_row(config.id)
    if row["status"] != READY:
        raise HTTPException(
            409, f"segment {config.id!r} is {row['status']}: Send Message needs Ready"
        )
    params = {"message_title": title or None, "message_text": text or None}
    try:
        message = message_for(config, params)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    version = _published_version(config.id)
    earlier = _db().sends.find(send_key(config.id, version, message, None))
    if earlier and earlier["status"] != ledger.FAILED:
        raise HTTPException(
            409,
            f"this message was already sent to version {version} of segment {config.id!r}; "
            "change the title or text to send another",
        )
    return _trigger(actor, "send", {"refresh": False, "send_message": True, **params})


@actions.post("/segments/{segment_id}/approve", status_code=202)
def approve(actor: Actor) -> dict[str, str]:
    """Publish the held refresh: a new run with approve=true, which publishes only if what it
    finds is no worse than what the held run showed."""
    config, _ = actor
    if _segment_row(config.id)["status"] != HELD:
        raise HTTPException(409, f"segment {config.id!r} is not Held: nothing to approve")
    return _trigger(actor, "approve", {"approve": True})


@actions.post("/segments/{segment_id}/restore", status_code=202)
def restore(actor: Actor, version: Annotated[int, Body(embed=True, ge=1)]) -> dict[str, str]:
    """Make a kept earlier version current again, as a run of the segment's DAG."""
    from include.store.repository import RestoreRefused

    config, _ = actor
    _require_not_calculating(config.id)
    try:
        _store().check_restorable(config.id, version)  # the DAG's and the CLI's refusal
    except RestoreRefused as exc:
        raise HTTPException(409, str(exc)) from None
    return _trigger(actor, "restore", {"restore_version": version})


def _trigger(actor: tuple[SegmentConfig, str], action: str, conf: dict[str, Any]) -> dict[str, str]:
    from include.orchestration.dag_state import DagNotReady, RunInProgress, trigger_run

    config, user = actor
    try:
        run_id = trigger_run(
            config.dag_id,
            action=action,
            user=user,
            conf=conf,
            note=f"{action.capitalize()} by {user} from the Connector Segments page",
            exclusive=True,
        )
    except (DagNotReady, RunInProgress) as exc:
        raise HTTPException(409, f"segment {config.id!r}: {exc}") from None
    return {"dag_run_id": run_id, "segment_id": config.id, "action": action}


router.include_router(actions)


# -- lookups -------------------------------------------------------------------------------------


def _config(segment_id: str) -> SegmentConfig:
    if not SEGMENT_ID.match(segment_id):
        raise HTTPException(404, f"unknown segment {segment_id!r}")
    try:
        return find_segment(segment_id)
    except SegmentConfigError as exc:
        raise HTTPException(404, str(exc)) from None


def _require_known(segment_id: str) -> None:
    if not SEGMENT_ID.match(segment_id) or not is_known(_store(), segment_id):
        raise HTTPException(404, f"unknown segment {segment_id!r}")


def _segment_row(segment_id: str) -> dict[str, Any]:
    row = _store().segment(segment_id)
    if row is None:
        raise HTTPException(409, never_ran(segment_id))
    return row


def _require_not_calculating(segment_id: str) -> None:
    row = _store().segment(segment_id)
    if row is not None and row["status"] == CALCULATING:
        raise HTTPException(409, f"segment {segment_id!r} is Calculating: wait for it to end")


def _published_version(segment_id: str) -> int:
    row = _segment_row(segment_id)
    if not row["current_version"]:
        raise HTTPException(409, f"segment {segment_id!r} has no published membership")
    return row["current_version"]


def _csv(filename: str, header: tuple[str, ...], rows: Iterable[tuple]) -> StreamingResponse:
    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for n, row in enumerate(rows, 1):
            writer.writerow(row)
            if n % 10_000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=disposition)


def create_api_app() -> FastAPI:
    """The API as its own app, so that its errors keep FastAPI's `{"detail"}` shape while the
    webhook's keep Mixpanel's (see `include.ui.app`)."""
    app = FastAPI(title="Connector Segments API", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    return app
