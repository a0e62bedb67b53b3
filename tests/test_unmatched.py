"""Why source users are not members: each unmatched source user's key and reason, kept for the
segment's last few refreshes; and what Approve would change, recorded on a held refresh.

Through `dag.test()` on the real DAG file; the unmatched users are read as the store serves them
to the page's unmatched.csv.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import cli_json, run_segment, write_csv, write_users
from tests.test_refresh_dag import SEGMENT, USERS, write_segment

pytestmark = pytest.mark.dagrun

# Two Netmera users share an email: a source user found only by it is ambiguous.
SHARED = "shared.inbox@example.com"
NETMERA = [*USERS, ("nm-50", "ext-50", SHARED, None, None, True)]
NETMERA += [("nm-51", "ext-51", SHARED, None, None, False)]
UNMATCHED = {
    "key-ambiguous-4417": ("", SHARED, "ambiguous"),
    "key-notfound-9023": ("ext-missing-1", "nobody.here@example.com", "not_found"),
    "key-invalid-5561": ("", "not an email address", "invalid_identifier"),
    "key-empty-7388": ("", "", "no_identifier"),
}


def write_source(ws: Path, matched: range, unmatched: dict[str, tuple[str, str, str]]) -> None:
    """Source users s<i> matched by ext-<i>, then the `unmatched` ones (key → ext, email)."""
    rows = [[f"s{i}", f"ext-{i}", ""] for i in matched]
    rows += [[key, ext, email] for key, (ext, email, _) in unmatched.items()]
    write_csv(ws / "audience.csv", ["uid", "ext", "email"], rows)


def unmatched_rows(run_id: str | None = None) -> list[tuple[str, str]]:
    """The unmatched users of the run, by default the one the current version came from (as
    the page's unmatched.csv serves them)."""
    from include.orchestration.connections import netmera_database

    store = netmera_database().store
    return list(store.unmatched(SEGMENT, run_id or store.unmatched_run(SEGMENT)))


def stored_runs(ws: Path) -> set[str]:
    """The runs whose unmatched users the store still holds."""
    with sqlite3.connect(ws / "netmera.db") as db:
        return {r for (r,) in db.execute("SELECT DISTINCT airflow_run_id FROM cs_unmatched")}


def last_run(capsys) -> dict:
    return cli_json(capsys, "details", SEGMENT)["runs"][0]


def test_each_unmatched_source_user_of_the_last_refresh_is_kept_with_its_reason(
    workspace, capsys, logs
):
    write_users(workspace / "netmera.db", NETMERA)
    write_segment(workspace)

    write_source(workspace, range(1, 11), UNMATCHED)
    assert run_segment(SEGMENT) == "success"
    first = last_run(capsys)
    expected = sorted((key, reason) for key, (_, _, reason) in UNMATCHED.items())
    assert unmatched_rows() == expected
    assert first["reasons"] == {
        "ambiguous": 1,
        "not_found": 1,
        "invalid_identifier": 1,
        "no_identifier": 1,
    }

    # The next refresh's replace them: only its own are served.
    write_source(workspace, range(1, 11), {"key-later-3310": ("ext-gone-2", "", "not_found")})
    assert run_segment(SEGMENT) == "success"
    second = last_run(capsys)
    assert unmatched_rows() == [("key-later-3310", "not_found")]

    # A refresh that matched everyone has none, whatever the refreshes before had.
    write_source(workspace, range(1, 11), {})
    assert run_segment(SEGMENT) == "success"
    assert unmatched_rows() == []

    write_source(workspace, range(1, 11), {"key-fourth-8802": ("", "", "no_identifier")})
    assert run_segment(SEGMENT) == "success"
    assert unmatched_rows() == [("key-fourth-8802", "no_identifier")]
    # Personal data: only the segment's last three refreshes' are kept (the third had none).
    assert stored_runs(workspace) == {second["airflow_run_id"], last_run(capsys)["airflow_run_id"]}

    # Task logs carry counts and reasons, never who.
    for key, (_, email, _) in UNMATCHED.items():
        assert key not in logs.text
        assert not email or email not in logs.text
    assert "key-later-3310" not in logs.text and "key-fourth-8802" not in logs.text


def test_a_retried_match_replaces_its_own_unmatched_users(workspace, capsys):
    from include.config.segments import find_segment
    from include.orchestration import refresh

    write_users(workspace / "netmera.db", NETMERA)
    write_segment(workspace)
    write_source(workspace, range(1, 6), UNMATCHED)
    config, run_id = find_segment(SEGMENT), "manual__retried"
    refresh.start(config, run_id, dry_run=False, approve=False)
    staged = refresh.extract(config, run_id)
    refresh.match(config, run_id, staged)
    refresh.match(config, run_id, staged)  # the task's retry, after its rows were stored
    assert len(unmatched_rows(run_id)) == len(UNMATCHED)


def test_a_held_refresh_records_what_approving_it_would_add_and_remove(workspace, capsys):
    write_users(workspace / "netmera.db", NETMERA)
    write_segment(workspace)  # max_shrink 0.5
    write_source(workspace, range(1, 11), {})
    assert run_segment(SEGMENT) == "success"

    # 10 -> 4 Netmera users (nm-1..3 and nm-20): shrinks 60 %, held.
    write_source(workspace, [*range(1, 4), 20], {"key-held-6120": ("", "", "no_identifier")})
    assert run_segment(SEGMENT) == "success"
    details = cli_json(capsys, "details", SEGMENT)
    assert (details["status"], details["current_version"]) == ("Held", 1)
    held = details["runs"][0]
    assert held["status"] == "held"
    assert (held["base_version"], held["added"], held["removed"]) == (1, 1, 7)
    assert held["version"] is None  # nothing published
    # The preview was rolled back. The held refresh's unmatched users are kept, named by its
    # run; the current version's (none) stay what the page serves by default.
    with sqlite3.connect(workspace / "netmera.db") as db:
        assert db.execute(
            "SELECT count(*) FROM cs_members WHERE entered_version > 1 OR left_version IS NOT NULL"
        ).fetchone() == (0,)  # no stay began or ended after version 1
    assert unmatched_rows(held["airflow_run_id"]) == [("key-held-6120", "no_identifier")]
    assert unmatched_rows() == []

    # Approving publishes exactly what the preview said.
    assert run_segment(SEGMENT, approve=True) == "success"
    approved = cli_json(capsys, "details", SEGMENT)["runs"][0]
    assert (approved["status"], approved["added"], approved["removed"]) == ("published", 1, 7)
