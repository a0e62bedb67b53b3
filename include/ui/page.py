"""The Connector Segments page: its HTML, script and style.

Served at `/connector-segments/` inside Airflow's UI (an iframe; the plugin's external view).
Every route is behind Airflow's login on the router, as the JSON API is. The page is static:
its script asks the JSON API (`api/...`, relative, so a sub-path deployment works) for
everything it shows, as a script with a Bearer token could.
"""

from __future__ import annotations

from pathlib import Path

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
# Only this app's own files; framed by Airflow's UI (same origin) and nobody else.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "same-origin",
}

router = APIRouter(dependencies=[Depends(requires_authenticated())])


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no such file: {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
