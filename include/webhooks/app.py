"""The webhook app: the part of the app at `/connector-segments` (see `include.ui.app`)
outside Airflow's login.

`POST /webhooks/mixpanel/{segment_id}` receives Mixpanel's cohort-sync calls. It is not behind
Airflow's login (Mixpanel cannot log in): it checks Basic auth against the segment's Connection.
Checks run cheapest-first and before anything is written: credentials (401), Content-Type
(415), size (413), shape (400); only then is the page stored. Until a call is authenticated it
learns nothing: an unknown segment, one that is not pushed by Mixpanel, an invalid YAML, a
missing or incomplete credentials Connection and wrong credentials all get the same 401, and
only the server log says which. Every reply has Mixpanel's shape
`{"action", "status", "error": {"message", "code"}}`; 4xx pause the sync on Mixpanel's side,
5xx are retried by it, so a 5xx means a server fault only, with a generic message (the details
are in the log). Replies and logs never carry credentials or members' data, and caller-supplied
text is escaped before it is logged.

What it needs from the layers above (Airflow's Connections, the staged state in the Netmera
database, the refresh trigger) it is handed as `Services` by `include.ui.app`: this layer
imports none of them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.webhooks.auth import (
    DUMMY_CREDENTIALS,
    MissingCredentials,
    basic_auth_matches,
    expected_credentials,
)
from include.webhooks.logsafe import first_line, loggable
from include.webhooks.payload import CohortSyncCall, InvalidCall, parse_call

if TYPE_CHECKING:
    from include.clients.connection import ConnectionGetter
    from include.config.segments import SegmentConfig
    from include.webhooks.state import Receipt, WebhookState

log = logging.getLogger(__name__)

MAX_BODY_ENV = "CONNECTOR_SEGMENTS_WEBHOOK_MAX_BYTES"
DEFAULT_MAX_BODY = 8 * 1024 * 1024
_SEGMENT_ID = re.compile(r"[a-z0-9_]{1,200}")  # fullmatch: `$` would let "id\n" through
INTERNAL_ERROR = "internal error; retry later"
STORE_UNAVAILABLE = "the segment store is unavailable; retry later"


@dataclass(frozen=True)
class Services:
    """What a call needs from the layers above: Connections by id (the Basic-auth
    credentials), the staged state (opened per call; LookupError or ValueError when the
    `netmera_db` Connection is missing or unusable) and the trigger of a segment's refresh once
    an export or a diff is complete (given the segment and why; it never raises)."""

    get_connection: ConnectionGetter
    open_state: Callable[[], WebhookState]
    trigger_refresh: Callable[[SegmentConfig, str], object]


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


class NotAuthenticated(Exception):
    """Why a call cannot be authenticated; logged, while the caller gets the one 401."""

    def __init__(self, segment: str, cause: str, level: int = logging.WARNING) -> None:
        super().__init__(cause)
        self.segment, self.cause, self.level = segment, cause, level


def unauthorized() -> Failure:
    """The one reply to every call that is not authenticated, whatever the cause."""
    return Failure(
        401,
        "wrong or missing credentials",
        headers={"WWW-Authenticate": 'Basic realm="connector-segments", charset="UTF-8"'},
    )


def mixpanel_segment(segment_id: str) -> SegmentConfig:
    """The segment's config if it exists and is pushed by Mixpanel; NotAuthenticated otherwise."""
    from include.config.segments import SUFFIXES, SegmentConfigError, find_segment, segments_dir

    if not _SEGMENT_ID.fullmatch(segment_id):
        raise NotAuthenticated(ascii(segment_id[:200]), "not a valid segment id")
    folder = segments_dir()
    if not any((folder / f"{segment_id}{suffix}").is_file() for suffix in SUFFIXES):
        raise NotAuthenticated(segment_id, "no such segment")
    try:
        segment = find_segment(segment_id, folder)
    except SegmentConfigError as exc:
        cause = f"its YAML is invalid ({first_line(exc)}); run `python -m include.cli validate`"
        raise NotAuthenticated(segment_id, cause, logging.ERROR) from None
    if segment.source.type != "mixpanel_webhook":
        raise NotAuthenticated(segment_id, "not a mixpanel_webhook segment")
    return segment


def webhook_credentials(
    segment_id: str, get_connection: ConnectionGetter
) -> tuple[SegmentConfig, str, str]:
    """The segment and the login and password its calls must present."""
    segment = mixpanel_segment(segment_id)
    try:
        login, password = expected_credentials(get_connection, segment.source.conn_id, segment.id)
    except MissingCredentials as exc:  # the message names the Connection, never a secret
        raise NotAuthenticated(segment.id, str(exc), logging.ERROR) from None
    return segment, login, password


def authenticate(
    request: Request, segment_id: str, get_connection: ConnectionGetter
) -> SegmentConfig:
    """The segment, if the call presents its credentials; the one 401 otherwise."""
    header = request.headers.get("authorization")
    try:
        segment, login, password = webhook_credentials(segment_id, get_connection)
    except NotAuthenticated as exc:
        basic_auth_matches(header, *DUMMY_CREDENTIALS)  # the work of a real check, for timing
        log.log(exc.level, "segment %s: webhook call refused: %s", exc.segment, exc.cause)
        raise unauthorized() from None
    if not basic_auth_matches(header, login, password):
        log.warning("segment %s: webhook call refused: wrong or missing credentials", segment.id)
        raise unauthorized()
    return segment


