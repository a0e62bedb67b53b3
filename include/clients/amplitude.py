"""Amplitude cohort export client: request an export, wait until it is ready, download it.

Flow (reference/external-apis.md): GET /api/5/cohorts/request/{cohort_id}?props=1&propKeys=...
→ `request_id`; poll GET /api/5/cohorts/request-status/{request_id} until "JOB COMPLETED";
GET /api/5/cohorts/request/{request_id}/file answers with the file, or with a 302 to a
short-lived pre-signed URL on another host. That link gets no credentials; when it has expired,
the API is asked for a fresh one.

Connection (`amplitude_default` or the segment's `conn_id`): host = base URL (EU residency and
test servers), login/password = API key / secret key, extras `poll_interval` (5 s), `max_wait`
(3600 s), `link_attempts` (5), `requests_per_hour` (360) and `max_concurrent` (4): the project's
budget, shared by every client of the project (one API key) through the `budgets` it is given;
`timeout`, `max_attempts`, `backoff_base`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from include.clients.budget import PROCESS_BUDGETS, Budgets, Limits
from include.clients.connection import ConnectionInfo
from include.clients.http import ClientSettings, HTTPStatusError, VendorClient, VendorError

log = logging.getLogger(__name__)

DEFAULT_URL = "https://amplitude.com"


class ExportError(VendorError):
    """The export failed, was not ready in time, or no download link for it worked."""


class AmplitudeClient:
    def __init__(self, conn: ConnectionInfo, budgets: Budgets | None = None) -> None:
        settings = ClientSettings.from_extra(conn.extra)
        # ~60 requests per 10 minutes and 4-5 at once; polls count too.
        limits = Limits.from_extra(conn.conn_id, conn.extra, "requests_per_hour", 360, 4)
        # An Amplitude project is its API key; the budget names it by a digest only.
        key = hashlib.sha256((conn.login or "").encode()).hexdigest()[:16]
        budget = (budgets or PROCESS_BUDGETS).project(
            "amplitude", f"api key sha256:{key}", limits, settings.lease_seconds
        )
        self.http = VendorClient("amplitude", conn, DEFAULT_URL, settings, budget)
        self.poll_interval = float(conn.extra.get("poll_interval", 5))
        self.max_wait = conn.extra.get("max_wait", 3600)
        self.link_attempts = int(conn.extra.get("link_attempts", 5))

    def request_export(self, cohort_id: str, prop_keys: list[str]) -> str:
        """Ask for a cohort's export with these properties; returns its request id."""
        params = {"props": 1 if prop_keys else 0, "propKeys": prop_keys}
        answer = self.http.call("GET", f"/api/5/cohorts/request/{cohort_id}", params=params)
        return str(answer.data["request_id"])

    def export_known(self, request_id: str) -> bool:
        """Whether Amplitude still has this export (it forgets them after a while)."""
        try:
            self.http.call("GET", f"/api/5/cohorts/request-status/{request_id}")
        except HTTPStatusError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_until_ready(self, request_id: str) -> int:
        """Poll the export's status until it is complete; returns how many polls it took."""
        deadline = time.monotonic() + float(self.max_wait)
        polls = 0
        while True:
            answer = self.http.call("GET", f"/api/5/cohorts/request-status/{request_id}")
            status = str(answer.data.get("async_status", "")).upper()
            polls += 1
            if answer.status == 200 and "COMPLETED" in status:
                return polls
            if "FAIL" in status or "ERROR" in status:
                raise ExportError(f"Amplitude export failed: {status}")
            if time.monotonic() > deadline:
                raise ExportError(
                    f"Amplitude export not ready after {polls} polls ({self.max_wait} s); "
                    f"last status {status or answer.status}"
                )
            time.sleep(self.poll_interval)

    def download(self, request_id: str, destination: Path) -> None:
        """The export's file to `destination`: the body, or through the redirect; an expired
        pre-signed link is replaced by a fresh one."""
        for attempt in range(1, self.link_attempts + 1):
            location = self.http.download(f"/api/5/cohorts/request/{request_id}/file", destination)
            if location is None:
                return
            try:
                if self.http.download(location, destination, auth=False) is None:
                    return
                raise ExportError(
                    "the Amplitude download link redirected again; refusing to follow"
                )
            except HTTPStatusError as exc:
                if exc.status not in (400, 401, 403, 404, 410):
                    raise
                log.warning(
                    "Amplitude download link refused (HTTP %d, %s); asking for a fresh one (%d/%d)",
                    exc.status,
                    "expired" if "expired" in exc.body.lower() else "denied",
                    attempt,
                    self.link_attempts,
                )
        raise ExportError(f"no Amplitude download link worked after {self.link_attempts} tries")
