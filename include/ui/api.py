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
import os
import re
from collections.abc import Container, Iterable, Iterator
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_authenticated
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse

from include.config.catalog import SegmentCatalog
from include.config.segments import (
    MAX_HOLDOUT_PERCENT,
    SOURCE_TYPES,
    SegmentConfig,
    SegmentConfigError,
    SegmentNotFound,
    SendAudience,
    dag_id_of,
    find_segment,
    segments_dir,
)
from include.store.repository import CALCULATING, FAILED, HELD, READY
from include.store.views import (
    NOT_ACTIVE,
    STALE,
    details,
    is_known,
    listed,
    never_ran,
    page_rows,
    search,
)

DETAILS_RUNS = 5  # as `details` (its --runs default)
REPORT_SENDS = 20  # as `report` (its --limit default)
CHART_RUNS = 30  # the chart's published runs are among the segment's last 30 runs
SEGMENT_ID = re.compile(r"^[a-z0-9_]{1,200}$")  # as the YAML's `id`

# What the list's filters accept (anything else is a 400, not an empty page).
STATUS_NAMES = (READY, CALCULATING, FAILED, HELD, "Stale", "Not Active")
STATUSES = {name.casefold() for name in STATUS_NAMES} | {STALE, NOT_ACTIVE}

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
    active run, whether this user may trigger it and the actions they may take now, filtered
    (q: name or id, any case; id: exactly that segment) and paged; `total` counts every match.
    Only the segments whose DAG runs the user may read: under FAB, a team sees the segments
    whose `access` names its role."""
    from include.orchestration.dag_state import dag_states, refresh_failures

    status, source_type = status or None, source_type or None  # `?status=`: every status
    if status is not None and status.casefold() not in STATUSES:
        raise HTTPException(400, f"unknown status {status!r}: one of {', '.join(STATUS_NAMES)}")
    if source_type is not None and source_type not in SOURCE_TYPES:
        raise HTTPException(
            400, f"unknown source_type {source_type!r}: one of {', '.join(SOURCE_TYPES)}"
        )
    states = dag_states()
    found = search(listed(_store(), _catalog.segments()), states, q, status, source_type)
    found = [s for s in found if id is None or s.id == id]
    visible = _visible_dags(user, [dag_id_of(s.id) for s in found], states)
    found = [s for s in found if dag_id_of(s.id) in visible]
    shown = found[offset : offset + limit]
    failures = refresh_failures([dag_id_of(s.id) for s in shown])
    page = page_rows(shown, states, failures)
    may_trigger = _authorized(user, [row["dag_id"] for row in page if row["dag_id"]], "POST")
    for row in page:
        row["may_trigger"] = row["dag_id"] in may_trigger
        if not row["may_trigger"]:
            row["actions"] = []
    return {"segments": page, "total": len(found)}


@router.get("/segments/{segment_id}")
def segment_details(segment_id: Readable) -> dict[str, Any]:
    """As `details ID --json`, its runs joined with Airflow's: a run no step recorded (a task
    that never began, a run failed by hand, a Send Message alone) is listed too, with its
    Airflow state, its tasks and the one whose log explains it."""
    from include.orchestration.dag_state import recent_runs

    found = details(_store(), segment_id, DETAILS_RUNS, recent_runs(dag_id_of(segment_id), 20))
    if found is None:
        raise HTTPException(404, never_ran(segment_id))
    return found


@router.get("/segments/{segment_id}/report")
def segment_report(segment_id: Readable) -> list[dict[str, Any]]:
    """As `report ID --json`: without a usable Netmera Connection the sends come without
    stats, as in the CLI (which also warns on stderr)."""
    from include.campaign.report import message_report
    from include.orchestration.connections import netmera_client

    return message_report(segment_id, REPORT_SENDS, _db().sends, netmera_client)[0]


@router.get("/segments/{segment_id}/campaign")
def segment_campaign(
    segment_id: Readable,
    holdout_percent: Annotated[float | None, Query(ge=0, le=MAX_HOLDOUT_PERCENT)] = None,
    title: Annotated[str | None, Query(max_length=500)] = None,
    text: Annotated[str | None, Query(max_length=5000)] = None,
    to: Annotated[SendAudience | None, Query(alias="audience")] = None,
) -> dict[str, Any]:
    """What Send Message would send, before the user confirms: the YAML campaign (title and
    text may be null: the form asks for them; `holdout_percent` and `audience` its defaults)
    and the split of the published version's members the send would make (members =
    recipients + holdout + not_addressable), for the `holdout_percent` and `audience` asked
    (else the YAML's) and the message the form would send (`title`/`text` over the YAML's:
    the draw depends on the message; `entered` counts only those who entered since the
    version it was last sent to, `since_version`). If that message's send to this version
    failed, confirming resumes it with the holdout it drew: its recorded split, and `resumes`
    names it."""
    from include.campaign.audience import audience
    from include.campaign.message import audience_for, holdout_percent_for, message_for
    from include.campaign.send import DEFAULT_PLATFORMS, entered_after, send_key
    from include.store import sends as ledger

    config = _config(segment_id)
    version = _published_version(_segment_row(segment_id))
    asked = {
        "message_title": title or None,
        "message_text": text or None,
        "holdout_percent": holdout_percent,
        "audience": to,
    }
    try:
        message = message_for(config, asked)
    except ValueError:  # no message yet: counts differ only where members share an extId
        message = None
    db = _db()
    campaign = config.campaign
    answer = {
        "title": campaign.title if campaign else None,
        "text": campaign.text if campaign else None,
        "platforms": list(campaign.platforms if campaign else DEFAULT_PLATFORMS),
        "holdout_percent": campaign.holdout_percent if campaign else 0.0,
        "audience": campaign.audience if campaign else "all",
        "version": version,
        "since_version": None,
        "resumes": None,
    }
    earlier = db.sends.find(send_key(segment_id, version, message, None)) if message else None
    if earlier and earlier["status"] == ledger.FAILED:
        # Confirming resumes that send, with the holdout it drew: show its split, not a new one.
        split = {k: earlier[k] for k in ("recipients", "holdout", "not_addressable")}
        resumes = {"send_key": earlier["send_key"], "holdout_percent": earlier["holdout_percent"]}
        since = {"since_version": earlier["since_version"]}
        return {**answer, **split, **since, "members": sum(split.values()), "resumes": resumes}
    if message:
        chosen = audience_for(config, asked)
        answer["since_version"] = entered_after(db.sends, segment_id, message, chosen)
    target = audience(
        db.engine,
        db.users,
        segment_id,
        version,
        fingerprint=message.fingerprint if message else "",
        holdout_percent=holdout_percent_for(config, asked),
        entered_after=answer["since_version"],
    )
    return {
        **answer,
        "members": target.members,
        "recipients": target.recipients,
        "holdout": len(target.holdout),
        "not_addressable": target.not_addressable,
    }


@router.get("/segments/{segment_id}/members.csv")
def members_csv(segment_id: Readable) -> StreamingResponse:
    """The current members' Netmera user ids (as `members ID`)."""
    rows = ((user_id,) for user_id in _store().member_ids(segment_id))
    return _csv(f"{segment_id}-members.csv", ("user_id",), rows)


