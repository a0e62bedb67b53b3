"""The fake Netmera REST API, exercised with plain `requests`: connector tests trust it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes import FakeNetmera, Fault, NetmeraFault, push_outcome

KEY = "nm-key"
HEADERS = {"X-netmera-api-key": KEY}
TIMEOUT = 5
MESSAGE = {"title": "Hi", "text": "Hello {name}", "platforms": ["IOS", "ANDROID"]}


@pytest.fixture
def netmera() -> Iterator[FakeNetmera]:
    with FakeNetmera(api_key=KEY) as fake:
        yield fake
    assert not fake.errors


def post(
    fake: FakeNetmera, operation: str, payload: Any, timeout: float = TIMEOUT, **kw: Any
) -> requests.Response:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {"Content-Type": "application/json", **HEADERS, **kw.pop("headers", {})}
    url = f"{fake.base_url}/rest/3.0/{operation}"
    return requests.post(url, data=data, headers=headers, timeout=timeout, **kw)


def define(fake: FakeNetmera, **message: Any) -> int:
    response = post(fake, "createNotificationDefinition", {"message": {**MESSAGE, **message}})
    assert response.status_code == 200
    return int(response.json()["notificationKey"])


def send(fake: FakeNetmera, key: int, ids: list[str], **kw: Any) -> requests.Response:
    payload = {
        "notificationKey": key,
        "message": {"params": {"name": "x"}},
        "target": {"extId": ids},
    }
    return post(fake, "sendNotification", payload, **kw)


def stats(fake: FakeNetmera, key: Any) -> requests.Response:
    return requests.get(
        f"{fake.base_url}/rest/3.0/getPushStats",
        params={"notificationKey": key},
        headers=HEADERS,
        timeout=TIMEOUT,
    )


def test_api_key_is_required_and_never_recorded(netmera: FakeNetmera) -> None:
    for headers in ({}, {"X-netmera-api-key": "wrong"}):
        response = requests.post(
            f"{netmera.base_url}/rest/3.0/tagUsers",
            json={"tag": "t", "extIds": ["a"]},
            headers=headers,
            timeout=TIMEOUT,
        )
        assert response.status_code == 403
        assert response.json() == {"error": "Invalid API key", "code": 2010}
    assert post(netmera, "tagUsers", {"tag": "t", "extIds": ["a"]}).status_code == 200
    assert netmera.tags == {"t": {"a"}}
    recorded = netmera.requests
    assert [r.status for r in recorded] == [403, 403, 200]
    assert recorded[1].headers["x-netmera-api-key"] == "<redacted>"
    assert all(KEY not in json.dumps(r.headers) for r in recorded)


def test_tag_and_untag_with_the_unique_id_limit(netmera: FakeNetmera) -> None:
    assert post(netmera, "tagUsers", {"tag": "vip", "extIds": ["a", "b", "a"]}).json() == {}
    assert post(netmera, "tagUsers", {"tag": "vip", "extIds": ["c"]}).status_code == 200
    assert post(netmera, "untagUsers", {"tag": "vip", "extIds": ["b"]}).status_code == 200
    assert netmera.tags == {"vip": {"a", "c"}}
    assert post(netmera, "untagUsers", {"tag": "vip", "extIds": ["a", "c"]}).status_code == 200
    assert netmera.tags == {}

    ids = [f"u{i}" for i in range(1000)]
    assert post(netmera, "tagUsers", {"tag": "big", "extIds": ids + ids[:5]}).status_code == 200
    too_many = post(netmera, "tagUsers", {"tag": "big2", "extIds": [*ids, "u1000"]})
    assert too_many.status_code == 400 and too_many.json()["code"] == 2020
    missing = post(netmera, "tagUsers", {"extIds": ["a"]})
    assert missing.status_code == 400 and missing.json()["code"] == 2020
    assert set(netmera.tags) == {"big"}


def test_bulk_notification_reaches_the_tag(netmera: FakeNetmera) -> None:
    post(netmera, "tagUsers", {"tag": "PN", "extIds": ["b", "a"]})
    response = post(netmera, "sendBulkNotification", {"message": MESSAGE, "target": {"tag": "PN"}})
    assert response.status_code == 200
    key = response.json()["notificationKey"]
    assert netmera.delivered(key) == ["a", "b"]
    assert netmera.definitions[key]["title"] == "Hi"
    bad = post(netmera, "sendBulkNotification", {"message": MESSAGE})
    assert bad.status_code == 400 and bad.json()["code"] == 2020


def test_definitions_then_send_to_listed_users(netmera: FakeNetmera) -> None:
    first = define(netmera)
    top_level = post(netmera, "createNotificationDefinition", {"title": "T", "text": "x"})
    second = top_level.json()["notificationKey"]
    assert second == first + 1
    assert netmera.definitions[second]["platforms"] == ["IOS", "ANDROID"]  # the default

    assert send(netmera, first, ["a", "b", "a"]).json() == {"notificationKey": first}
    assert send(netmera, first, ["a"]).status_code == 200  # a second send: a duplicate
    assert send(netmera, second, ["c"]).status_code == 200
    assert netmera.delivered(first) == ["a", "b", "a"]
    assert netmera.delivered() == ["a", "b", "a", "c"]
    assert netmera.deliveries_by_key == {first: ["a", "b", "a"], second: ["c"]}
    assert netmera.deliveries[0].params == {"name": "x"}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{not json", 2009),
        ({"notificationKey": 999, "target": {"extId": ["a"]}}, 2020),
        ({"target": {"extId": ["a"]}}, 2020),
        ({"notificationKey": "KEY", "target": {"extId": []}}, 2020),
        ({"notificationKey": "KEY", "target": {"extId": [f"u{i}" for i in range(1001)]}}, 2020),
    ],
)
def test_send_rejections_deliver_nothing(netmera: FakeNetmera, payload: Any, code: int) -> None:
    key = define(netmera)
    if isinstance(payload, dict) and payload.get("notificationKey") == "KEY":
        payload["notificationKey"] = key
    response = post(netmera, "sendNotification", payload)
    assert response.status_code == 400 and response.json()["code"] == code
    assert netmera.delivered() == []


def test_push_stats_are_deterministic(netmera: FakeNetmera) -> None:
    key = define(netmera)
    ids = [f"user-{i}" for i in range(200)]
    send(netmera, key, ids)
    body = stats(netmera, key).json()
    assert body == stats(netmera, key).json()
    assert body["notificationKey"] == key and body["status"] == "FINISHED"
    assert body["startDate"] < body["endDate"]
    by_platform = {s["platform"]: s for s in body["stats"]}
    assert set(by_platform) == {"IOS", "ANDROID"}
    assert sum(s["sent"] + s["failed"] for s in body["stats"]) == 200
    assert all(s["sent"] > 0 for s in body["stats"])
    assert 0 < sum(s["failed"] for s in body["stats"]) < 30
    assert 0 < sum(s["clicked"] for s in body["stats"]) < 100
    outcomes = [push_outcome(i) for i in ids]
    assert by_platform["IOS"]["failed"] == sum(p == "IOS" and f for p, f, _ in outcomes)

    ios_only = define(netmera, platforms=["IOS"])
    send(netmera, ios_only, ids[:10])
    assert [s["platform"] for s in stats(netmera, ios_only).json()["stats"]] == ["IOS"]
    for unknown in (12345, "abc"):
        response = stats(netmera, unknown)
        assert response.status_code == 400 and response.json()["code"] == 2020


def test_push_stats_sending_before_finished() -> None:
    with FakeNetmera(api_key=KEY, sending_polls=1, first_key=100) as fake:
        key = define(fake)
        assert key == 100
        send(fake, key, ["a", "b", "c", "d"])
        first, second = stats(fake, key).json(), stats(fake, key).json()
    assert first["status"] == "SENDING" and first["endDate"] is None
    assert sum(s["sent"] + s["failed"] for s in first["stats"]) == 2
    assert second["status"] == "FINISHED"
    assert sum(s["sent"] + s["failed"] for s in second["stats"]) == 4


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("invalid_key", 403, {"error": "Invalid API key", "code": 2010}),
        ("quota", 400, {"error": "Quota exceeded", "code": 5022}),
        ("ip", 403, {"error": "IP not allowed", "code": 2021}),
        ("500", 500, {"error": "Internal error", "code": 2001}),
        ("503", 503, {"error": "Internal error", "code": 2001}),
    ],
)
def test_error_faults_deliver_nothing(
    netmera: FakeNetmera, kind: str, status: int, body: dict[str, Any]
) -> None:
    key = define(netmera)
    netmera.fail_next(kind, path=FakeNetmera.SEND)
    response = send(netmera, key, ["a"])
    assert (response.status_code, response.json()) == (status, body)
    assert netmera.delivered() == []
    assert send(netmera, key, ["a"]).status_code == 200  # the fault is used up
    assert netmera.delivered() == ["a"]
    assert [r.fault for r in netmera.requests_to(FakeNetmera.SEND)] == [kind, None]


def test_429_with_retry_after_and_drop_deliver_nothing(netmera: FakeNetmera) -> None:
    key = define(netmera)
    netmera.fail_next("429", retry_after=2)
    response = send(netmera, key, ["a"])
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert response.json()["code"] == 429
    netmera.fail_next("drop")
    with pytest.raises(requests.ConnectionError):
        send(netmera, key, ["a"])
    assert netmera.delivered() == []


def test_slow_processes_once_then_answers_late(netmera: FakeNetmera) -> None:
    key = define(netmera)
    netmera.fail_next("slow", delay=0.3)
    assert send(netmera, key, ["a"]).status_code == 200  # a patient client: one delivery
    assert netmera.delivered() == ["a"]
    assert netmera.requests_to(FakeNetmera.SEND)[0].fault == "slow"

    netmera.fail_next("slow", delay=2)
    with pytest.raises(requests.Timeout):
        send(netmera, key, ["b"], timeout=0.2)
    assert netmera.delivered() == ["a", "b"]  # delivered although the client saw a timeout
    assert send(netmera, key, ["b"]).status_code == 200  # a blind retry double-sends
    assert netmera.delivered(key).count("b") == 2


def test_truncated_reply_still_delivers(netmera: FakeNetmera) -> None:
    key = define(netmera)
    netmera.fail_next("truncated", path=FakeNetmera.SEND)
    with pytest.raises(requests.RequestException):
        send(netmera, key, ["a"]).json()
    assert netmera.delivered() == ["a"]


def test_netmera_fault_kinds_need_netmera_fault() -> None:
    with pytest.raises(ValueError):
        Fault("quota")
    with pytest.raises(ValueError):
        NetmeraFault("bogus")
    with pytest.raises(ValueError):
        NetmeraFault("quota", times=0)
    assert NetmeraFault("quota", path=FakeNetmera.SEND).matches("/rest/3.0/sendNotification")


def test_unknown_operation_and_wrong_method(netmera: FakeNetmera) -> None:
    assert post(netmera, "nope", {}).status_code == 404
    response = requests.get(
        f"{netmera.base_url}/rest/3.0/sendNotification", headers=HEADERS, timeout=TIMEOUT
    )
    assert response.status_code == 405
