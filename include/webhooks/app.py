"""The FastAPI app the Airflow API server mounts at `/connector-segments` (see the plugin).

`POST /webhooks/mixpanel/{segment_id}` receives Mixpanel's cohort-sync calls. It is not behind
Airflow's login (Mixpanel cannot log in): it checks Basic auth against the segment's Connection.
Checks run cheapest-first and before anything is written: segment (404), credentials (401),
size (413), shape (400); only then is the page stored. Every reply has Mixpanel's shape
`{"action", "status", "error": {"message", "code"}}`; 400/401/404 pause the sync on Mixpanel's
side, 5xx are retried by it. Replies and logs never carry credentials or members' data.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.webhooks.auth import MissingCredentials, basic_auth_matches, expected_credentials
from include.webhooks.payload import CohortSyncCall, InvalidCall, parse_call

if TYPE_CHECKING:
    from include.config import SegmentConfig
    from include.webhooks.state import Receipt, WebhookState

log = logging.getLogger(__name__)

MAX_BODY_ENV = "CONNECTOR_SEGMENTS_WEBHOOK_MAX_BYTES"
DEFAULT_MAX_BODY = 8 * 1024 * 1024
_SEGMENT_ID = re.compile(r"^[a-z0-9_]{1,200}$")


class Failure(Exception):
    """A refused call: becomes a spec-shaped reply with this status and a data-free message."""

    def __init__(
        self,
        status: int,
        message: str,
        action: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.action, self.headers = status, message, action, headers


def reply(action: str | None, failure: Failure | None = None) -> JSONResponse:
    if failure is None:
        return JSONResponse({"action": action, "status": "success"})
    body = {
        "action": action,
        "status": "failure",
        "error": {"message": failure.message, "code": failure.status},
    }
    return JSONResponse(body, status_code=failure.status, headers=failure.headers)


# -- the steps of one call ---------------------------------------------------------------------


def mixpanel_segment(segment_id: str) -> SegmentConfig:
    """The segment's config if it exists and is pushed by Mixpanel; 404 otherwise."""
    from include.config import SegmentConfigError, find_segment, segments_dir

    unknown = Failure(404, f"no mixpanel_webhook segment {segment_id!r}")
    if not _SEGMENT_ID.match(segment_id):
        raise unknown
    folder = segments_dir()
    if not any((folder / f"{segment_id}{suffix}").is_file() for suffix in (".yaml", ".yml")):
        raise unknown
    try:
        segment = find_segment(segment_id, folder)
    except SegmentConfigError:
        log.error(
            "segment %s: its YAML is invalid; run `python -m include.cli validate`", segment_id
        )
        raise Failure(500, f"segment {segment_id!r}: its configuration is invalid") from None
    if segment.source.type != "mixpanel_webhook":
        raise unknown
    return segment


def authenticate(request: Request, segment: SegmentConfig) -> None:
    try:
        login, password = expected_credentials(segment.source.conn_id, segment.id)
    except MissingCredentials as exc:
        log.error("%s", exc)
        raise Failure(500, str(exc)) from None
    if not basic_auth_matches(request.headers.get("authorization"), login, password):
        log.warning("segment %s: webhook call refused: wrong or missing credentials", segment.id)
        raise Failure(
            401,
            "wrong or missing credentials",
            headers={"WWW-Authenticate": 'Basic realm="connector-segments", charset="UTF-8"'},
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: by Content-Length, and while reading."""
    too_large = Failure(413, f"request body larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise Failure(400, "invalid Content-Length header") from None
        if length > limit:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def store_page(segment: SegmentConfig, call: CohortSyncCall) -> Receipt:
    import sqlalchemy as sa

    from include.webhooks.state import SessionConflict

    try:
        receipt = state().receive(segment.id, call)
    except SessionConflict as exc:
        raise Failure(400, str(exc), call.action) from None
    except (LookupError, ValueError) as exc:  # netmera_db missing or of an unsupported type
        log.error("segment %s: cannot open the segment store: %s", segment.id, exc)
        raise Failure(500, f"segment store: {exc}", call.action) from None
    except sa.exc.SQLAlchemyError as exc:
        # Bound parameters are hidden by the engine: the message holds no members' data.
        log.error("segment %s: cannot store the page: %s: %s", segment.id, type(exc).__name__, exc)
        raise Failure(503, "the segment store is unavailable; retry later", call.action) from None
    log.info(
        "segment %s: mixpanel %s session %s page %d/%d: %s (%d members; %d/%d pages)%s",
        segment.id,
        call.action,
        call.session_id,
        call.page_count,
        call.total_pages,
        receipt.outcome,
        len(call.parameters.members),
        receipt.pages_received,
        receipt.total_pages,
        "; session complete" if receipt.completed else "",
    )
    return receipt


_states: dict[str, WebhookState] = {}
_states_lock = threading.Lock()


def state() -> WebhookState:
    """The staged state in the `netmera_db` database; one engine per database per process."""
    from include.connections import NETMERA_DB_CONN_ID, get_connection
    from include.db import engine_for, sqlalchemy_url
    from include.webhooks.state import WebhookState

    info = get_connection(NETMERA_DB_CONN_ID)
    key = sqlalchemy_url(info).render_as_string(hide_password=False)
    with _states_lock:
        if key not in _states:
            _states[key] = WebhookState(engine_for(info))
        return _states[key]


def dispose_states() -> None:
    """Close the cached engines (tests, and a clean shutdown)."""
    with _states_lock:
        for cached in _states.values():
            cached.engine.dispose()
        _states.clear()


# -- routes ------------------------------------------------------------------------------------

router = APIRouter()


@router.post("/webhooks/mixpanel/{segment_id}")
async def mixpanel_cohort_sync(segment_id: str, request: Request) -> JSONResponse:
    """One page of a Mixpanel cohort sync; stored once however often it is delivered."""
    from include.webhooks.trigger import trigger_refresh

    segment = await run_in_threadpool(mixpanel_segment, segment_id)
    await run_in_threadpool(authenticate, request, segment)
    body = await read_body(request, request.app.state.max_body_bytes)
    try:
        call = parse_call(body)
    except InvalidCall as exc:
        log.warning("segment %s: webhook call refused: %s", segment.id, exc)
        raise Failure(400, str(exc), exc.action) from None
    receipt = await run_in_threadpool(store_page, segment, call)
    if receipt.completed:
        why = f"{call.action} session {call.session_id} complete ({call.total_pages} pages)"
        await run_in_threadpool(trigger_refresh, segment, why)
    return reply(call.action)


# -- the app -----------------------------------------------------------------------------------


async def _on_failure(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Failure)
    return reply(exc.action, exc)


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return reply(None, Failure(exc.status_code, str(exc.detail), headers=exc.headers))


async def _on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("webhook call failed: %s", type(exc).__name__, exc_info=exc)
    return reply(None, Failure(500, "internal error; retry later"))


def create_app(max_body_bytes: int | None = None) -> FastAPI:
    """The app; `max_body_bytes` defaults to CONNECTOR_SEGMENTS_WEBHOOK_MAX_BYTES or 8 MiB."""
    app = FastAPI(
        title="Connector Segments",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.max_body_bytes = max_body_bytes or int(
        os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY
    )
    app.include_router(router)
    handlers: dict[Any, Any] = {
        Failure: _on_failure,
        StarletteHTTPException: _on_http_error,
        Exception: _on_unexpected,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    return app


app = create_app()
