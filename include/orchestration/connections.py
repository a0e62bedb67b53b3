"""Airflow glue: Connections by id, as plain `ConnectionInfo` (the only Airflow import here).

Connections come from wherever Airflow looks: `AIRFLOW_CONN_*` environment variables, a secrets
backend or the metadata DB. Works inside tasks and in the CLI alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException

from include.clients.connection import ConnectionInfo

if TYPE_CHECKING:
    from include.clients.netmera import NetmeraClient
    from include.store.database import NetmeraDatabase
    from include.webhooks.state import WebhookState

NETMERA_CONN_ID = "netmera_default"  # Netmera's REST API


class ConnectionNotDefined(AirflowFailException, LookupError):
    """No Connection by that id. An AirflowFailException: a retry cannot define it, so the step
    fails on its first try instead of after every retry and its delay."""


def get_connection(conn_id: str) -> ConnectionInfo:
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # the SDK raises its own not-found types; keep the message plain
        raise ConnectionNotDefined(f"Airflow Connection {conn_id!r} is not defined: {exc}") from exc
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn.conn_type or "",
        host=conn.host,
        schema=conn.schema,
        login=conn.login,
        password=conn.password,
        port=conn.port,
        extra=conn.extra_dejson or {},
    )


def netmera_database() -> NetmeraDatabase:
    """The Netmera database: the user table to match against, and the segment store; one
    engine per process however often it is asked for."""
    from include.store.database import DATABASES, NETMERA_DB_CONN_ID

    return DATABASES.get(get_connection(NETMERA_DB_CONN_ID))


def netmera_client() -> NetmeraClient:
    """A client of Netmera's REST API, from its Connection (`netmera_default`)."""
    from include.clients.netmera import NetmeraClient

    return NetmeraClient(get_connection(NETMERA_CONN_ID))


def webhook_state() -> WebhookState:
    """What the Mixpanel webhook staged, in the Netmera database. Built here, not by the
    store's `NetmeraDatabase`: the webhooks layer sits above the store."""
    from include.webhooks.state import WebhookState

    return WebhookState(netmera_database().engine)