@router.get("/segments/{segment_id}/history")
def user_history(
    segment_id: Readable, user: Annotated[str, Query(min_length=1, max_length=200)]
) -> dict[str, Any]:
    """When the Netmera user `user` entered and left the segment (as `history ID --user`)."""
    from include.store.views import history, never_ran

    found = history(_store(), segment_id, user)
    if found is None:
        raise HTTPException(404, never_ran(segment_id))
    return found


@router.get("/segments/{segment_id}/runs/{run_id}/changes.csv")
def changes_csv(
    segment_id: Readable, run_id: Annotated[str, PathParam(max_length=250)]
) -> StreamingResponse:
    """The members a published run added and removed (user id, `added`/`removed`); 404 for a
    run that published nothing or whose version is no longer kept."""
    from include.store.repository import ChangesGone

    store = _store()
    try:
        version = store.changed_version(segment_id, run_id)
    except ChangesGone as exc:
        raise HTTPException(404, str(exc)) from None
    name = f"{segment_id}-v{version}-changes.csv"
    return _csv(name, ("user_id", "change"), store.changes(segment_id, version))


@router.get("/segments/{segment_id}/sends/{send_key:path}/holdout.csv")
def holdout_csv(segment_id: Readable, send_key: str) -> StreamingResponse:
    """A send's held-out members' Netmera user ids; `send_key` as Message Report lists it
    (its `/` may come encoded or not). 404 for a key that is not one of this segment's sends."""
    ledger = _db().sends
    entry = ledger.find(send_key)
    if entry is None or entry["segment_id"] != segment_id:
        raise HTTPException(404, f"segment {segment_id!r} has no send {send_key!r}")
    rows = ((user_id,) for user_id in ledger.holdout_ids(entry["id"]))
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", send_key)  # a send_key param may hold anything
    return _csv(f"{name}-holdout.csv", ("user_id",), rows)


