"""A fake Mixpanel Query API: cohort list and cohort members (engage) with paged sessions.

Plays the behaviour in /work/shared/reference/external-apis.md ("Mixpanel - cohort members
(pull)"), including what clients must survive: sessions that expire mid-export, a last page that
may be empty, and a `total` that can lie. Faults and auth come from `FakeServer`.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.fakes.server import FakeServer, Recorded, Response, fake_people, json_response

SESSION_INVALID = "session_id is invalid or has expired"
LIST_PATHS = ("/api/query/cohorts/list", "/api/2.0/cohorts/list")
ENGAGE_PATHS = ("/api/query/engage", "/api/2.0/engage")


@dataclass
class MixpanelCohort:
    id: int
    name: str
    members: list[dict[str, Any]]
    description: str = ""
    count: int | None = None  # None: the real member count
    is_visible: bool = True
    created: str = "2026-01-01 00:00:00"


@dataclass
class _Session:
    cohort_id: int
    members: list[dict[str, Any]]  # snapshot taken at page 0
    valid: bool = field(default=True)


class FakeMixpanel(FakeServer):
    """Service-account Basic auth plus `project_id`; both `/api/query` and `/api/2.0` paths."""

    realm = "Mixpanel"
    LIST: ClassVar[str] = "**/cohorts/list"  # fault/requests_to patterns for either API prefix
    ENGAGE: ClassVar[str] = "**/engage"

    def __init__(
        self,
        username: str = "svc-user",
        secret: str = "svc-secret",
        project_id: int = 1234,
        page_size: int = 1000,
        lie_about_total: bool = False,
    ) -> None:
        super().__init__(username, secret)
        self.project_id = project_id
        self.page_size = page_size
        self.lie_about_total = lie_about_total  # under-report, so clients trusting it lose users
        self.cohorts: dict[int, MixpanelCohort] = {}
        self._sessions: dict[str, _Session] = {}
        self._state = threading.Lock()

    def add_cohort(
        self, cohort_id: int, name: str, members: list[dict[str, Any]], **extra: Any
    ) -> MixpanelCohort:
        """Add or replace a cohort; `extra`: description, count, is_visible, created."""
        cohort = MixpanelCohort(cohort_id, name, list(members), **extra)
        self.cohorts[cohort_id] = cohort
        return cohort

    def expire_sessions(self) -> None:
        """Invalidate every session issued so far, as Mixpanel does after a while."""
        with self._state:
            for session in self._sessions.values():
                session.valid = False

    @property
    def session_ids(self) -> list[str]:
        with self._state:
            return list(self._sessions)

    def error_response(self, status: int, message: str) -> Response:
        return json_response({"error": message, "status": "error"}, status)

    def route(self, req: Recorded) -> Response:
        if req.path not in LIST_PATHS + ENGAGE_PATHS:
            return self.error_response(404, f"unknown path {req.path}")
        if req.method not in ("GET", "POST"):
            return self.error_response(405, "method not allowed")
        project = req.query.get("project_id", [None])[-1]
        if project is None:
            return self.error_response(400, "project_id is required")
        if project != str(self.project_id):
            return self.error_response(400, f"invalid project_id {project!r}")
        if req.path in LIST_PATHS:
            return json_response([self._describe(c) for c in self.cohorts.values()])
        return self._engage(req)

    def _describe(self, cohort: MixpanelCohort) -> dict[str, Any]:
        count = len(cohort.members) if cohort.count is None else cohort.count
        return {
            "id": cohort.id,
            "name": cohort.name,
            "description": cohort.description,
            "count": count,
            "is_visible": int(cohort.is_visible),
            "created": cohort.created,
            "project_id": self.project_id,
        }

    def _engage(self, req: Recorded) -> Response:
        try:
            cohort_filter = json.loads(req.param("filter_by_cohort") or "null")
            cohort_id = int(cohort_filter["id"])
            wanted = json.loads(req.param("output_properties") or "null")
            page = int(req.param("page") or 0)
        except (ValueError, TypeError, KeyError) as exc:
            return self.error_response(400, f"invalid parameters: {exc}")
        if wanted is not None and not isinstance(wanted, list):
            return self.error_response(400, "output_properties must be a JSON array")
        if cohort_id not in self.cohorts:
            return self.error_response(400, f"cohort {cohort_id} not found")
        session_id = req.param("session_id") or None
        with self._state:
            if session_id is None and page == 0:
                session_id = secrets.token_hex(16)
                members = list(self.cohorts[cohort_id].members)
                self._sessions[session_id] = _Session(cohort_id, members)
            session = self._sessions.get(session_id) if session_id else None
        if session is None or not session.valid or session.cohort_id != cohort_id or page < 0:
            return self.error_response(400, SESSION_INVALID)
        start = page * self.page_size
        chunk = session.members[start : start + self.page_size]
        total = len(session.members)
        results = [
            {
                "$distinct_id": member["$distinct_id"],
                "$properties": {
                    key: value
                    for key, value in member.get("$properties", {}).items()
                    if wanted is None or key in wanted
                },
            }
            for member in chunk
        ]
        return json_response(
            {
                "page": page,
                "page_size": self.page_size,
                "session_id": session_id,
                "status": "ok",
                "total": total // 2 if self.lie_about_total else total,
                "results": results,
            }
        )


def make_members(
    n: int, with_email: bool = True, with_phone: bool = True, seed: int = 0
) -> list[dict[str, Any]]:
    """`n` deterministic Mixpanel members; distinct ids are strings with a leading zero."""
    members = []
    for i, contact in fake_people(n, seed, with_email, with_phone):
        props: dict[str, Any] = {"$name": f"User {seed}.{i}", "plan": "pro" if i % 3 else "free"}
        props.update({f"${key}": value for key, value in contact.items()})
        members.append({"$distinct_id": f"0{seed}-{i:07d}", "$properties": props})
    return members
