"""Airflow plugin: the Connector Segments app on the API server, and its page in the UI's nav.

Thin on purpose: the app is composed in `include/ui/app.py`, testable without the plugin
manager. Its page and JSON API are behind Airflow's login; its webhook routes carry their own
Basic auth (Mixpanel cannot log in to Airflow).

The nav entry is an external view: with `url_route` set, the UI renders `href` in an iframe
at `<ui>/plugin/connector-segments`. `href` is relative (the UI resolves it against its own
base URL, so a sub-path deployment works) and keeps its trailing slash: the page's relative
`api/...` and `static/...` URLs resolve under `connector-segments/`.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.ui.app import app

NAME = "Connector Segments"
PREFIX = "connector-segments"


class ConnectorSegmentsPlugin(AirflowPlugin):
    name = "connector_segments"
    fastapi_apps = [{"app": app, "url_prefix": f"/{PREFIX}", "name": NAME}]
    external_views = [
        {
            "name": NAME,  # also the iframe's title
            "href": f"{PREFIX}/",
            "destination": "nav",
            "url_route": PREFIX,
            "nav_top_level": True,  # its own button in the nav bar, not inside a menu
        }
    ]
