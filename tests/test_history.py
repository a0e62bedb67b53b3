"""History (issue 23, item 2): when a Netmera user entered and left a segment (`history ID
--user`, `GET segments/{id}/history`) and who each published run added and removed
(`GET segments/{id}/runs/{run_id}/changes.csv`), over refreshes made by real DAG runs and a
real `airflow api-server`."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import yaml

from tests.conftest import (
    cli,
    run_segment,
    segments_api,
    token_session,
    write_csv,
    write_users,
)
from tests.test_refresh_dag import USERS

pytestmark = pytest.mark.dagrun

SEGMENT = "journey"
# Each refresh's audience, by Netmera user number (nm-i is matched by its extId ext-i). Kept
# versions: 3 (set below), so after the fifth publish versions 1 and 2 are gone.
AUDIENCES = {
    1: [1, 2, 3, 4, 5, 6],
    2: [1, 2, 3, 4, 7],  # 5 and 6 leave, 7 enters
    3: [1, 2, 3, 5, 7],  # 4 leaves, 5 comes back
    4: [1, 2, 3, 5, 7, 8],
    5: [1, 2, 3, 5, 8],  # 7 leaves
}


def cli_data(*args: str) -> dict:
    """`python -m include.cli ARGS --json`, in process, as data (for module fixtures too)."""
    from include.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--json"]) == 0
    return json.loads(out.getvalue())


def write_audience(ws: Path, users: list[int]) -> None:
    write_csv(ws / "journey.csv", ["uid", "ext"], [[f"s{i}", f"ext-{i}"] for i in users])


@pytest.fixture(scope="module")
def journey(module_workspace: Path, module_env: pytest.MonkeyPatch) -> dict:
    """Versions 1-3 published, a held refresh and a dry run, then versions 4 and 5: the run
    ids by version (and "held", "dry_run"), and nm-5's history as the CLI printed it after
    version 3, before its first stay fell out of the kept versions."""
    module_env.setenv("CONNECTOR_SEGMENTS_KEEP_VERSIONS", "3")
    ws = module_workspace
    write_users(ws / "netmera.db", USERS)
    config = {
        "id": SEGMENT,
        "name": "Journey",
        "source": {"type": "file", "path": str(ws / "journey.csv")},
        "user_key": "uid",
        "identifiers": [{"field": "ext", "kind": "external_id"}],
        "guardrails": {"max_shrink": 0.5, "max_growth": None},
    }
    (ws / "segments" / f"{SEGMENT}.yaml").write_text(yaml.safe_dump(config))
    runs: dict = {}

    def refresh(key, users: list[int], **params) -> None:
        write_audience(ws, users)
        assert run_segment(SEGMENT, **params) == "success"
        runs[key] = cli_data("details", SEGMENT)["runs"][0]["airflow_run_id"]

    for version in (1, 2, 3):
        refresh(version, AUDIENCES[version])
    refresh("held", [1])  # 5 -> 1: shrinks 80 %, held
    refresh("dry_run", [1, 2], dry_run=True)
    earlier = cli_data("history", SEGMENT, "--user", "nm-5")
    for version in (4, 5):
        refresh(version, AUDIENCES[version])
    return {"runs": runs, "nm-5 after v3": earlier}


@pytest.fixture(scope="module")
def api(journey: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with segments_api(tmp_path_factory) as api:
        yield api


@pytest.fixture(scope="module")
def viewer(api: str) -> requests.Session:
    return token_session(api, "viewer")


def published_at(version: int) -> str:
    details = cli_data("details", SEGMENT, "--runs", "20")
    (run,) = [r for r in details["runs"] if r["status"] == "published" and r["version"] == version]
    return run["finished_at"]


def test_history_lists_each_entry_and_exit_with_its_version_and_time(journey):
    found = journey["nm-5 after v3"]
    assert (found["segment_id"], found["user_id"], found["member"]) == (SEGMENT, "nm-5", True)
    assert [(e["version"], e["change"]) for e in found["events"]] == [
        (1, "entered"),
        (2, "left"),
        (3, "entered"),
    ]
    assert found["events"][0]["matched_by"] == "external_id"
    now = cli_data("history", SEGMENT, "--user", "nm-7")
    assert [(e["version"], e["change"]) for e in now["events"]] == [(2, "entered"), (5, "left")]
    assert [e["at"] for e in now["events"]] == [published_at(2), published_at(5)]
    assert (now["member"], now["current_version"], now["oldest_kept_version"]) == (False, 5, 3)


def test_history_keeps_only_what_the_kept_versions_span(journey):
    # nm-5's first stay (1-2) and nm-6's (1-2) ended before version 3, the oldest kept.
    assert [e["version"] for e in cli_data("history", SEGMENT, "--user", "nm-5")["events"]] == [3]
    gone = cli_data("history", SEGMENT, "--user", "nm-6")
    assert (gone["member"], gone["events"]) == (False, [])


def test_history_in_words_and_its_errors(journey, capsys):
    code, out, _ = cli(capsys, "history", SEGMENT, "--user", "nm-7")
    assert code == 0
    assert "nm-7: not a member now (kept versions 3-5)" in out
    assert "v2" in out and "entered (matched by external_id)" in out and "left" in out
    code, out, _ = cli(capsys, "history", SEGMENT, "--user", "nm-99")
    assert (code, "never a member in the kept versions" in out) == (0, True)
    code, _, err = cli(capsys, "history", "no_such_segment", "--user", "nm-1")
    assert code == 1 and "'no_such_segment' has never run" in err


def test_the_api_answers_history_as_the_cli_does(api, viewer):
    answer = viewer.get(
        f"{api}/api/segments/{SEGMENT}/history", params={"user": "nm-7"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == cli_data("history", SEGMENT, "--user", "nm-7")
    assert answer.headers["x-content-type-options"] == "nosniff"
    missing = viewer.get(f"{api}/api/segments/{SEGMENT}/history", timeout=30)
    assert missing.status_code == 422
    unknown = viewer.get(f"{api}/api/segments/nope/history", params={"user": "x"}, timeout=30)
    assert unknown.status_code == 404
    anonymous = requests.get(f"{api}/api/segments/{SEGMENT}/history?user=nm-7", timeout=30)
    assert anonymous.status_code in (401, 403)


def changes(viewer: requests.Session, api: str, run_id: str) -> requests.Response:
    return viewer.get(
        f"{api}/api/segments/{SEGMENT}/runs/{quote(run_id, safe='')}/changes.csv", timeout=30
    )


def test_changes_csv_lists_who_each_kept_published_run_added_and_removed(api, viewer, journey):
    runs = journey["runs"]
    for version in (3, 4, 5):
        answer = changes(viewer, api, runs[version])
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/csv")
        assert (
            f'filename="{SEGMENT}-v{version}-changes.csv"' in answer.headers["content-disposition"]
        )
        rows = list(csv.reader(io.StringIO(answer.text)))
        before, after = set(AUDIENCES[version - 1]), set(AUDIENCES[version])
        expected = [[f"nm-{i}", "added"] for i in after - before]
        expected += [[f"nm-{i}", "removed"] for i in before - after]
        assert rows == [["user_id", "change"], *sorted(expected)]
        details = cli_data("details", SEGMENT, "--runs", "20")
        (run,) = [r for r in details["runs"] if r["airflow_run_id"] == runs[version]]
        assert (run["added"], run["removed"]) == (len(after - before), len(before - after))


def test_changes_csv_says_why_a_run_has_none(api, viewer, journey):
    runs = journey["runs"]
    for key, why in (
        (1, "published version 1, which is no longer kept (the newest 3 are)"),
        (2, "published version 2, which is no longer kept"),
        ("held", "published no version (it is held)"),
        ("dry_run", "published no version (it is dry_run)"),
    ):
        answer = changes(viewer, api, runs[key])
        assert answer.status_code == 404 and why in answer.json()["detail"], (key, answer.text)
    assert changes(viewer, api, "manual__nope").status_code == 404
    other = viewer.get(
        f"{api}/api/segments/nope/runs/{quote(runs[3], safe='')}/changes.csv", timeout=30
    )
    assert other.status_code == 404
