"""The FastAPI app the Airflow API server mounts at `/connector-segments` (see the plugin).

Three parts, each with its own error replies:

- `/webhooks/...`: the Mixpanel webhook app, handed the request unchanged (its own routes,
  Basic auth and Mixpanel-shaped replies; outside Airflow's login), and handed here what it
  needs from the layers above it (`webhook_app`);
- `/api/...`: the JSON API, a sub-app behind the login (`{"detail"}` errors);
- the rest: the page (`/`, its assets, the chart), behind the login, with FastAPI's own
  error replies; an unknown path is a plain 404.
"""

from __future__ import annotations

from typing import NoReturn

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from include.orchestration.connections import get_connection, webhook_state
from include.orchestration.webhook_trigger import trigger_refresh
from include.ui import page
from include.ui.api import create_api_app
from include.webhooks.app import Services
from include.webhooks.app import create_app as create_webhook_app

WEBHOOKS = "/webhooks"


class PrefixRoute(BaseRoute):
    """Every path at or under `prefix`, to `app` with the scope untouched: unlike a Mount,
    the app sees its full path, so the webhook app keeps its routes as they are (a Mount
    would strip the prefix) and answers its own 404/405 in Mixpanel's shape."""

    def __init__(self, prefix: str, app: ASGIApp) -> None:
        self.prefix, self.app = prefix, app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        path, root = scope["path"], scope.get("root_path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        if route == self.prefix or route.startswith(self.prefix + "/"):
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: object) -> NoReturn:
        raise NoMatchFound(name, path_params)


class NoSniff:
    """`X-Content-Type-Options: nosniff` on every answer (JSON, CSV, SVG, errors): a browser
    must never run a CSV of source user keys, or an error quoting one, as a script or page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, sending)


def webhook_app(max_body_bytes: int | None = None) -> FastAPI:
    """The webhook app, handed Airflow's Connections, the state it stages in the Netmera
    database and Airflow's refresh trigger (the webhooks layer sits below orchestration)."""
    services = Services(get_connection, webhook_state, trigger_refresh)
    return create_webhook_app(services, max_body_bytes)


def create_app() -> FastAPI:
    app = FastAPI(title="Connector Segments", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(NoSniff)
    app.router.routes.append(PrefixRoute(WEBHOOKS, webhook_app()))
    app.mount("/api", create_api_app())
    app.include_router(page.router)
    return app


app = create_app()
