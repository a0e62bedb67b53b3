"""The FastAPI app the Airflow API server mounts at `/connector-segments` (see the plugin).

The webhook app (its own Basic auth, Mixpanel-shaped replies) with the JSON API mounted at
`/api` as a sub-app: each keeps its own error replies, and only the API is behind the login.
"""

from __future__ import annotations

from fastapi import FastAPI

from include.ui.api import create_api_app
from include.webhooks.app import create_app as create_webhook_app


def create_app() -> FastAPI:
    app = create_webhook_app()
    app.mount("/api", create_api_app())
    return app


app = create_app()
