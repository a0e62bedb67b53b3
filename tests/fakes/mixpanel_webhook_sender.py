"""A fake Mixpanel cohort sync: the client side of the custom-webhook destination (push).

Builds spec-shaped calls (reference/external-apis.md, "Mixpanel — cohort sync to a custom
webhook"): `members` / `add_members` / `remove_members`, pages of at most 1000 members sharing
one `mixpanel_session_id`, `page_count` from 1 to `total_pages`, optional Basic auth, the body
declared `Content-Type: application/json`. Like Mixpanel it retries a page on 429/5xx (5 times)
and can deliver pages again or out of order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

PAGE_SIZE = 1000
RETRIES = 5  # Mixpanel: 429/5xx are retried 5 times over about 60 s


def member(i: int, **extra: Any) -> dict[str, Any]:
    """A cohort member as Mixpanel exports it (distinct id `mp-<i>` plus personal properties)."""
    person = {
        "mixpanel_distinct_id": f"mp-{i}",
        "email": f"person{i}@example.com",
        "phone_number": f"+90555{i:07d}",
        "first_name": f"First{i}",
        "last_name": f"Last{i}",
    }
    return {**person, **extra}


def members(ids: Iterable[int]) -> list[dict[str, Any]]:
    return [member(i) for i in ids]


@dataclass
class Session:
    """The calls of one export or diff, in page order (index 0 is page 1)."""

    action: str
    session_id: str
    calls: list[dict[str, Any]]

    def page(self, page_count: int) -> dict[str, Any]:
        return self.calls[page_count - 1]


@dataclass
class MixpanelWebhookSender:
    url: str
    auth: tuple[str, str] | None = None
    project_id: int = 3106
    cohort_id: int = 77
    cohort_name: str = "Push cohort"
    page_size: int = PAGE_SIZE
    retry_wait: float = 0.05  # seconds between retries (Mixpanel spreads 5 over ~60 s)
    timeout: float = 30
    responses: list[requests.Response] = field(default_factory=list)

    # -- building calls -------------------------------------------------------------------

    def session(
        self, action: str, people: Sequence[dict[str, Any]], session_id: str | None = None
    ) -> Session:
        """Split `people` into pages; an empty cohort is one page with no members."""
        session_id = session_id or f"{uuid.uuid4()}"
        size = self.page_size
        pages = [list(people[i : i + size]) for i in range(0, len(people), size)] or [[]]
        calls = [
            {
                "action": action,
                "parameters": {
                    "mixpanel_project_id": self.project_id,
                    "mixpanel_cohort_id": self.cohort_id,
                    "mixpanel_cohort_name": self.cohort_name,
                    "mixpanel_cohort_description": "",
                    "mixpanel_session_id": session_id,
                    "page_info": {"total_pages": len(pages), "page_count": number},
                    "members": page,
                },
            }
            for number, page in enumerate(pages, start=1)
        ]
        return Session(action, session_id, calls)

    # -- delivering -------------------------------------------------------------------------

    def post(self, call: dict[str, Any] | bytes, **kwargs: Any) -> requests.Response:
        """One delivery, retried on 429/5xx like Mixpanel; returns the last response."""
        kwargs.setdefault("auth", self.auth)
        kwargs.setdefault("timeout", self.timeout)
        # Mixpanel declares its JSON; `json=` does so too, raw bytes need the header.
        kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        body = {"data": call} if isinstance(call, bytes) else {"json": call}
        for attempt in range(RETRIES + 1):
            response = requests.post(self.url, **body, **kwargs)
            self.responses.append(response)
            if response.status_code != 429 and response.status_code < 500:
                return response
            if attempt < RETRIES:
                time.sleep(self.retry_wait)
        return response

    def deliver(self, session: Session, order: Iterable[int] | None = None) -> None:
        """Send pages (1-based numbers, repeats allowed) in `order`; each must succeed."""
        for number in order or range(1, len(session.calls) + 1):
            response = self.post(session.page(number))
            assert response.status_code == 200, (number, response.status_code, response.text)
            assert response.json() == {"action": session.action, "status": "success"}

    def send(
        self, action: str, people: Sequence[dict[str, Any]], order: Iterable[int] | None = None
    ) -> Session:
        session = self.session(action, people)
        self.deliver(session, order)
        return session

    def export(self, people: Sequence[dict[str, Any]], order: Iterable[int] | None = None):
        return self.send("members", people, order)

    def add(self, people: Sequence[dict[str, Any]]) -> Session:
        return self.send("add_members", people)

    def remove(self, people: Sequence[dict[str, Any]]) -> Session:
        return self.send("remove_members", people)