@router.get("/segments/{segment_id}/unmatched.csv")
def unmatched_csv(
    segment_id: Readable, run: Annotated[str | None, Query(max_length=250)] = None
) -> StreamingResponse:
    """The unmatched source users (their source user key and why) of the refresh the current
    version came from (`unmatched_run` in the details), or of `run` (a held or failed refresh;
    the last few are kept). The file name says which run."""
    store = _store()
    run = run or store.unmatched_run(segment_id)
    name = f"{segment_id}-unmatched-{re.sub(r'[^A-Za-z0-9_.-]+', '_', run or 'none')}.csv"
    return _csv(name, ("user_key", "reason"), store.unmatched(segment_id, run))


@router.get("/segments/{segment_id}/chart.svg")
def chart(segment_id: Readable, tz: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """Connector, Netmera and Reachable users per published run (see `include.ui.chart`), its
    times in the IANA time zone `tz` (the page sends the browser's), else UTC."""
    from include.ui.chart import runs_chart

    svg = runs_chart(_store().runs(segment_id, CHART_RUNS), _zone(tz))
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})


def _zone(name: str | None):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe", a folder
        raise HTTPException(
            400, f"unknown time zone {name!r} (an IANA name: Europe/Istanbul)"
        ) from None


# -- actions -------------------------------------------------------------------------------------


