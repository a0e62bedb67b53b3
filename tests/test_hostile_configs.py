"""Hostile segment files: each breaks only itself.

Every case is one file added to the example segments. Through the public interfaces (the DAG
folder parsed by `DagBag`, `validate` in its own process, `airflow dags reserialize`): every
example segment's DAG still loads, the file that builds the segment DAGs has no import error
(Airflow would mark all its DAGs stale), and the hostile file is named, with its field where
it has one, by the config-check file's import error and by `validate` (exit 1).
"""

from __future__ import annotations

import codecs
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import DAGS, ROOT, reserialize_dags

EXAMPLES = ROOT / "include" / "segments"
EXAMPLE_DAGS = {f"connector_segment_{p.stem}" for p in EXAMPLES.glob("*.yaml")}
BASE = yaml.safe_load((EXAMPLES / "churn_risk.yaml").read_text())


def config(segment_id: str, **changes) -> str:
    return yaml.safe_dump({**BASE, "id": segment_id, **changes}, sort_keys=False)


def text(body: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(body, encoding="utf-8")


def raw(body: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(body)


def symlink(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def fifo(path: Path) -> None:
    os.mkfifo(path)


def also_yml(path: Path) -> None:
    path.write_text(config(path.stem))
    path.with_suffix(".yml").write_text(config(path.stem, name="The other one"))


@dataclass(frozen=True)
class Hostile:
    name: str  # the file's stem, also the segment id it claims
    write: Callable[[Path], None]
    says: str  # in the error, after the file's path
    field: str | None = None  # the field named, if the file got as far as having fields


CASES = [
    Hostile("binary", raw(bytes(range(256)) * 4), "not UTF-8 text"),
    Hostile(
        "utf16",
        raw(codecs.BOM_UTF16_LE + config("utf16").encode("utf-16-le")),
        "saved as UTF-16",
    ),
    Hostile("utf16_no_bom", raw(config("utf16_no_bom").encode("utf-16-le")), "NUL bytes"),
    Hostile(
        "latin1",
        raw(config("latin1").replace("name: ", "name: Müller ").encode("latin-1")),
        "not UTF-8",
    ),
    Hostile(
        "cron_range", text(config("cron_range", schedule="61 25 * * *")), "out of range", "schedule"
    ),
    Hostile("cron_step0", text(config("cron_step0", schedule="*/0 * * * *")), "cron", "schedule"),
    Hostile("cron_zeros", text(config("cron_zeros", schedule="0 0 0 0 0")), "cron", "schedule"),
    Hostile("deep_flow", text("id: deep_flow\nx: " + "[" * 30_000 + "]" * 30_000), "nested deeper"),
    Hostile(
        "deep_block",
        text("id: deep_block\nx:\n" + "".join(f"{' ' * i}- \n" for i in range(200))),
        "nested deeper",
    ),
    Hostile("big", text(config("big", description="x" * (2 << 20))), "larger than 1024 KiB"),
    Hostile("dev_zero", symlink("/dev/zero"), "not a regular file"),
    Hostile("a_fifo", fifo, "not a regular file"),
    Hostile(
        "dup_key",
        text(
            config("dup_key").replace(
                "min_match_rate: 0.5", "min_match_rate: 0.9\n  min_match_rate: 0.0"
            )
        ),
        "appears twice",
        "guardrails.min_match_rate",
    ),
    Hostile("twice", also_yml, "defined twice (twice.yaml and twice.yml)", "id"),
    Hostile(
        "nul_escape",
        text(config("nul_escape").replace("name: ", 'name: "a\\0b"\nx_: ')),
        "NUL",
        "name",
    ),
    Hostile(
        "laughs",
        text("id: laughs\na: &a [x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n"),
        "aliases",
        "a",
    ),
    Hostile(
        "python_tag",
        text("id: python_tag\nname: !!python/object/apply:os.system [id]\n"),
        "invalid YAML",
    ),
    Hostile("two_docs", text(config("two_docs") + "---\n" + config("two_docs")), "single document"),
    Hostile("empty", text(""), "expected a mapping"),
    Hostile("long_tag", text(config("long_tag", tags=["t" * 101])), "at most 100", "tags.0"),
    Hostile("long_name", text(config("long_name", name="n" * 10_000)), "at most 200", "name"),
    Hostile(
        "nan_rate",
        text(config("nan_rate").replace("min_match_rate: 0.5", "min_match_rate: .nan")),
        "",
        "guardrails.min_match_rate",
    ),
    Hostile(
        "homoglyph_key",
        text(config("homoglyph_key").replace("name:", "n\u0430me:")),
        "unknown key",
        "n\u0430me",  # a Cyrillic a
    ),
    Hostile("other_id", text(config("not_the_file_name")), "must equal the file name", "id"),
    # `access`: FAB role -> read | act, a role Airflow can hold and that is a team's own
    Hostile(
        "access_write",
        text(config("access_write", access={"crm": "write"})),
        "Input should be 'read' or 'act'",
        "access.crm",
    ),
    Hostile(
        "access_long_role",
        text(config("access_long_role", access={"r" * 65: "read"})),
        "not a name Airflow can hold",
        "access",
    ),
    Hostile(
        "access_spaced_role",
        text(config("access_spaced_role", access={" crm": "act"})),
        "not a name Airflow can hold",
        "access",
    ),
    Hostile(
        "access_control_char",
        text(config("access_control_char", access={"crm\u0007": "act"})),
        "not a name Airflow can hold",
        "access",
    ),
    Hostile(
        "access_builtin_role",
        text(config("access_builtin_role", access={"viewer": "read"})),
        "built-in roles",
        "access",
    ),
    Hostile("access_list", text(config("access_list", access=["crm"])), "dictionary", "access"),
    Hostile(
        "bad_region",
        text(config("bad_region", default_region="tr'; DROP TABLE x;--")),
        "",
        "default_region",
    ),
]


def segments_with(tmp_path: Path, case: Hostile) -> Path:
    folder = tmp_path / "segments"
    folder.mkdir()
    for example in EXAMPLES.glob("*.yaml"):
        shutil.copy(example, folder)
    case.write(folder / f"{case.name}.yaml")
    return folder


def validate(folder: Path) -> subprocess.CompletedProcess:
    # Its own process: a crash (libyaml's segfault was exit 139) or a hang fails the test.
    return subprocess.run(
        [sys.executable, "-m", "include.cli", "validate", "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_hostile_file_breaks_only_itself(tmp_path, monkeypatch, case):
    from airflow.dag_processing.dagbag import DagBag

    folder = segments_with(tmp_path, case)
    hostile = folder / f"{case.name}.yaml"
    field = f"field '{case.field}'" if case.field else ""

    checked = validate(folder)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    error = next(line for line in checked.stderr.splitlines() if str(hostile) in line)
    assert case.says in checked.stderr and field in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr
    assert f"{len(EXAMPLE_DAGS)} valid" in checked.stdout

    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(folder))
    bag = DagBag(dag_folder=str(DAGS))
    assert set(bag.dag_ids) == EXAMPLE_DAGS | {"connector_segments_stale_check"}
    assert list(bag.import_errors) == [str(DAGS / "connector_segments_config_check.py")]
    reported = bag.import_errors[str(DAGS / "connector_segments_config_check.py")]
    assert error.removeprefix("ERROR  ") in reported


def test_all_hostile_files_at_once_leave_the_examples_schedulable(
    tmp_path, monkeypatch, airflow_db
):
    # What the DAG processor writes to the metadata DB, with every hostile file in the folder.
    import sqlalchemy as sa

    folder = tmp_path / "segments"
    folder.mkdir()
    for example in EXAMPLES.glob("*.yaml"):
        shutil.copy(example, folder)
    for case in CASES:
        case.write(folder / f"{case.name}.yaml")
    monkeypatch.setenv("CONNECTOR_SEGMENTS_DIR", str(folder))
    reserialize_dags()

    engine = sa.create_engine(f"sqlite:///{airflow_db / 'airflow.db'}")
    with engine.connect() as conn:
        dags = dict(
            conn.execute(
                sa.text(
                    "SELECT dag_id, is_stale OR has_import_errors FROM dag WHERE dag_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": sorted(EXAMPLE_DAGS)},
            ).all()
        )
        errors = dict(conn.execute(sa.text("SELECT filename, stacktrace FROM import_error")).all())
    engine.dispose()
    assert dags == dict.fromkeys(EXAMPLE_DAGS, False)
    assert errors and all(f.endswith("connector_segments_config_check.py") for f in errors), errors
    reported = next(iter(errors.values()))
    for case in CASES:
        assert f"{case.name}.yaml" in reported, case.name
