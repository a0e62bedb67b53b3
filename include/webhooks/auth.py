"""Basic auth for push sources, against the login/password of the segment's Airflow Connection.

Mixpanel cannot log in to Airflow, so webhook routes bypass Airflow's auth and present the
credentials configured on the Mixpanel side instead. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets

from include.clients.connection import ConnectionGetter

# Compared against when a call names no usable segment, so that it costs what a real check does.
DUMMY_CREDENTIALS = (secrets.token_urlsafe(16), secrets.token_urlsafe(24))


class MissingCredentials(RuntimeError):
    """The Connection holding the expected credentials is absent or incomplete (a server fault,
    logged; the caller is told only that it is not authenticated)."""


def expected_credentials(
    get_connection: ConnectionGetter, conn_id: str, segment_id: str
) -> tuple[str, str]:
    """The login and password Mixpanel must present, from Connection `conn_id` as
    `get_connection` (Airflow's, handed in by the app) reads it; the message never carries a
    secret."""
    try:
        conn = get_connection(conn_id)
    except LookupError:
        raise MissingCredentials(
            f"segment {segment_id!r}: Airflow Connection {conn_id!r} (source.conn_id) is not "
            "defined; create it with the login and password configured in Mixpanel"
        ) from None
    if not conn.login or not conn.password:
        raise MissingCredentials(
            f"segment {segment_id!r}: Airflow Connection {conn_id!r} needs both a login and a "
            "password for the webhook's Basic auth"
        )
    return conn.login, conn.password


def basic_auth_matches(header: str | None, login: str, password: str) -> bool:
    """True if `Authorization: Basic ...` carries exactly this login and password."""
    if not header:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_login, sep, given_password = decoded.partition(b":")
    if not sep:
        return False
    # Both comparisons always run: timing reveals neither which part was wrong nor how much.
    login_ok = hmac.compare_digest(given_login, login.encode("utf-8"))
    password_ok = hmac.compare_digest(given_password, password.encode("utf-8"))
    return login_ok & password_ok
