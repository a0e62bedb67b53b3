"""Mixpanel Query API client: the project's cohorts, and a cohort's members page by page.

Pagination (reference/external-apis.md): POST /api/query/engage with `filter_by_cohort`,
`output_properties` and `page`; page 0 opens a `session_id` that later pages must send; the last
page is the first with fewer than `page_size` results. `total` is an estimate only. Mixpanel
forgets a session after a while: a later page is then refused (SessionExpired) and the cohort
must be read again from page 0.

Connection (`mixpanel_default` or the segment's `conn_id`): host = base URL (residency hosts and
test servers), login/password = service account, extras `project_id` (required),
`workspace_id`, `queries_per_hour` (60) and `max_concurrent` (5): the project's budget, shared by
every client of the project through the `budgets` it is given; `timeout`, `max_attempts`,
`backoff_base`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from include.clients.budget import PROCESS_BUDGETS, Budgets, Limits
from include.clients.connection import ConnectionInfo
from include.clients.http import (
    ClientSettings,
    HTTPStatusError,
    UnexpectedAnswer,
    VendorClient,
    VendorError,
)

DEFAULT_URL = "https://mixpanel.com"


class SessionExpired(VendorError):
    """Mixpanel no longer knows the engage session: start again from page 0."""


@dataclass(frozen=True)
class EngageCursor:
    """Where a read of a cohort's members stands: the next page and the session it belongs to."""

    page: int = 0
    session_id: str | None = None


@dataclass(frozen=True)
class EngagePage:
    number: int
    results: list[dict[str, Any]]
    last: bool  # the cohort's final page: there is nothing after it
    next: EngageCursor  # where the read goes on from
    total: Any  # Mixpanel's estimate of the cohort's size (for progress only)


class MixpanelClient:
    def __init__(self, conn: ConnectionInfo, budgets: Budgets | None = None) -> None:
        if "project_id" not in conn.extra:
            raise VendorError(
                f"connection {conn.conn_id!r}: extra 'project_id' is required for Mixpanel"
            )
        self.params = {"project_id": conn.extra["project_id"]}  # carried by every call
        if conn.extra.get("workspace_id"):
            self.params["workspace_id"] = conn.extra["workspace_id"]
        settings = ClientSettings.from_extra(conn.extra)
        limits = Limits.from_extra(conn.conn_id, conn.extra, "queries_per_hour", 60, 5)
        budget = (budgets or PROCESS_BUDGETS).project(
            "mixpanel", f"project {conn.extra['project_id']}", limits, settings.lease_seconds
        )
        self.http = VendorClient("mixpanel", conn, DEFAULT_URL, settings, budget)

    def list_cohorts(self) -> list[dict[str, Any]]:
        return self.http.call("POST", "/api/query/cohorts/list", params=self.params).data

    def engage_pages(
        self, cohort_id: int, properties: list[str], start: EngageCursor = EngageCursor()
    ) -> Iterator[EngagePage]:
        """The cohort's members from `start` on: request a page, yield it, follow the cursor.

        Raises SessionExpired when Mixpanel refuses `start`'s (or a later page's) session,
        HTTPStatusError when it refuses the request, UnexpectedAnswer for an answer not shaped
        as documented.
        """
        page, session_id = start.page, start.session_id
        while True:
            form = {
                "filter_by_cohort": json.dumps({"id": cohort_id}),
                "output_properties": json.dumps(properties),
                "page": page,
            }
            if session_id:
                form["session_id"] = session_id
            answer = self._engage(form)
            results = answer["results"]
            session_id = answer.get("session_id") or session_id
            last = len(results) < int(answer["page_size"])
            yield EngagePage(
                page, results, last, EngageCursor(page + 1, session_id), answer.get("total")
            )
            if last:
                return
            page += 1

    def _engage(self, form: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = self.http.call("POST", "/api/query/engage", params=self.params, data=form)
        except HTTPStatusError as exc:
            if "session_id" in form and "session" in exc.body.lower():
                raise SessionExpired(str(exc)) from None
            raise
        data = answer.data
        if (
            not isinstance(data, dict)
            or data.get("status") != "ok"
            or not isinstance(data.get("results"), list)
            or "page_size" not in data
        ):
            raise UnexpectedAnswer(
                "unexpected Mixpanel engage answer "
                f"(keys {sorted(data) if isinstance(data, dict) else type(data).__name__})"
            )
        return data