def refuse_cross_site(request: Request) -> None:
    """Airflow has no CSRF token and its `_token` cookie is SameSite-Lax: a form on another
    site (another port of this host included) would send it. Browsers say where a request
    comes from in `Sec-Fetch-Site`; scripts send none. A browser too old to send it is held to
    JSON: a cross-site form cannot send `application/json` without a CORS preflight, which
    this app never grants (scripts with a Bearer token are not asked)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
    if "authorization" not in request.headers and not request.headers.get(
        "content-type", ""
    ).startswith("application/json"):
        raise HTTPException(403, "a request with the login cookie must be application/json")


actions = APIRouter(dependencies=[Depends(refuse_cross_site)])


def _may_trigger(segment_id: str, user: GetUserDep) -> tuple[SegmentConfig, str]:
    """The segment (404 unknown or not readable by the user, alike: its YAML is read only for
    a user who may see it) and the user's name, if they may trigger its DAG's runs (403
    otherwise)."""
    _require_visible(segment_id, user)
    config = _config(segment_id)
    if not _authorized(user, [config.dag_id], "POST"):
        raise HTTPException(403, f"{user.get_name()} may not trigger runs of {config.dag_id}")
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
    holdout_percent: Annotated[
        float | None, Body(ge=0, le=MAX_HOLDOUT_PERCENT, strict=True)
    ] = None,
    to: Annotated[SendAudience | None, Body(alias="audience")] = None,
) -> dict[str, str]:
    """Send Message to the published version: the YAML campaign, or `title`/`text`, holding
    out `holdout_percent` of the addressable members (else the YAML's), to `audience` `all`
    its members or those who `entered` since the version this message was last sent to (else
    the YAML's). Neither is part of the send's key: a message already sent to the version is
    refused whatever it asks."""
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
    version = _published_version(row)
    earlier = _db().sends.find(send_key(config.id, version, message, None))
    if earlier and earlier["status"] != ledger.FAILED:
        raise HTTPException(
            409,
            f"this message was already sent to version {version} of segment {config.id!r}; "
            "change the title or text to send another",
        )
    conf = {"refresh": False, "send_message": True, **params}
    if holdout_percent is not None:
        conf["holdout_percent"] = holdout_percent
    if to is not None:
        conf["audience"] = to
    return _trigger(actor, "send", conf)


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


def _unknown(segment_id: str) -> str:
    return f"unknown segment {segment_id!r}"


def _config(segment_id: str) -> SegmentConfig:
    """The segment's YAML; 404 without one (never naming the server's folders), or with the
    config error, which names the file and field, for a YAML that cannot be used."""
    if not SEGMENT_ID.match(segment_id):
        raise HTTPException(404, _unknown(segment_id))
    try:
        return find_segment(segment_id)
    except SegmentNotFound:
        raise HTTPException(404, _unknown(segment_id)) from None
    except SegmentConfigError as exc:
        # The error names the file and field; the server's folders are nobody's business.
        raise HTTPException(404, str(exc).replace(f"{segments_dir()}{os.sep}", "")) from None


def _may_read(segment_id: str, user: GetUserDep) -> str:
    """The segment's id, if the user may read its DAG's runs: its members and unmatched users
    are readable by those who may read its runs. 404 for a segment unknown or not readable
    alike, so that a team cannot learn which other segments exist."""
    _require_visible(segment_id, user, in_store=True)
    return segment_id


def _require_visible(segment_id: str, user: BaseUser, *, in_store: bool = False) -> None:
    """404, the same for every cause, unless the id is well-formed, (with `in_store`) the
    store knows the segment, and the user may read its DAG's runs."""
    if (
        not SEGMENT_ID.match(segment_id)
        or (in_store and not is_known(_store(), segment_id))
        or not _authorized(user, [dag_id_of(segment_id)], "GET")
    ):
        raise HTTPException(404, _unknown(segment_id))


Readable = Annotated[str, Depends(_may_read)]


def _authorized(user: BaseUser, dag_ids: list[str], method: str) -> set[str]:
    """Those of `dag_ids` whose runs the user may read (GET) or trigger (POST): Airflow's
    own check (`requires_access_dag`'s), teams included."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    teams = DagModel.get_dag_id_to_team_name_mapping(dag_ids) if dag_ids else {}
    manager = get_auth_manager()
    return {
        dag_id
        for dag_id in dag_ids
        if manager.is_authorized_dag(
            method=method,
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id, team_name=teams.get(dag_id)),
            user=user,
        )
    }


def _visible_dags(user: BaseUser, dag_ids: list[str], known: Container[str]) -> set[str]:
    """Those of `dag_ids` the user may read (the list's filter): Airflow's DAGs in one query,
    the few it has no DAG for yet (not parsed, invalid YAML) one by one. The query asks for
    the DAG's own read permission, the per-segment routes for its runs' too: Airflow's roles
    and the team roles `access` makes hold both, only a hand-made role with one of them sees
    a row whose details answer 404."""
    from airflow.api_fastapi.app import get_auth_manager

    readable = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    unknown = [dag_id for dag_id in dag_ids if dag_id not in known]
    return {d for d in dag_ids if d in readable} | _authorized(user, unknown, "GET")


def _segment_row(segment_id: str) -> dict[str, Any]:
    row = _store().segment(segment_id)
    if row is None:
        raise HTTPException(409, never_ran(segment_id))
    return row


def _require_not_calculating(segment_id: str) -> None:
    row = _store().segment(segment_id)
    if row is not None and row["status"] == CALCULATING:
        raise HTTPException(409, f"segment {segment_id!r} is Calculating: wait for it to end")


def _published_version(row: dict[str, Any]) -> int:
    """The current version of the segment's store row; 409 if nothing is published."""
    if not row["current_version"]:
        raise HTTPException(409, f"segment {row['id']!r} has no published membership")
    return row["current_version"]


# A spreadsheet runs a cell starting with one of these as a formula (a source user key is
# source data: "=HYPERLINK(...)" must stay text). Such a value gets a leading "'".
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv(filename: str, header: tuple[str, ...], rows: Iterable[tuple]) -> StreamingResponse:
    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for n, row in enumerate(rows, 1):
            writer.writerow([f"'{v}" if v.startswith(FORMULA_START) else v for v in row])
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
