"""A fake Mixpanel Query API: cohort list and cohort members (engage) with paged sessions.

Plays the behaviour in /work/shared/reference/external-apis.md ("Mixpanel - cohort members
(pull)"), including what clients must survive: sessions that expire mid-export, a last page that
may be empty, a `total` that can lie, and each project's rate limits (`ProjectLimits`: over
them, HTTP 429). Faults and auth come from `FakeServer`.
"""

from __future__ import annotations

import collections
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from include.demo.fake_server import FakeServer, Recorded, Response, json_response

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


@dataclass(frozen=True)
class ProjectLimits:
    """A project's limits as Mixpanel enforces them: at most `queries` accepted in any `window`
    seconds (60 in 3600 s for real) and `concurrent` in flight; beyond them, 429."""

    queries: int = 60
    window: float = 3600.0
    concurrent: int = 5


@dataclass
class _Session:
    cohort_id: int
    members: list[dict[str, Any]]  # snapshot taken at page 0
    valid: bool = field(default=True)


class FakeMixpanel(FakeServer):
    """Service-account Basic auth plus `project_id` (any of `project_ids`); both `/api/query` and
    `/api/2.0` paths. Cohort ids are shared by the projects. `limits` (per project, off by
    default) answer 429 to a query over them; `answer_delay` makes each engage page take that
    long, so that queries overlap."""

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
        other_projects: tuple[int, ...] = (),
        limits: ProjectLimits | None = None,
        answer_delay: float = 0.0,
    ) -> None:
        super().__init__(username, secret)
        self.project_id = project_id
        self.project_ids = {str(project_id), *map(str, other_projects)}
        self.limits = limits
        self.answer_delay = answer_delay
        self._accepted: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._in_flight: collections.Counter[str] = collections.Counter()
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
        if project not in self.project_ids:
            return self.error_response(400, f"invalid project_id {project!r}")
        if not self._admit(project):
            return self.error_response(429, "rate limit exceeded for this project")
        try:
            if req.path in LIST_PATHS:
                return json_response([self._describe(c) for c in self.cohorts.values()])
            self._stopping.wait(self.answer_delay)
            return self._engage(req)
        finally:
            with self._state:
                self._in_flight[project] -= 1

    def _admit(self, project: str) -> bool:
        """Count the query against its project's limits; False: over them (not counted)."""
        with self._state:
            accepted = self._accepted[project]
            now = time.monotonic()
            limits = self.limits
            if limits is not None:
                while accepted and accepted[0] <= now - limits.window:
                    accepted.popleft()
                if len(accepted) >= limits.queries or self._in_flight[project] >= limits.concurrent:
                    return False
                accepted.append(now)
            self._in_flight[project] += 1
            return True

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
