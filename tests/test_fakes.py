"""The fake vendor servers, exercised with plain `requests`: connector tests trust them."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes import (
    SESSION_INVALID,
    FakeAmplitude,
    FakeMixpanel,
    Fault,
    make_members,
    make_rows,
)

MP_AUTH = ("svc-user", "svc-secret")
AMP_AUTH = ("amp-key", "amp-secret")
TIMEOUT = 5


@pytest.fixture
def mixpanel() -> Iterator[FakeMixpanel]:
    with FakeMixpanel(project_id=7, page_size=3) as fake:
        fake.add_cohort(1, "PN_seven", make_members(7))
        fake.add_cohort(2, "six", make_members(6, seed=2), description="exact multiple")
        yield fake
    assert not fake.errors


@pytest.fixture
def amplitude() -> Iterator[FakeAmplitude]:
    with FakeAmplitude() as fake:
        fake.add_cohort("plain", "Plain", make_rows(6))
        fake.add_cohort("gz", "Gzipped", make_rows(6), gzip=True)
        fake.add_cohort("big", "Redirected", make_rows(6), gzip=True, mode="redirect")
        yield fake
    assert not fake.errors and not fake.storage.errors


def engage(
    fake: FakeMixpanel, cohort: int = 1, prefix: str = "/api/query", **form: Any
) -> requests.Response:
    data = {"filter_by_cohort": json.dumps({"id": cohort}), **form}
    return requests.post(
        f"{fake.base_url}{prefix}/engage",
        params={"project_id": 7},
        data=data,
        auth=MP_AUTH,
        timeout=TIMEOUT,
    )


# --- Mixpanel ------------------------------------------------------------------------------


def test_mixpanel_lists_cohorts_on_both_prefixes(mixpanel: FakeMixpanel) -> None:
    for prefix in ("/api/query", "/api/2.0"):
        response = requests.post(
            f"{mixpanel.base_url}{prefix}/cohorts/list",
            params={"project_id": 7},
            auth=MP_AUTH,
            timeout=TIMEOUT,
        )
        assert response.status_code == 200
        first, second = response.json()
        assert first == {
            "id": 1,
            "name": "PN_seven",
            "description": "",
            "count": 7,
            "is_visible": 1,
            "created": "2026-01-01 00:00:00",
            "project_id": 7,
        }
        assert second["description"] == "exact multiple"


@pytest.mark.parametrize(("cohort", "sizes"), [(1, [3, 3, 1]), (2, [3, 3, 0])])
def test_mixpanel_pages_through_a_session(
    mixpanel: FakeMixpanel, cohort: int, sizes: list[int]
) -> None:
    first = engage(mixpanel, cohort, output_properties='["$email", "$city"]', page=0).json()
    assert first["status"] == "ok" and first["page_size"] == 3 and first["total"] == sum(sizes)
    members = mixpanel.cohorts[cohort].members
    assert first["results"][0] == {
        "$distinct_id": members[0]["$distinct_id"],
        "$properties": {"$email": members[0]["$properties"]["$email"]},  # no "$city": absent
    }
    pages, seen = [len(first["results"])], first["results"]
    for page in range(1, len(sizes)):
        body = engage(mixpanel, cohort, page=page, session_id=first["session_id"]).json()
        assert body["page"] == page and body["session_id"] == first["session_id"]
        pages.append(len(body["results"]))
        seen += body["results"]
    assert pages == sizes
    assert [m["$distinct_id"] for m in seen] == [m["$distinct_id"] for m in members]
    assert seen[-1]["$properties"].keys() == members[-1]["$properties"].keys()  # all by default


def test_mixpanel_session_is_a_snapshot_and_can_expire(mixpanel: FakeMixpanel) -> None:
    session = engage(mixpanel, 1).json()["session_id"]
    mixpanel.add_cohort(1, "PN_seven", [])  # later changes do not reach an open session
    assert len(engage(mixpanel, 1, page=1, session_id=session).json()["results"]) == 3
    # The API prefix does not matter for sessions; the cohort does.
    assert engage(mixpanel, 2, page=1, session_id=session).json()["error"] == SESSION_INVALID
    mixpanel.expire_sessions()
    expired = engage(mixpanel, 1, prefix="/api/2.0", page=2, session_id=session)
    assert expired.status_code == 400
    assert expired.json() == {"error": SESSION_INVALID, "status": "error"}
    assert engage(mixpanel, 1, page=1).json() == {"error": SESSION_INVALID, "status": "error"}


def test_mixpanel_rejects_bad_project_cohort_and_credentials(mixpanel: FakeMixpanel) -> None:
    url = f"{mixpanel.base_url}/api/query/engage"
    form = {"filter_by_cohort": '{"id": 1}'}
    for params in ({}, {"project_id": 8}):
        bad = requests.post(url, params=params, data=form, auth=MP_AUTH, timeout=TIMEOUT)
        assert bad.status_code == 400 and bad.json()["status"] == "error"
    assert engage(mixpanel, 99).status_code == 400
    for auth in (None, ("svc-user", "wrong")):
        denied = requests.post(url, params={"project_id": 7}, data=form, auth=auth, timeout=TIMEOUT)
        assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
    recorded = mixpanel.requests[-1]
    assert recorded.status == 401 and recorded.headers["authorization"] == "Basic <redacted>"
    assert b"svc-secret" not in repr(mixpanel.requests).encode()


def test_mixpanel_can_lie_about_total_and_records_workspace(mixpanel: FakeMixpanel) -> None:
    mixpanel.lie_about_total = True
    response = requests.post(
        f"{mixpanel.base_url}/api/query/engage",
        params={"project_id": 7, "workspace_id": 55},
        data={"filter_by_cohort": '{"id": 1}', "include_all_users": "false"},
        auth=MP_AUTH,
        timeout=TIMEOUT,
    )
    assert response.json()["total"] != 7
    recorded = mixpanel.requests_to(FakeMixpanel.ENGAGE)[-1]
    assert recorded.query["workspace_id"] == ["55"]
    assert recorded.form["include_all_users"] == ["false"]


def test_member_generators_are_deterministic() -> None:
    assert make_members(4, seed=3) == make_members(4, seed=3) != make_members(4, seed=4)
    assert "$phone" not in make_members(1, with_phone=False)[0]["$properties"]
    rows = make_rows(5, with_email=False)
    assert rows == make_rows(5, with_email=False) and rows[4]["user_id"] is None
    assert "email" not in rows[0]


# --- Faults (shared machinery, exercised through the Mixpanel fake) -------------------------


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (0.5, "0.5"), (None, None)])
def test_fault_status_with_optional_retry_after(
    mixpanel: FakeMixpanel, retry_after: float | None, header: str | None
) -> None:
    mixpanel.fail_next("429", retry_after=retry_after)
    response = engage(mixpanel)
    assert response.status_code == 429 and response.headers.get("Retry-After") == header
    assert response.json()["status"] == "error"
    assert engage(mixpanel).status_code == 200


def test_fault_queue_is_fifo_and_scoped_by_path_and_after(mixpanel: FakeMixpanel) -> None:
    mixpanel.fail_next("500", path=FakeMixpanel.ENGAGE, after=2)
    mixpanel.faults.push(Fault("503", path="/api/query/engage", times=2))
    lister = f"{mixpanel.base_url}/api/query/cohorts/list?project_id=7"
    assert requests.post(lister, auth=MP_AUTH, timeout=TIMEOUT).status_code == 200
    statuses = [engage(mixpanel).status_code for _ in range(6)]
    assert statuses == [200, 200, 500, 503, 503, 200]
    assert not mixpanel.faults.pending
    engaged = mixpanel.requests_to(FakeMixpanel.ENGAGE)
    assert [r.fault for r in engaged] == [None, None, "500", "503", "503", None]
    assert [r.status for r in engaged] == statuses
    assert all(a.at <= b.at for a, b in itertools.pairwise(engaged))


def test_fault_slow_outlasts_client_timeout_without_breaking(mixpanel: FakeMixpanel) -> None:
    mixpanel.fail_next("slow", delay=0.3)
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        requests.post(
            f"{mixpanel.base_url}/api/query/cohorts/list?project_id=7", auth=MP_AUTH, timeout=0.1
        )
    assert time.monotonic() - started < 0.3
    time.sleep(0.3)  # the server answers into a closed socket
    assert engage(mixpanel).status_code == 200
    assert mixpanel.requests[0].fault == "slow" and mixpanel.requests[0].status == 200


def test_fault_drop_resets_the_connection(mixpanel: FakeMixpanel) -> None:
    mixpanel.fail_next("drop")
    with pytest.raises(requests.ConnectionError):
        engage(mixpanel)
    assert mixpanel.requests[0].status == 0
    assert engage(mixpanel).status_code == 200


@pytest.mark.parametrize("kind", ["truncated_json", "truncated"])
def test_fault_truncated_body_is_an_error_for_the_client(mixpanel: FakeMixpanel, kind: str) -> None:
    mixpanel.fail_next(kind, path=FakeMixpanel.ENGAGE)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        engage(mixpanel)
    assert engage(mixpanel).status_code == 200


def test_fault_kind_is_validated() -> None:
    with pytest.raises(ValueError):
        Fault("teapot")


# --- Amplitude -----------------------------------------------------------------------------


def amp_get(fake: FakeAmplitude, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{fake.base_url}{path}", params=params, auth=AMP_AUTH, timeout=TIMEOUT)


def ready_request(fake: FakeAmplitude, cohort: str, **params: Any) -> str:
    """Request a cohort and poll until done, checking the job states on the way."""
    requested = amp_get(fake, f"/api/5/cohorts/request/{cohort}", **params)
    assert requested.status_code == 202 and requested.json()["cohort_id"] == cohort
    request_id = requested.json()["request_id"]
    for expected in (202, 202, 200):
        polled = amp_get(fake, f"/api/5/cohorts/request-status/{request_id}")
        assert polled.status_code == expected
    assert polled.json()["async_status"] == "JOB COMPLETED"
    return request_id


def rows_of(data: bytes) -> list[dict[str, str]]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_amplitude_lists_cohorts_and_rejects_bad_credentials(amplitude: FakeAmplitude) -> None:
    listed = amp_get(amplitude, "/api/3/cohorts").json()["cohorts"]
    assert [c["id"] for c in listed] == ["plain", "gz", "big"]
    assert {"name", "size", "archived", "lastComputed"} <= listed[0].keys()
    denied = requests.get(f"{amplitude.base_url}/api/3/cohorts", auth=("amp-key", "x"), timeout=5)
    assert denied.status_code == 401 and "WWW-Authenticate" in denied.headers
    assert amp_get(amplitude, "/api/5/cohorts/request/nope").status_code == 404


def test_amplitude_plain_file_in_body_with_prop_keys(amplitude: FakeAmplitude) -> None:
    request_id = ready_request(amplitude, "plain", props=1, propKeys=["email,phone", "city"])
    response = amp_get(amplitude, f"/api/5/cohorts/request/{request_id}/file")
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/csv"
    rows = rows_of(response.content)
    assert list(rows[0]) == ["amplitude_id", "user_id", "email", "phone", "city"]
    assert rows[4]["user_id"] == "" and rows[0]["city"] == ""
    assert rows[0]["user_id"] == "00-0000000"  # leading zero kept as text


def test_amplitude_columns_without_props_all_props_and_gp_style(amplitude: FakeAmplitude) -> None:
    request_id = ready_request(amplitude, "plain", props=0, propKeys="email")
    file = amp_get(amplitude, f"/api/5/cohorts/request/{request_id}/file").content
    assert list(rows_of(file)[0]) == ["amplitude_id", "user_id"]
    amplitude.prop_column_style = "gp"
    request_id = ready_request(amplitude, "plain", props=1)
    file = amp_get(amplitude, f"/api/5/cohorts/request/{request_id}/file").content
    assert list(rows_of(file)[0]) == ["amplitude_id", "user_id", "gp:email", "gp:phone"]


def test_amplitude_file_needs_a_completed_job(amplitude: FakeAmplitude) -> None:
    request_id = amp_get(amplitude, "/api/5/cohorts/request/plain").json()["request_id"]
    assert amp_get(amplitude, f"/api/5/cohorts/request/{request_id}/file").status_code == 400
    amplitude.fail_next_jobs()
    failed = amp_get(amplitude, "/api/5/cohorts/request/plain").json()["request_id"]
    states = [
        amp_get(amplitude, f"/api/5/cohorts/request-status/{failed}").json()["async_status"]
        for _ in range(3)
    ]
    assert states == ["JOB INPROGRESS", "JOB INPROGRESS", "JOB FAILED"]
    assert amp_get(amplitude, f"/api/5/cohorts/request/{failed}/file").status_code == 400


def test_amplitude_gzip_file_in_body(amplitude: FakeAmplitude) -> None:
    request_id = ready_request(amplitude, "gz", props=1, propKeys="email")
    response = amp_get(amplitude, f"/api/5/cohorts/request/{request_id}/file")
    assert response.content[:2] == b"\x1f\x8b"
    assert "Content-Encoding" not in response.headers  # the file itself is gzip, not the transfer
    assert len(rows_of(response.content)) == 6


def test_amplitude_redirect_to_storage_never_gets_credentials(amplitude: FakeAmplitude) -> None:
    request_id = ready_request(amplitude, "big", props=1, propKeys="email")
    file_path = f"/api/5/cohorts/request/{request_id}/file"
    redirect = requests.get(
        f"{amplitude.base_url}{file_path}", auth=AMP_AUTH, allow_redirects=False, timeout=TIMEOUT
    )
    assert redirect.status_code == 302
    link = redirect.headers["Location"]
    assert link.startswith(amplitude.storage.base_url) and "X-Amz-Signature=" in link
    followed = amp_get(amplitude, file_path)  # requests drops Authorization on a new origin
    assert followed.status_code == 200 and len(rows_of(followed.content)) == 6
    assert "authorization" not in amplitude.storage.requests[-1].headers
    leaked = requests.get(link, auth=AMP_AUTH, timeout=TIMEOUT)
    assert leaked.status_code == 400 and b"<Code>InvalidArgument</Code>" in leaked.content
    assert amplitude.storage.requests[-1].headers["authorization"] == "Basic <redacted>"


def test_amplitude_expired_link_then_fresh_link(amplitude: FakeAmplitude) -> None:
    request_id = ready_request(amplitude, "big")
    amplitude.expire_next_links(1)
    file_url = f"{amplitude.base_url}/api/5/cohorts/request/{request_id}/file"
    expired = requests.get(file_url, auth=AMP_AUTH, timeout=TIMEOUT)
    assert expired.status_code == 403
    assert expired.content == (
        b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    )
    fresh = requests.get(file_url, auth=AMP_AUTH, timeout=TIMEOUT)
    assert fresh.status_code == 200 and fresh.url != expired.url


@pytest.mark.parametrize("on_storage", [False, True])
def test_amplitude_download_cut_mid_body(amplitude: FakeAmplitude, on_storage: bool) -> None:
    cohort = "big" if on_storage else "gz"
    request_id = ready_request(amplitude, cohort)
    server = amplitude.storage if on_storage else amplitude
    server.fail_next("truncated", path="" if on_storage else FakeAmplitude.FILE)
    file_url = f"{amplitude.base_url}/api/5/cohorts/request/{request_id}/file"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(file_url, auth=AMP_AUTH, timeout=TIMEOUT)
    assert requests.get(file_url, auth=AMP_AUTH, timeout=TIMEOUT).status_code == 200
