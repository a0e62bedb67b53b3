"""Send Message with a holdout group through the page's JSON API, on a real `airflow
api-server`, over sends made by real DAG runs to a fake Netmera.

The segment's members include pairs sharing an extId and members without one. What must
hold: recipients + holdout + not_addressable = the version's members (in the report and in the
split the form shows first), `holdout.csv` lists exactly the members the documented draw holds
out (and no one of them was messaged), only for the segment's own sends, and a bad percent is a
422.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml

from tests.conftest import (
    cli_json,
    core_url,
    netmera_conn,
    run_segment,
    segments_api,
    token_session,
    write_csv,
    write_users,
)
from tests.fakes import FakeNetmera
from tests.holdout import documented_holdout

pytestmark = pytest.mark.dagrun

KEY = "netmera-rest-key-holdout"
PROMO = {"title": "Promo", "text": "Half price"}


def member_ext_id(i: int) -> str | None:
    """nm-1..30: an extId each; nm-31..40 and nm-41..50: ten extIds, two members each (both
    matched by email); nm-51..55: no extId."""
    if i <= 40:
        return f"ext-{i}"
    return f"ext-{i - 10}" if i <= 50 else None


MEMBERS = {f"nm-{i}": member_ext_id(i) for i in range(1, 56)}
USERS = [
    (f"nm-{i}", member_ext_id(i), f"u{i}@example.com" if i > 30 else None, None, None, True)
    for i in range(1, 56)
]


def segment_yaml(ws: Path, segment_id: str, rows: list[list[str]], campaign: dict) -> None:
    write_csv(ws / f"{segment_id}.csv", ["uid", "ext", "email"], rows)
    config = {
        "id": segment_id,
        "name": segment_id.capitalize(),
        "source": {"type": "file", "path": str(ws / f"{segment_id}.csv")},
        "user_key": "uid",
        "identifiers": [
            {"field": "ext", "kind": "external_id"},
            {"field": "email", "kind": "email"},
        ],
        "campaign": campaign,
    }
    (ws / "segments" / f"{segment_id}.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def netmera(module_workspace: Path, module_env: pytest.MonkeyPatch) -> Iterator[FakeNetmera]:
    """promo (55 members, 20 % held out by its YAML) and plain (10 members, no holdout), each
    sent its campaign once."""
    ws = module_workspace
    write_users(ws / "netmera.db", USERS)
    promo = [[f"s{i}", f"ext-{i}", ""] for i in range(1, 31)]
    promo += [[f"s{i}", "", f"u{i}@example.com"] for i in range(31, 56)]
    segment_yaml(ws, "promo", promo, {**PROMO, "holdout_percent": 20})
    segment_yaml(ws, "plain", [[f"s{i}", f"ext-{i}", ""] for i in range(1, 11)], PROMO)
    with FakeNetmera(api_key=KEY) as fake:
        module_env.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(fake, KEY))
        assert run_segment("promo", send_message=True) == "success"
        assert run_segment("plain", send_message=True) == "success"
        yield fake
        assert fake.errors == []


@pytest.fixture(scope="module")
def api(netmera: FakeNetmera, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with segments_api(tmp_path_factory) as api:
        yield api


@pytest.fixture(scope="module")
def viewer(api: str) -> requests.Session:
    return token_session(api, "viewer")


def expected_holdout(title: str = PROMO["title"], text: str = PROMO["text"], percent=20) -> set:
    from include.campaign.send import Message

    return documented_holdout("promo", 1, Message(title, text).fingerprint, MEMBERS, percent)


def report(session, api: str, segment_id: str) -> dict:
    answer = session.get(f"{api}/api/segments/{segment_id}/report", timeout=30)
    assert answer.status_code == 200, answer.text
    (sent,) = answer.json()
    return sent


def read_csv(session, url: str) -> list[list[str]]:
    answer = session.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    return list(csv.reader(io.StringIO(answer.text)))


def test_the_report_counts_the_holdout_and_no_held_out_member_was_messaged(
    api, viewer, netmera, capsys
):
    assert viewer.get(f"{api}/api/segments/promo/report", timeout=30).json() == cli_json(
        capsys, "report", "promo"
    )
    sent = report(viewer, api, "promo")
    held = expected_holdout()
    assert (sent["holdout"], sent["holdout_percent"], sent["not_addressable"]) == (len(held), 20, 5)
    # 10 drawn (floor(50 x 20 / 100)); the rest held out for sharing a drawn member's extId
    assert sent["holdout_shared"] == len(held) - 10 > 0
    assert sent["recipients"] + sent["holdout"] + sent["not_addressable"] == 55
    assert sent["recipients"] == sent["planned"] == 50 - len(held)
    assert (sent["title"], sent["text"], sent["sent_by"]) == ("Promo", "Half price", "dag_test")
    assert sent["notification_key"] in netmera.definitions
    messaged = netmera.delivered(sent["notification_key"])
    assert sorted(messaged) == sorted({MEMBERS[u] for u in MEMBERS.keys() - held} - {None})
    assert not {MEMBERS[u] for u in held} & set(messaged)


def test_holdout_csv_lists_the_held_out_members_with_the_key_encoded_or_not(api, viewer):
    send_key = report(viewer, api, "promo")["send_key"]
    assert "/" in send_key
    for path in (send_key, quote(send_key, safe="")):
        url = f"{api}/api/segments/promo/sends/{path}/holdout.csv"
        assert read_csv(viewer, url) == [["user_id"], *([u] for u in sorted(expected_holdout()))]
    plain = report(viewer, api, "plain")
    assert plain["holdout"] == 0
    url = f"{api}/api/segments/plain/sends/{plain['send_key']}/holdout.csv"
    assert read_csv(viewer, url) == [["user_id"]]


def test_holdout_csv_is_only_for_the_segments_own_sends(api, viewer):
    promo, plain = (report(viewer, api, s)["send_key"] for s in ("promo", "plain"))
    for segment_id, send_key in (
        ("promo", plain),  # another segment's send
        ("promo", promo + "x"),
        ("promo", "promo/v1"),
        ("nope", promo),
    ):
        url = f"{api}/api/segments/{segment_id}/sends/{send_key}/holdout.csv"
        answer = viewer.get(url, timeout=30)
        assert answer.status_code == 404, (segment_id, send_key)
        assert answer.json()["detail"] == (
            "unknown segment 'nope'"
            if segment_id == "nope"
            else f"segment 'promo' has no send {send_key!r}"  # the same for another's send
        )
    url = f"{api}/api/segments/promo/sends/{promo}/holdout.csv"
    assert requests.get(url, timeout=30).status_code == 401


def test_the_campaign_shows_the_split_the_send_makes(api, viewer):
    url = f"{api}/api/segments/promo/campaign"
    campaign = viewer.get(url, timeout=30).json()
    sent = report(viewer, api, "promo")
    assert campaign["holdout_percent"] == 20  # the YAML's, the form's default
    assert campaign["members"] == 55
    split = ("recipients", "holdout", "not_addressable")
    assert [campaign[k] for k in split] == [sent[k] for k in split]
    for percent, message in ((0, {}), (12.5, {}), (20, {"title": "Other", "text": "Msg"})):
        asked = viewer.get(url, params={"holdout_percent": percent, **message}, timeout=30).json()
        held = expected_holdout(**message, percent=percent) if percent else set()
        assert (asked["holdout"], asked["recipients"]) == (len(held), 50 - len(held))
        assert asked["members"] == asked["recipients"] + asked["holdout"] + 5 == 55
    for bad in (51, -1, "ten"):
        answer = viewer.get(url, params={"holdout_percent": bad}, timeout=30)
        assert answer.status_code == 422, bad


def test_send_refuses_a_bad_holdout_percent_and_a_message_it_already_sent(api):
    admin = token_session(api, "admin")
    runs = f"{core_url(api)}/api/v2/dags/connector_segment_promo/dagRuns"
    before = admin.get(runs, timeout=30).json()["total_entries"]
    url = f"{api}/api/segments/promo/send"
    for bad in (51, -1, "ten", True, "10"):
        answer = admin.post(url, json={"holdout_percent": bad}, timeout=30)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["body", "holdout_percent"]
    # The holdout is no part of the send's key: the same message to the same version, refused.
    again = admin.post(url, json={"holdout_percent": 5}, timeout=30)
    assert again.status_code == 409, again.text
    assert "already sent to version 1" in again.json()["detail"]
    assert admin.get(runs, timeout=30).json()["total_entries"] == before


def test_the_campaign_shows_a_failed_sends_recorded_split_when_confirming_would_resume_it(
    api, viewer, netmera, monkeypatch
):
    """A send Netmera refused (a wrong key) drew its holdout when it was recorded; sending the
    same message again resumes it with that holdout, so the form is shown that split and told
    so, whatever percent it asks."""
    monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(netmera, "wrong-key"))
    message = {"message_title": "Later", "message_text": "Resumed"}
    ran = run_segment("plain", refresh=False, send_message=True, holdout_percent=30, **message)
    assert ran == "failed"  # Netmera refused the key: a failed send, recorded
    sends = viewer.get(f"{api}/api/segments/plain/report", timeout=30).json()
    failed = next(s for s in sends if s["title"] == "Later")
    assert (failed["status"], failed["holdout"]) == ("failed", 3)  # 30 % of 10
    asked = viewer.get(
        f"{api}/api/segments/plain/campaign",
        params={"holdout_percent": 0, "title": "Later", "text": "Resumed"},
        timeout=30,
    ).json()
    assert asked["resumes"] == {"send_key": failed["send_key"], "holdout_percent": 30}
    assert (asked["holdout"], asked["recipients"], asked["members"]) == (3, 7, 10)
    # Another message is a new send: its own split, nothing resumed.
    other = viewer.get(
        f"{api}/api/segments/plain/campaign", params={"holdout_percent": 0}, timeout=30
    ).json()
    assert (other["resumes"], other["holdout"]) == (None, 0)
