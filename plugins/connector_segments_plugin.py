"""Airflow plugin: mounts the Connector Segments FastAPI app on the API server.

Thin on purpose: the app lives in `include/webhooks/app.py`, testable without the plugin
manager. Its webhook routes carry their own Basic auth (Mixpanel cannot log in to Airflow).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.webhooks.app import app


class ConnectorSegmentsPlugin(AirflowPlugin):
    name = "connector_segments"
    fastapi_apps = [{"app": app, "url_prefix": "/connector-segments", "name": "Connector Segments"}]
