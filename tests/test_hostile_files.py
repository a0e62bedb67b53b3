"""Hostile source files, end to end through `dag.test()`: each fails its own run with an error
naming the segment and the field, never quotes the file's content (personal data), leaves the
published membership as it was and no staged file behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_json, run_segment, write_csv
from tests.test_refresh_dag import SEGMENT, published, snapshot, unchanged  # noqa: F401

pytestmark = pytest.mark.dagrun

# The first data row of the header-less file: what must appear nowhere.
FIRST_ROW = ["s-secret-key-991", "ext-7", "alice.private@example.com"]


def no_header(ws: Path) -> str:
    write_csv(ws / "noheader.csv", FIRST_ROW, [["s2", "ext-2", "bob@example.com"]])
    return "noheader.csv"


def bad_utf8_header(ws: Path) -> str:
    (ws / "latin1.csv").write_bytes("uid,ext,e-mail adresi ğ\ns1,ext-1,x\n".encode("cp1254"))
    return "latin1.csv"


def truncated_gzip(ws: Path) -> str:
    body = "uid,ext,email\n" + "".join(f"s{i},ext-{i % 20 + 1},\n" for i in range(200_000))
    data = gzip.compress(body.encode())
    (ws / "audience.csv.gz").write_bytes(data[: len(data) // 2])
    return "audience.csv.gz"


def csv_named_parquet(ws: Path) -> str:
    write_csv(ws / "audience.parquet", ["uid", "ext", "email"], [FIRST_ROW])
    return "audience.parquet"


def endless_zeros(ws: Path) -> str:
    (ws / "zeros.csv").symlink_to("/dev/zero")  # no first line, ever: never read whole
    return "zeros.csv"


CASES = [
    (no_header, "does the file start with a header row"),
    (bad_utf8_header, "is not UTF-8 text"),
    (truncated_gzip, "truncated or corrupt"),
    (csv_named_parquet, "is not a Parquet file"),
    (endless_zeros, "not a CSV"),
]


@pytest.mark.parametrize(("write", "says"), CASES, ids=[w.__name__ for w, _ in CASES])
def test_a_hostile_source_file_fails_its_run_naming_segment_and_field(
    workspace,
    published,  # noqa: F811 (the fixture imported above)
    capsys,
    logs,
    write,
    says,
):
    path = workspace / "segments" / f"{SEGMENT}.yaml"
    config = yaml.safe_load(path.read_text())
    config["source"]["path"] = str(workspace / write(workspace))
    path.write_text(yaml.safe_dump(config))

    assert run_segment(SEGMENT) == "failed"

    after = snapshot(capsys)
    unchanged(published, after)
    assert after["status"] == "Failed"
    error = after["runs"][0]["error"]
    assert f"segment {SEGMENT!r}: field" in error and says in error, error
    assert after["runs"][0]["failed_step"] == "extract"
    recorded = logs.text + str(cli_json(capsys, "details", SEGMENT))
    assert says in logs.text  # the log check below is not vacuous
    for value in FIRST_ROW:
        assert value not in recorded
    staged = workspace / "staging"
    assert not [p for p in staged.rglob("*") if p.is_file()], "staged files left behind"
