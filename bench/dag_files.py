"""The DAG processor's work for 1 to 10,000 segments: each segment DAG file against Airflow's
`dagbag_import_timeout`.

    python -m bench.dag_files [--sizes 1,500,2000,10000]

For each size, N segment YAMLs are generated (`bench.dags.write_segments`) and:
- every DAG file (the shards `dags/connector_segments_<NN>.py` and the config check) is parsed
  alone in a fresh child process with Airflow imported first, as the processor parses it: the
  slowest one is the figure that must stay well inside the timeout;
- the same work in one process, all shards one after the other: what the earlier one-file
  layout had to do within one timeout (the baseline of the ratio);
- `airflow dag-processor --num-runs 1` on a migrated SQLite metadata DB: the processor's real
  work, parse, serialise and write, its wall time and its own slowest `last_parse_duration`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.dags import DAG_FILES, DAGS, write_segments
from bench.measure import measure

ROOT = Path(__file__).resolve().parent.parent
CONFIG_CHECK = DAGS / "connector_segments_config_check.py"


def airflow_env(home: Path, segments: Path, root: Path = ROOT) -> dict[str, str]:
    """A DAG processor's env over `segments`; `root`: the tree whose dags/ and include/ it runs
    (another commit's, checked out elsewhere, for bench.fleet's baseline)."""
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "AIRFLOW_HOME": str(home),
        # Named: a copied home's airflow.cfg would still point at the template's DB.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "CONNECTOR_SEGMENTS_DIR": str(segments),
    }


def migrated_home(home: Path) -> Path:
    """A new AIRFLOW_HOME with a migrated SQLite metadata DB (copy it for each pass)."""
    home.mkdir()
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=airflow_env(home, home / "segments"),
        check=True,
        capture_output=True,
    )
    return home


def timeout_seconds() -> float:
    from airflow.configuration import conf

    return conf.getfloat("core", "dagbag_import_timeout")


def per_file(env: dict[str, str]) -> dict[str, float]:
    """Each DAG file parsed alone, in its own child (Airflow imported before the clock)."""
    return {
        path.name: measure("dags.parse_file", env=env, path=str(path)).seconds
        for path in [*DAG_FILES, CONFIG_CHECK]
    }


@dataclass(frozen=True)
class ProcessorPass:
    wall: float  # seconds
    cpu: float  # CPU-seconds of the processor and the parsing processes it reaped
    slowest: float  # the slowest file's last_parse_duration, seconds
    dags: int  # segment DAGs in the metadata DB, not stale


def processor_run(env: dict[str, str], home: Path) -> ProcessorPass:
    """`airflow dag-processor --num-runs 1` in the tree `env` names (its PYTHONPATH, also the
    working directory: the tree's `include` is the one imported)."""
    import sqlalchemy as sa

    started = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dag-processor", "--num-runs", "1"],
            env=env,
            cwd=env["PYTHONPATH"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        limit = threading.Timer(3600, child.kill)
        limit.start()
        _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage, its children's in it
        limit.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            output.seek(0)
            raise RuntimeError(f"dag-processor failed:\n{output.read()[-4000:].decode()}")
    wall = time.perf_counter() - started
    engine = sa.create_engine(f"sqlite:///{home / 'airflow.db'}")
    with engine.connect() as conn:
        slowest, dags = conn.execute(
            sa.text(
                "SELECT max(last_parse_duration), count(*) FROM dag "
                "WHERE substr(dag_id, 1, 18) = 'connector_segment_' AND NOT is_stale"
            )
        ).one()
    engine.dispose()
    cpu = usage.ru_utime + usage.ru_stime
    return ProcessorPass(wall, cpu, float(slowest or 0), int(dags))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,500,2000,10000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    limit = timeout_seconds()
    work = Path(tempfile.mkdtemp(prefix="cs-bench-dag-files-"))
    try:
        template = migrated_home(work / "template-home")
        print(f"dagbag_import_timeout = {limit:g} s; {len(DAG_FILES)} shard files")
        header = (
            f"{'segments':>8s} {'slowest file':>13s} {'% timeout':>9s} {'config check':>12s} "
            f"{'one process':>11s} {'x slowest':>9s} {'processor':>9s} {'its slowest':>11s} "
            f"{'DAGs':>6s}"
        )
        print(header)
        for count in sizes:
            write_segments(work / "segments", count)
            home = work / f"home-{count}"
            shutil.copytree(template, home)
            env = airflow_env(home, work / "segments")
            files = per_file(env)
            shards = {name: s for name, s in files.items() if name != CONFIG_CHECK.name}
            slowest = max(files.values())
            together = measure("dags.parse", env=env).seconds
            processor = processor_run(env, home)
            print(
                f"{count:8d} {slowest:12.2f}s {100 * slowest / limit:8.1f}% "
                f"{files[CONFIG_CHECK.name]:11.2f}s {together:10.2f}s "
                f"{together / max(shards.values()):9.1f} {processor.wall:8.1f}s "
                f"{processor.slowest:10.2f}s {processor.dags:6d}",
                flush=True,
            )
            assert processor.dags == count, f"{processor.dags} DAGs written for {count} segments"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
