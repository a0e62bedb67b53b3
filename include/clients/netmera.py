"""Netmera REST API client (Connection `netmera_default`).

Base URL from the connection's host (default https://restapi.netmera.com/rest/3.0), the REST
API key from its password, sent as `X-netmera-api-key` and never logged. Retries and pacing come
from `VendorClient`; sends are non-idempotent calls (retried only when Netmera surely did not
act). Netmera's error codes become NetmeraError with a plain-language reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from include.clients.budget import PROCESS_BUDGETS, Limits
from include.clients.connection import ConnectionInfo
from include.clients.http import ClientSettings, HTTPStatusError, VendorClient

DEFAULT_URL = "https://restapi.netmera.com/rest/3.0"
MAX_EXT_IDS = 1000  # per request, for tagUsers and sendNotification

# Netmera's documented codes (reference/external-apis.md).
REASONS = {
    2001: "Netmera internal error",
    2009: "invalid JSON in the request",
    2010: "invalid REST API key",
    2020: "a required parameter is missing",
    2021: "this IP address is not allowed to call the REST API",
    2022: "the API key is not authorized for this operation",
    5016: "extId not found",
    5022: "message quota exceeded",
}


class NetmeraError(RuntimeError):
    """Netmera refused a request; `reason` is plain language, `code` Netmera's own."""

    def __init__(self, operation: str, status: int, code: int | None, message: str) -> None:
        self.operation, self.status, self.code = operation, status, code
        self.reason = REASONS.get(code or -1) or message or f"HTTP {status}"
        detail = f" (Netmera code {code})" if code else ""
        super().__init__(f"Netmera {operation}: {self.reason}{detail}, HTTP {status}")


class NetmeraClient:
    def __init__(self, conn: ConnectionInfo) -> None:
        if not conn.password:
            raise ValueError(f"connection {conn.conn_id!r}: the REST API key goes in 'password'")
        settings = ClientSettings.from_extra(conn.extra)
        # Netmera documents no limits; a connection may still set `requests_per_hour`.
        limits = Limits.from_extra(conn.conn_id, conn.extra, "requests_per_hour", None, None)
        budget = PROCESS_BUDGETS.project("netmera", conn.conn_id, limits, settings.lease_seconds)
        # The key travels in a header; Basic auth would send it twice.
        anonymous = ConnectionInfo(
            conn_id=conn.conn_id,
            conn_type=conn.conn_type,
            host=conn.host,
            schema=conn.schema,
            port=conn.port,
        )
        self.http = VendorClient("netmera", anonymous, DEFAULT_URL, settings, budget)
        if urlsplit(self.http.base_url).path in ("", "/"):  # host only: add the API's path
            self.http.base_url = self.http.base_url.rstrip("/") + "/rest/3.0"
        self.http.session.headers["X-netmera-api-key"] = conn.password

    def create_definition(self, title: str, text: str, platforms: list[str]) -> int:
        """A notification definition to send to listed users (not a send by itself)."""
        body = {"message": {"title": title, "text": text, "platforms": platforms}}
        return int(self._post("createNotificationDefinition", body)["notificationKey"])

    def send_to_ext_ids(
        self,
        notification_key: int,
        ext_ids: list[str],
        *,
        before_attempt: Callable[[], None] | None = None,
        after_refusal: Callable[[], None] | None = None,
    ) -> Any:
        """Send a defined notification to ≤1000 users. May raise AmbiguousOutcome.

        The hooks run before each try and after each try Netmera refused (see VendorClient).
        """
        if len(ext_ids) > MAX_EXT_IDS:
            raise ValueError(f"at most {MAX_EXT_IDS} extIds per request, got {len(ext_ids)}")
        body = {
            "notificationKey": notification_key,
            "message": {"params": {}},
            "target": {"extId": ext_ids},
        }
        return self._post(
            "sendNotification",
            body,
            idempotent=False,
            before_attempt=before_attempt,
            after_refusal=after_refusal,
        )

    def push_stats(self, notification_key: int) -> dict[str, Any]:
        return self._call("GET", "getPushStats", params={"notificationKey": notification_key})

    def _post(self, operation: str, body: dict, **kwargs: Any) -> Any:
        return self._call(
            "POST",
            operation,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            **kwargs,
        )

    def _call(self, method: str, operation: str, **kwargs: Any) -> Any:
        try:
            return self.http.call(method, operation, **kwargs).data
        except HTTPStatusError as exc:
            code, message = _error_body(exc.body)
            raise NetmeraError(operation, exc.status, code, message) from None


def _error_body(body: str) -> tuple[int | None, str]:
    try:
        payload = json.loads(body)
    except ValueError:
        return None, body[:200]
    if not isinstance(payload, dict):
        return None, str(payload)[:200]
    code = payload.get("code")
    return (
        int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
        str(payload.get("error") or payload.get("message") or "")[:200],
    )
