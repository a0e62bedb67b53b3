"""Mixpanel's cohort-sync call ("custom webhook" destination), validated before anything is stored.

A call is one page (up to 1000 members) of one session; all pages sharing `mixpanel_session_id`
and `action` make one export (`members`) or one diff (`add_members` / `remove_members`).
Error texts name locations and rules only, never the offending values: those are personal data.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

ACTIONS = ("members", "add_members", "remove_members")
MAX_MEMBERS_PER_PAGE = 1000
USER_KEY = "mixpanel_distinct_id"

_NOT_BLANK = r"\S"


class Member(BaseModel):
    """One cohort member: the distinct id plus any exported property (all kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    mixpanel_distinct_id: StrictStr = Field(min_length=1, pattern=_NOT_BLANK)

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PageInfo(BaseModel):
    total_pages: StrictInt = Field(ge=1)
    page_count: StrictInt = Field(ge=1)

    @model_validator(mode="after")
    def _page_within_total(self) -> PageInfo:
        if self.page_count > self.total_pages:
            raise ValueError("page_count must be between 1 and total_pages")
        return self


class Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    mixpanel_session_id: StrictStr = Field(min_length=1, max_length=255, pattern=_NOT_BLANK)
    mixpanel_cohort_id: StrictStr | StrictInt | None = None
    page_info: PageInfo
    members: list[Member] = Field(max_length=MAX_MEMBERS_PER_PAGE)


class CohortSyncCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: Literal["members", "add_members", "remove_members"]
    parameters: Parameters

    @property
    def session_id(self) -> str:
        return self.parameters.mixpanel_session_id

    @property
    def page_count(self) -> int:
        return self.parameters.page_info.page_count

    @property
    def total_pages(self) -> int:
        return self.parameters.page_info.total_pages

    @property
    def cohort_id(self) -> str | None:
        cohort = self.parameters.mixpanel_cohort_id
        return None if cohort is None else str(cohort)[:100]


class InvalidCall(ValueError):
    """The body is not a valid cohort-sync call; `action` is echoed only if it was valid."""

    def __init__(self, message: str, action: str | None) -> None:
        super().__init__(message)
        self.action = action


def parse_call(body: bytes) -> CohortSyncCall:
    """Validate the whole body in one pass; raise InvalidCall with a value-free message."""
    try:
        return CohortSyncCall.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidCall(_describe(exc), _declared_action(body)) from None


def _describe(exc: ValidationError, limit: int = 5) -> str:
    problems = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - limit
    if more > 0:
        problems.append(f"... and {more} more")
    return "invalid cohort-sync call: " + "; ".join(problems)


def _declared_action(body: bytes) -> str | None:
    try:
        action = json.loads(body).get("action")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return action if action in ACTIONS else None
