"""Send Message to those who entered (issue 23, item 4), through DAG runs and a real HTTP
server playing Netmera: `audience: entered` messages only the members who entered since the
version the same message was last sent to (every member the first time), so with
`send_on_refresh` each refresh's newcomers get the welcome once and nobody else does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import cli, cli_json, netmera_conn, run_segment, write_csv, write_users
from tests.fakes import FakeNetmera
from tests.test_refresh_dag import USERS

pytestmark = pytest.mark.dagrun

KEY = "netmera-rest-key-welcome"
SEGMENT = "welcome"
WELCOME = {"title": "Welcome", "text": "Glad you are here", "send_on_refresh": True}


@pytest.fixture
def netmera(workspace: Path, monkeypatch) -> FakeNetmera:
    write_users(workspace / "netmera.db", USERS)
    with FakeNetmera(api_key=KEY) as fake:
        monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(fake, KEY))
        yield fake
        assert fake.errors == []


def write_segment(ws: Path, campaign: dict) -> None:
    config = {
        "id": SEGMENT,
        "name": "Welcome",
        "source": {"type": "file", "path": str(ws / "welcome.csv")},
        "user_key": "uid",
        "identifiers": [{"field": "ext", "kind": "external_id"}],
        "guardrails": {"max_shrink": None, "max_growth": None},
        "campaign": campaign,
    }
    (ws / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))


def refresh(ws: Path, users: list[int], **conf) -> str:
    write_csv(ws / "welcome.csv", ["uid", "ext"], [[f"s{i}", f"ext-{i}"] for i in users])
    return run_segment(SEGMENT, **conf)


def newest_send(capsys) -> dict:
    return cli_json(capsys, "report", SEGMENT)[0]


def test_a_welcome_flow_messages_each_refreshs_newcomers_once(workspace, netmera, capsys):
    write_segment(workspace, {**WELCOME, "audience": "entered"})
    delivered: list[list[str]] = []

    def step(users: list[int]) -> None:
        before = len(netmera.delivered())
        assert refresh(workspace, users) == "success"
        delivered.append(sorted(netmera.delivered()[before:]))

    step([1, 2, 3, 4, 5])  # the first send: every member
    first = newest_send(capsys)
    assert (first["audience"], first["since_version"], first["recipients"]) == ("entered", None, 5)
    step([1, 2, 3, 6, 7])  # 6 and 7 entered; 4 and 5 left
    step([1, 2, 3, 6, 7])  # nobody entered: nothing sent, the run still succeeds
    step([1, 2, 3, 6, 7, 8])
    assert delivered == [
        [f"ext-{i}" for i in (1, 2, 3, 4, 5)],
        ["ext-6", "ext-7"],
        [],
        ["ext-8"],
    ]
    sends = cli_json(capsys, "report", SEGMENT)
    assert [(s["version"], s["since_version"], s["recipients"]) for s in sends] == [
        (4, 2, 1),
        (2, 1, 2),
        (1, None, 5),
    ]
    # Each member received the welcome exactly once, whichever refresh brought it in.
    assert sorted(netmera.delivered()) == sorted(f"ext-{i}" for i in range(1, 9))
    code, out, _ = cli(capsys, "report", SEGMENT)
    assert code == 0 and "to those who entered after v2" in out


def test_a_member_who_leaves_and_comes_back_has_entered_again(workspace, netmera, capsys):
    write_segment(workspace, {**WELCOME, "audience": "entered"})
    assert refresh(workspace, [1, 2]) == "success"
    assert refresh(workspace, [1]) == "success"  # 2 leaves: no one entered
    assert refresh(workspace, [1, 2]) == "success"  # 2 is back: a newcomer again
    assert netmera.delivered() == ["ext-1", "ext-2", "ext-2"]
    history = cli_json(capsys, "history", SEGMENT, "--user", "nm-2")
    assert [(e["version"], e["change"]) for e in history["events"]] == [
        (1, "entered"),
        (2, "left"),
        (3, "entered"),
    ]


def test_the_trigger_asks_for_newcomers_when_the_yaml_sends_to_all(workspace, netmera, capsys):
    campaign = {"title": "News", "text": "Something new"}
    write_segment(workspace, campaign)
    assert refresh(workspace, [1, 2, 3], send_message=True) == "success"
    assert refresh(workspace, [1, 2, 3, 4], send_message=True, audience="entered") == "success"
    assert netmera.delivered() == ["ext-1", "ext-2", "ext-3", "ext-4"]
    # The same message to the same version again is refused, whatever audience it asks.
    before = len(netmera.delivered())
    assert run_segment(SEGMENT, refresh=False, send_message=True) == "success"
    assert len(netmera.delivered()) == before
    # The default, all: a new message to the current version reaches every member.
    other = {"message_title": "Other", "message_text": "For all"}
    assert run_segment(SEGMENT, refresh=False, send_message=True, **other) == "success"
    assert sorted(netmera.delivered()[before:]) == ["ext-1", "ext-2", "ext-3", "ext-4"]
    assert newest_send(capsys)["audience"] == "all"


def test_an_unknown_audience_is_refused_naming_the_file_and_field(workspace, netmera, capsys):
    write_segment(workspace, {**WELCOME, "audience": "everyone"})
    code, _, err = cli(capsys, "validate")
    assert code == 1
    assert "welcome.yaml" in err and "campaign.audience" in err
