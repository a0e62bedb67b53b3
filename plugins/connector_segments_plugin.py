"""Airflow plugin: mounts the Connector Segments FastAPI app on the API server.

Thin on purpose: the app is composed in `include/ui/app.py`, testable without the plugin
manager. Its JSON API is behind Airflow's login; its webhook routes carry their own Basic auth
(Mixpanel cannot log in to Airflow).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.ui.app import app


class ConnectorSegmentsPlugin(AirflowPlugin):
    name = "connector_segments"
    fastapi_apps = [{"app": app, "url_prefix": "/connector-segments", "name": "Connector Segments"}]
