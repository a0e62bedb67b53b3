"""Mixpanel's cohort-sync call ("custom webhook" destination), validated before anything is stored.

A call is one page (up to 1000 members) of one session; all pages sharing `mixpanel_session_id`
and `action` make one export (`members`) or one diff (`add_members` / `remove_members`).
Error texts name locations and rules only, never the offending values: those are personal data.

Beyond Mixpanel's shape, the body must be something the segment store holds faithfully and
that means one thing: UTF-8 JSON, at most MAX_DEPTH levels deep, no key twice in an object, no
NUL character or lone surrogate in any string or key, no NaN/Infinity (nor a number too large
for a double), and page numbers of at most MAX_PAGES. Anything else is the caller's fault (400),
not a store failure (5xx, which Mixpanel would retry forever).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

ACTIONS = ("members", "add_members", "remove_members")
MAX_MEMBERS_PER_PAGE = 1000
# Pages of one session: a billion members, far inside a 32-bit INTEGER (PostgreSQL, SQLite).
MAX_PAGES = 1_000_000
# Objects and arrays inside each other; a real call needs 4 plus its members' own properties.
MAX_DEPTH = 32
USER_KEY = "mixpanel_distinct_id"

_NOT_BLANK = r"\S"
_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[\w$-]{1,64}")  # a key shown as is in a location; others are not
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")  # a session id shown as is in logs and notes


class Member(BaseModel):
    """One cohort member: the distinct id plus any exported property (all kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    mixpanel_distinct_id: StrictStr = Field(min_length=1, pattern=_NOT_BLANK)

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PageInfo(BaseModel):
    total_pages: StrictInt = Field(ge=1, le=MAX_PAGES)
    page_count: StrictInt = Field(ge=1, le=MAX_PAGES)

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

    @field_validator("mixpanel_session_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        # It is logged and named in run notes: a newline or an escape would forge lines there.
        if not value.isprintable():
            raise ValueError(
                "must contain printable characters only (no control, format or line-break "
                "characters)"
            )
        return value


class CohortSyncCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: Literal["members", "add_members", "remove_members"]
    parameters: Parameters

    @property
    def session_id(self) -> str:
        return self.parameters.mixpanel_session_id

    @property
    def session_label(self) -> str:
        """The session id for logs and run notes: as is if plain, else a digest of it (the
        note is rendered as Markdown; an odd id must not become a link or markup there)."""
        if _PLAIN_ID.fullmatch(self.session_id):
            return self.session_id
        return "sha256:" + hashlib.sha256(self.session_id.encode()).hexdigest()[:16]

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
        super().__init__(f"invalid cohort-sync call: {message}")
        self.action = action


def parse_call(body: bytes) -> CohortSyncCall:
    """Validate the whole body in one parse; raise InvalidCall with a value-free message."""
    document = _load(body)
    action = _declared_action(document)
    problem = _unstorable(document)
    if problem:
        raise InvalidCall(problem, action)
    try:
        return CohortSyncCall.model_validate(document)
    except ValidationError as exc:
        raise InvalidCall(_describe(exc), action) from None


# -- the JSON document --------------------------------------------------------------------------


class _DuplicateKeys(dict):
    """An object that names a key twice: refused, since parsers disagree on which one counts."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _DuplicateKeys(obj)


def _load(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidCall(f"body: not valid UTF-8 (byte {exc.start})", None) from None
    try:
        return json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InvalidCall(f"body: invalid JSON: {exc.msg} at {where}", None) from None
    except RecursionError:  # json's parser recurses per level, up to the interpreter's limit
        raise InvalidCall(f"body: JSON nested deeper than {MAX_DEPTH} levels", None) from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise InvalidCall("body: a number has too many digits", None) from None


def _declared_action(document: Any) -> str | None:
    if not isinstance(document, dict) or isinstance(document, _DuplicateKeys):
        return None
    action = document.get("action")
    return action if action in ACTIONS else None


_ALWAYS_STORABLE = frozenset({int, bool, type(None)})
_CONTAINERS = frozenset({dict, list, _DuplicateKeys})


def _unstorable(document: Any) -> str | None:
    """A value the store cannot hold faithfully (or that is ambiguous), as 'where: why'.

    Iterative, so a deep document cannot exhaust the stack here; scalars are checked inline
    (a page may hold a million of them) and their location is built only for the one refused."""
    if not isinstance(document, dict | list):
        problem = _scalar_problem(document)
        return f"body: {problem}" if problem else None
    pending: list[tuple[dict | list, tuple]] = [(document, ())]
    while pending:
        container, path = pending.pop()
        problem = _container_problem(container, len(path))
        if problem:
            return f"{_where(path)}: {problem}"
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            kind = type(value)  # exact types: json.loads makes no subclasses but ours
            if kind in _ALWAYS_STORABLE:
                continue
            if kind in _CONTAINERS:
                pending.append((value, (*path, key)))
            elif problem := _scalar_problem(value):
                return f"{_where((*path, key))}: {problem}"
    return None


def _container_problem(container: dict | list, depth: int) -> str | None:
    if depth >= MAX_DEPTH:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    if isinstance(container, _DuplicateKeys):
        return "an object names the same key twice"
    if isinstance(container, dict):
        for key in container:
            if problem := _text_problem(key):
                return f"a key {problem}"
    return None


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        # NaN, Infinity, or beyond a double's range (1e400): standard JSON has no such numbers.
        return "numbers must be finite (no NaN, Infinity or out-of-range values)"
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:  # PostgreSQL's text cannot hold it
        return "contains a NUL character"
    if not text.isascii() and _SURROGATE.search(text):  # an escape (\ud800) UTF-8 cannot encode
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _where(path: tuple) -> str:
    """A location such as `parameters.members.3.email`; an unusual key is not repeated."""
    parts = [p if isinstance(p, int) or _PLAIN_KEY.fullmatch(p) else "<key>" for p in path]
    return ".".join(str(p) for p in parts) or "body"


def _describe(exc: ValidationError, limit: int = 5) -> str:
    problems = []
    for err in exc.errors(include_input=False, include_url=False)[:limit]:
        problems.append(f"{_where(err['loc'])}: {err['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - limit
    if more > 0:
        problems.append(f"... and {more} more")
    return "; ".join(problems)
