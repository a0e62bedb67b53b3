"""Mixpanel (pull) and Amplitude sources end to end against real HTTP test servers.

The fakes in tests/fakes play the vendors (reference/external-apis.md) with switchable faults;
segments run through `dag.test()` and results are read through the CLI.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from include.config.segments import SegmentConfig
from include.connectors import SourceError, read_source
from tests.conftest import cli, cli_json, run_segment, write_users
from tests.fakes import FakeAmplitude, FakeMixpanel, make_members, make_rows

pytestmark = pytest.mark.dagrun

SECRET = "svc-secret-Zq9"  # must never show up in logs or error texts


@pytest.fixture
def mixpanel():
    with FakeMixpanel(username="svc-user", secret=SECRET, project_id=77, page_size=3) as fake:
        yield fake
        assert fake.errors == []


@pytest.fixture
def amplitude():
    with FakeAmplitude(api_key="amp-key", secret_key=SECRET, polls_before_ready=2) as fake:
        yield fake
        assert fake.errors == []


def vendor_conn(monkeypatch, conn_id: str, fake, login: str, **extra) -> None:
    settings = {
        "timeout": 0.5,
        "backoff_base": 0.01,
        "backoff_max": 0.2,
        "max_attempts": 4,
        **extra,
    }
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "http",
                "host": fake.base_url,
                "login": login,
                "password": SECRET,
                "extra": settings,
            }
        ),
    )


def connect_mixpanel(monkeypatch, fake: FakeMixpanel, login: str = "svc-user", **extra) -> None:
    settings = {"project_id": 77, "queries_per_hour": 36_000, **extra}
    vendor_conn(monkeypatch, "mixpanel_default", fake, login, **settings)


def netmera_users_for(ids: list[str], emails: list[str]) -> list[tuple]:
    """Netmera knows a third of the people by external id, a third by email only; the last third
    are strangers (not_found)."""
    rows = []
    for i, (ext, email) in enumerate(zip(ids, emails, strict=True)):
        if i % 3 == 0:
            rows.append((f"nm-{i}", ext, None, None, None, True))
        elif i % 3 == 1:
            rows.append((f"nm-{i}", f"other-{i}", email.lower(), None, None, False))
    return rows


def write_segment(ws: Path, segment_id: str, source: dict, user_key: str, fields: dict) -> None:
    config = {
        "id": segment_id,
        "name": segment_id,
        "source": source,
        "user_key": user_key,
        "identifiers": [{"field": f, "kind": k} for f, k in fields.items()],
        "default_region": "TR",
        "guardrails": {"max_shrink": None},
    }
    (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))


def expected_members(n: int) -> list[str]:
    return sorted(f"nm-{i}" for i in range(n) if i % 3 != 2)


# -- Mixpanel ------------------------------------------------------------------------------------

MEMBERS = make_members(11)  # page_size 3 -> 4 pages, the last one short


def mixpanel_segment(ws: Path, mixpanel: FakeMixpanel) -> None:
    mixpanel.add_cohort(501, "PN_cart", MEMBERS)
    write_users(
        ws / "netmera.db",
        netmera_users_for(
            [m["$distinct_id"] for m in MEMBERS], [m["$properties"]["$email"] for m in MEMBERS]
        ),
    )
    write_segment(
        ws,
        "mp",
        {"type": "mixpanel", "cohort_id": 501},
        "$distinct_id",
        {"$distinct_id": "external_id", "$email": "email", "$phone": "msisdn"},
    )


def test_mixpanel_cohort_through_429_500_and_timeout_publishes_every_page(
    workspace, monkeypatch, capsys, logs, mixpanel
):
    mixpanel_segment(workspace, mixpanel)
    connect_mixpanel(monkeypatch, mixpanel, max_attempts=6)
    mixpanel.fail_next("429", path=FakeMixpanel.ENGAGE, retry_after=0.1)
    mixpanel.fail_next("500", path=FakeMixpanel.ENGAGE, after=1)
    mixpanel.fail_next("slow", path=FakeMixpanel.ENGAGE, after=2, delay=1.5)
    mixpanel.fail_next("drop", path=FakeMixpanel.ENGAGE)  # a connection reset
    mixpanel.fail_next("truncated_json", path=FakeMixpanel.ENGAGE)
    mixpanel.fail_next("429", path=FakeMixpanel.ENGAGE)  # no Retry-After: own backoff

    assert run_segment("mp") == "success"

    details = cli_json(capsys, "details", "mp")
    assert details["connector_users"] == 11
    assert details["netmera_users"] == len(expected_members(11))
    assert details["matched_by"] == {"external_id": 4, "email": 4, "msisdn": 0}
    assert details["reasons"]["not_found"] == 3
    _, members, _ = cli(capsys, "members", "mp")
    assert members.split() == expected_members(11)
    engage = mixpanel.requests_to(FakeMixpanel.ENGAGE)
    served = [r for r in engage if r.fault is None]  # a "slow" one answered too late
    assert [int(r.param("page")) for r in served] == [0, 1, 2, 3]
    assert {r.fault for r in engage} >= {"429", "500", "slow", "drop", "truncated_json"}
    assert not mixpanel.faults.pending  # every fault was served and survived
    # Pages after the first carry the session the first opened; properties come from the YAML.
    assert {r.param("session_id") for r in served[1:]} == {
        served[0].param("session_id") or mixpanel.session_ids[0]
    }
    assert json.loads(served[0].param("output_properties")) == ["$email", "$phone"]
    task_log = logs.text
    assert "Mixpanel page 3: 11 users so far" in task_log  # the task log is what we read
    assert "retry" in task_log
    assert SECRET not in task_log


def test_mixpanel_numeric_phones_match_exactly(workspace, monkeypatch, capsys, mixpanel):
    # A phone property stored as a JSON number (905321234567.0 from a float column upstream)
    # is the number's digits, not "905321234567.0" (which read as a 13-digit phone).
    phones = [905321234500 + i for i in range(4)]
    members = [
        {"$distinct_id": f"d{i}", "$properties": {"$phone": float(p) if i % 2 else p}}
        for i, p in enumerate(phones)
    ]
    mixpanel.add_cohort(502, "PN_phones", members)
    write_users(
        workspace / "netmera.db",
        [(f"nm-{i}", None, None, f"+{p}", None, True) for i, p in enumerate(phones)],
    )
    write_segment(
        workspace,
        "mp_phones",
        {"type": "mixpanel", "cohort_id": 502},
        "$distinct_id",
        {"$phone": "msisdn"},
    )
    connect_mixpanel(monkeypatch, mixpanel)

    assert run_segment("mp_phones") == "success"
    _, members_out, _ = cli(capsys, "members", "mp_phones")
    assert members_out.split() == [f"nm-{i}" for i in range(4)]


def _read(config, monkeypatch, fake, workdir):
    """`read_source` as the refresh calls it: the clients spend the budgets every worker
    shares (kept in the Netmera database)."""
    from include.orchestration.connections import get_connection, netmera_database

    return list(read_source(config, get_connection, workdir, budgets=netmera_database().budgets))


def test_mixpanel_requests_are_spaced_to_the_budget(workspace, monkeypatch, mixpanel):
    mixpanel_segment(workspace, mixpanel)
    connect_mixpanel(monkeypatch, mixpanel, queries_per_hour=7_200)  # one query every 0.5 s
    config = SegmentConfig.model_validate(
        yaml.safe_load((workspace / "segments" / "mp.yaml").read_text())
    )
    batches = _read(config, monkeypatch, mixpanel, workspace / "run")
    assert sum(b.num_rows for b in batches) == 11
    starts = [r.at for r in mixpanel.requests_to(FakeMixpanel.ENGAGE)]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.45, gaps  # the server saw them at least the budget's interval apart


def test_a_retry_resumes_from_staged_pages_and_restarts_when_the_session_expired(
    workspace, monkeypatch, mixpanel
):
    mixpanel_segment(workspace, mixpanel)
    connect_mixpanel(monkeypatch, mixpanel, max_attempts=2)
    config = SegmentConfig.model_validate(
        yaml.safe_load((workspace / "segments" / "mp.yaml").read_text())
    )
    workdir = workspace / "run"

    # First try: pages 0 and 1 land, then page 2 keeps failing.
    mixpanel.fail_next("500", path=FakeMixpanel.ENGAGE, after=2, times=2)
    with pytest.raises(SourceError, match="gave up"):
        _read(config, monkeypatch, mixpanel, workdir)
    # Second try resumes at page 2 with the same session: pages 0-1 are not asked again.
    mixpanel.clear_requests()
    rows = [r for b in _read(config, monkeypatch, mixpanel, workdir) for r in b.to_pylist()]
    assert sorted(r["$distinct_id"] for r in rows) == sorted(m["$distinct_id"] for m in MEMBERS)
    assert [int(r.param("page")) for r in mixpanel.requests_to(FakeMixpanel.ENGAGE)] == [2, 3]

    # A third read of a finished run asks nothing; an expired session restarts from page 0.
    mixpanel.clear_requests()
    assert sum(b.num_rows for b in _read(config, monkeypatch, mixpanel, workdir)) == 11
    assert mixpanel.requests_to(FakeMixpanel.ENGAGE) == []

    other = workspace / "run2"
    mixpanel.fail_next("500", path=FakeMixpanel.ENGAGE, after=2, times=2)
    with pytest.raises(SourceError):
        _read(config, monkeypatch, mixpanel, other)
    mixpanel.expire_sessions()
    mixpanel.clear_requests()
    rows = [r for b in _read(config, monkeypatch, mixpanel, other) for r in b.to_pylist()]
    assert sorted(r["$distinct_id"] for r in rows) == sorted(m["$distinct_id"] for m in MEMBERS)
    pages = [int(r.param("page")) for r in mixpanel.requests_to(FakeMixpanel.ENGAGE)]
    assert pages == [2, 0, 1, 2, 3]  # refused with the old session, then a clean restart


def test_the_mixpanel_client_yields_pages_and_names_an_expired_session(mixpanel):
    from include.clients.connection import ConnectionInfo
    from include.clients.mixpanel import EngageCursor, MixpanelClient, SessionExpired

    mixpanel.add_cohort(501, "PN_cart", MEMBERS)
    client = MixpanelClient(
        ConnectionInfo(
            conn_id="mixpanel_default",
            conn_type="http",
            host=mixpanel.base_url,
            login="svc-user",
            password=SECRET,
            extra={"project_id": 77, "queries_per_hour": 36_000},
        )
    )
    pages = list(client.engage_pages(501, ["$email"]))
    assert [(p.number, len(p.results), p.last) for p in pages] == [
        (0, 3, False),
        (1, 3, False),
        (2, 3, False),
        (3, 2, True),
    ]
    session = mixpanel.session_ids[0]
    assert [p.next for p in pages] == [EngageCursor(n, session) for n in (1, 2, 3, 4)]
    # Resuming from a cursor asks for that page only; a forgotten session is its own error.
    assert next(client.engage_pages(501, ["$email"], pages[1].next)).number == 2
    mixpanel.expire_sessions()
    with pytest.raises(SessionExpired):
        next(client.engage_pages(501, ["$email"], pages[1].next))


def test_a_source_that_keeps_failing_leaves_the_segment_failed_and_members_intact(
    workspace, monkeypatch, capsys, logs, mixpanel
):
    mixpanel_segment(workspace, mixpanel)
    connect_mixpanel(monkeypatch, mixpanel)
    assert run_segment("mp") == "success"
    _, before, _ = cli(capsys, "members", "mp")

    mixpanel.fail_next("503", path=FakeMixpanel.ENGAGE, after=1, times=1000)
    assert run_segment("mp") == "failed"
    details = cli_json(capsys, "details", "mp")
    assert details["status"] == "Failed"
    assert "extract" in details["status_reason"]
    assert "gave up" in details["runs"][0]["error"] and "503" in details["runs"][0]["error"]
    assert details["netmera_users"] == len(expected_members(11))
    _, after, _ = cli(capsys, "members", "mp")
    assert after == before
    assert SECRET not in logs.text + json.dumps(details)


def test_wrong_credentials_fail_clearly_without_echoing_them(
    workspace, monkeypatch, capsys, logs, mixpanel
):
    mixpanel_segment(workspace, mixpanel)
    connect_mixpanel(monkeypatch, mixpanel, "intruder")
    assert run_segment("mp") == "failed"
    error = cli_json(capsys, "details", "mp")["runs"][0]["error"]
    assert "401" in error
    assert SECRET not in error + logs.text


# -- Amplitude -----------------------------------------------------------------------------------

ROWS = make_rows(12)


@pytest.mark.parametrize(
    ("mode", "gzip", "style"),
    [
        ("body", False, "plain"),
        ("body", True, "gp"),
        ("redirect", True, "plain"),
        ("redirect", False, "gp"),
    ],
)
def test_amplitude_cohort_in_each_download_style_publishes_expected_users(
    workspace, monkeypatch, capsys, logs, amplitude, mode, gzip, style
):
    amplitude.prop_column_style = style
    amplitude.add_cohort("coh-1", "Churn risk", ROWS, gzip=gzip, mode=mode)
    write_users(
        workspace / "netmera.db",
        netmera_users_for(
            [r["user_id"] or f"anon-{i}" for i, r in enumerate(ROWS)], [r["email"] for r in ROWS]
        ),
    )
    write_segment(
        workspace,
        "amp",
        {"type": "amplitude", "cohort_id": "coh-1"},
        "amplitude_id",
        {"user_id": "external_id", "email": "email"},
    )
    vendor_conn(
        monkeypatch,
        "amplitude_default",
        amplitude,
        "amp-key",
        poll_interval=0.01,
        requests_per_hour=36_000,
    )
    amplitude.fail_next("429", path=FakeAmplitude.STATUS, retry_after=0.05)
    if mode == "redirect":
        amplitude.expire_next_links(1)  # the first pre-signed link has already expired

    assert run_segment("amp") == "success"

    details = cli_json(capsys, "details", "amp")
    assert details["connector_users"] == 12
    _, members, _ = cli(capsys, "members", "amp")
    # Rows without a user_id (every fifth) can still match by email when Netmera has it.
    expected = sorted(
        f"nm-{i}" for i in range(12) if (i % 3 == 0 and ROWS[i]["user_id"]) or i % 3 == 1
    )
    assert members.split() == expected
    requested = amplitude.requests_to(FakeAmplitude.REQUEST)[0]
    assert requested.param("props") == "1"
    assert set(requested.query["propKeys"]) == {"email"}
    if mode == "redirect":
        downloads = amplitude.storage.requests
        assert [r.status for r in downloads] == [403, 200]
        assert all("authorization" not in r.headers for r in downloads)
    assert SECRET not in logs.text


def test_amplitude_download_cut_short_is_retried(workspace, monkeypatch, capsys, amplitude):
    amplitude.add_cohort("coh-2", "Big", ROWS, gzip=True, mode="body")
    write_users(workspace / "netmera.db", [("nm-x", "00-0000000", None, None, None, True)])
    write_segment(
        workspace,
        "amp2",
        {"type": "amplitude", "cohort_id": "coh-2"},
        "amplitude_id",
        {"user_id": "external_id"},
    )
    vendor_conn(
        monkeypatch,
        "amplitude_default",
        amplitude,
        "amp-key",
        poll_interval=0.01,
        requests_per_hour=36_000,
    )
    amplitude.fail_next("truncated", path=FakeAmplitude.FILE)
    assert run_segment("amp2") == "success"
    assert cli_json(capsys, "details", "amp2")["connector_users"] == 12


# -- Discovery -----------------------------------------------------------------------------------


def test_discover_lists_cohorts_and_writes_skeletons_without_overwriting(
    workspace, monkeypatch, capsys, mixpanel
):
    mixpanel.add_cohort(1, "PN_cart abandoners", make_members(2))
    mixpanel.add_cohort(2, "Internal QA", make_members(1))
    connect_mixpanel(monkeypatch, mixpanel)
    existing = workspace / "segments" / "mixpanel_pn_cart_abandoners.yaml"

    listed = cli_json(capsys, "discover", "mixpanel")
    assert {c["id"] for c in listed} == {1, 2}

    code, out, _ = cli(capsys, "discover", "mixpanel", "--prefix", "PN_", "--write")
    assert code == 0 and "PN_cart abandoners" in out and "Internal QA" not in out
    assert existing.exists()
    code, _, _ = cli(capsys, "validate")
    assert code == 0  # the skeleton is a valid segment as written

    existing.write_text(existing.read_text() + "# edited by a person\n")
    cli(capsys, "discover", "mixpanel", "--prefix", "PN_", "--write")
    assert existing.read_text().endswith("# edited by a person\n")


def test_a_pre_signed_link_never_reaches_logs_or_the_run_record(
    workspace, monkeypatch, capsys, logs, amplitude
):
    # The storage host is down: every attempt fails with the pre-signed URL in the exception.
    amplitude.add_cohort("coh-3", "Down", ROWS, gzip=False, mode="redirect")
    write_users(workspace / "netmera.db", [("nm-x", "00-0000000", None, None, None, True)])
    write_segment(
        workspace,
        "amp3",
        {"type": "amplitude", "cohort_id": "coh-3"},
        "amplitude_id",
        {"user_id": "external_id"},
    )
    vendor_conn(
        monkeypatch,
        "amplitude_default",
        amplitude,
        "amp-key",
        poll_interval=0.01,
        requests_per_hour=36_000,
        link_attempts=1,
    )
    amplitude.storage.refuse_connections()

    assert run_segment("amp3") == "failed"
    details = cli_json(capsys, "details", "amp3")
    assert "gave up" in details["runs"][0]["error"]
    assert "Signature" not in logs.text + json.dumps(details)
    assert "X-Amz" not in logs.text + json.dumps(details)