def require_json(request: Request, segment: SegmentConfig) -> None:
    """415 unless the body is declared JSON: a cross-site form can only send text/plain,
    urlencoded or multipart, so this also keeps browsers from delivering forged calls."""
    media_type, *params = (request.headers.get("content-type") or "").split(";")
    charsets = [
        value.strip().strip('"').lower()
        for name, _, value in (p.partition("=") for p in params)
        if name.strip().lower() == "charset"
    ]
    if media_type.strip().lower() != "application/json" or set(charsets) - {"utf-8", "utf8"}:
        log.warning("segment %s: webhook call refused: Content-Type is not JSON", segment.id)
        raise Failure(415, "Content-Type must be application/json (UTF-8)")


async def read_body(request: Request, segment: SegmentConfig, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes: by Content-Length, and while reading."""
    too_large = Failure(413, f"request body larger than {limit} bytes")
    try:
        return await _read_at_most(request, limit, too_large)
    except Failure as exc:
        log.warning("segment %s: webhook call refused: %s", segment.id, exc.message)
        raise


async def _read_at_most(request: Request, limit: int, too_large: Failure) -> bytes:
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


def parse(segment: SegmentConfig, body: bytes) -> CohortSyncCall:
    try:
        return parse_call(body)
    except InvalidCall as exc:
        log.warning("segment %s: webhook call refused: %s", segment.id, loggable(exc, 1000))
        raise Failure(400, str(exc), exc.action) from None


def store_page(
    segment: SegmentConfig, call: CohortSyncCall, open_state: Callable[[], WebhookState]
) -> Receipt:
    import sqlalchemy as sa

    from include.webhooks.state import SessionConflict

    try:
        receipt = open_store(segment, call, open_state).receive(segment.id, call)
    except SessionConflict as exc:  # its message holds page numbers only
        log.warning("segment %s: webhook call refused: %s", segment.id, exc)
        raise Failure(400, str(exc), call.action) from None
    except sa.exc.SQLAlchemyError as exc:
        # Bound parameters are hidden by the engine; later lines of a driver's message may
        # still quote data, so only the first is logged.
        log.error(
            "segment %s: cannot store the page: %s: %s",
            segment.id,
            type(exc).__name__,
            first_line(exc),
        )
        raise Failure(503, STORE_UNAVAILABLE, call.action) from None
    log.info(
        "segment %s: mixpanel %s session %s page %d/%d: %s (%d members; %d/%d pages)%s",
        segment.id,
        call.action,
        call.session_label,
        call.page_count,
        call.total_pages,
        receipt.outcome,
        len(call.parameters.members),
        receipt.pages_received,
        receipt.total_pages,
        "; session complete" if receipt.completed else "",
    )
    return receipt


def open_store(
    segment: SegmentConfig, call: CohortSyncCall, open_state: Callable[[], WebhookState]
) -> WebhookState:
    """The segment store; only a missing or unusable `netmera_db` Connection is caught here,
    so that a fault while storing is never blamed on the configuration."""
    try:
        return open_state()
    except (LookupError, ValueError) as exc:  # netmera_db missing or of an unsupported type
        log.error("segment %s: cannot open the segment store: %s", segment.id, first_line(exc))
        raise Failure(500, INTERNAL_ERROR, call.action) from None


def dispose_states() -> None:
    """Close the process's Netmera database engines (tests, and a clean shutdown)."""
    from include.store.database import DATABASES

    DATABASES.dispose()


# -- routes ------------------------------------------------------------------------------------


class _RawSegmentId(Convertor[str]):
    """Everything after the prefix: slashes, dot-dots, nothing at all, line breaks too. With
    Starlette's `path` (`.*`, and a `$` that matches before a final newline), `mp_push%0A`
    would route as `mp_push` and `a%0Ab` would not route at all (a 404 unlike the rest)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("cs_raw_segment_id", _RawSegmentId())
router = APIRouter()


# Any id gets to `authenticate`, and so the same 401 as an unknown segment.
@router.post("/webhooks/mixpanel/{segment_id:cs_raw_segment_id}")
async def mixpanel_cohort_sync(segment_id: str, request: Request) -> JSONResponse:
    """One page of a Mixpanel cohort sync; stored once however often it is delivered."""
    services: Services = request.app.state.services
    segment = await run_in_threadpool(authenticate, request, segment_id, services.get_connection)
    require_json(request, segment)
    body = await read_body(request, segment, request.app.state.max_body_bytes)
    call = await run_in_threadpool(parse, segment, body)  # up to the limit's worth of JSON
    receipt = await run_in_threadpool(store_page, segment, call, services.open_state)
    if receipt.completed:
        why = f"{call.action} session {call.session_label} complete ({call.total_pages} pages)"
        await run_in_threadpool(services.trigger_refresh, segment, why)
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
    return reply(None, Failure(500, INTERNAL_ERROR))


def create_app(services: Services, max_body_bytes: int | None = None) -> FastAPI:
    """The app, its calls served with `services`; `max_body_bytes` defaults to
    CONNECTOR_SEGMENTS_WEBHOOK_MAX_BYTES or 8 MiB."""
    app = FastAPI(
        title="Connector Segments",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = services
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
