"""A fleet of segments: a refresh's CPU on a real cluster against the same refreshes in one
process, and the DAG processor's pass against the layout before issue 22.

    python -m bench.fleet                                  # 10,000 segments, 24 refreshed
    python -m bench.fleet --segments 2000 --refreshes 12  # a smaller fleet
    python -m bench.fleet --skip-cluster                   # the DAG processor's passes only

The segments: `--refreshes` (K) file segments of `--audience` source users each (each its own
draw from `--users` Netmera users loaded once into PostgreSQL, bench.data), and `--segments`
minus K fillers with a manual schedule: parsed, never run.

1. The floor: the K refreshes by `dag.test()`, one after another in one process (a migrated
   SQLite metadata DB, only the K segments in its folder, a copy of the users' database): that
   process's CPU-seconds (getrusage, self and children) from its first refresh to its last,
   divided by K. What it publishes is what each cluster run must publish.
2. The cluster (tests/cluster.py): PostgreSQL metadata, Redis broker, `--workers` Celery workers
   of `--slots` slots, scheduler, one dag-processor and the API server, over all the segments.
   Once the DAG processor has written every segment's DAG and no run is active, the machine
   idles for `--idle` seconds (the standing cost); then the K refreshes are triggered at once
   through the REST API, and the window lasts until every run has finished. CPU is the whole
   machine's busy time from /proc/stat (user, nice, system, irq, softirq: every process,
   PostgreSQL and Redis included, and whatever else runs on the machine), per refresh, gross
   and net of the standing cost (its rate times the window). Every run must succeed and its
   segment must list what the floor's does.
3. The DAG processor: `airflow dag-processor --num-runs 1` over the same segments, twice (the
   second pass with nothing changed), for this working tree and for `--baseline-ref` (its dags/
   and include/ from `git archive`), each on a migrated SQLite metadata DB: CPU-seconds of the
   processor and the parsing processes it reaped, and the slowest file's parse against
   `dagbag_import_timeout`.

Nothing here names a DAG's tasks: a refresh's task processes are the task instances of its run
that a worker ran (they record a hostname), whatever their ids.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from bench import data
from bench.dag_files import ProcessorPass, airflow_env, migrated_home, processor_run
from bench.dags import DAG_FILES, write_segments
from bench.measure import ROOT, measure
from bench.refresh import DEFAULT_PG, environment, file_segment, netmera_db
from include.config.segments import dag_id_of
from tests import cluster as harness

REDIS_URL = "redis://127.0.0.1:6379/12"  # a db of its own (tests/test_multiprocess.py: 13)
COMPARED = ("status", "connector_users", "netmera_users")  # of `list --json`, cluster vs floor
SERVERS = {"postgres": "postgresql", "redis-server": "redis"}  # by process name
TARGET_RATIO = 3.0  # a refresh's CPU on the cluster, at most this many times its floor's
TARGET_PROCESSOR = 0.25  # a pass's CPU, at most this share of the baseline's
TARGET_TIMEOUT_SHARE = 0.20  # the slowest file, at most this share of dagbag_import_timeout
TICK = os.sysconf("SC_CLK_TCK")


# -- CPU accounting -----------------------------------------------------------------------------


def machine_cpu() -> float:
    """Busy CPU-seconds of every CPU since boot: user, nice, system, irq and softirq."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
    return (user + nice + system + irq + softirq) / TICK


def own_cpu() -> float:
    """CPU-seconds of this process and of its children it has reaped."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def cpu_now(sessions: dict[int, str]) -> dict[str, float]:
    """CPU-seconds so far: "machine", and per part: `sessions` names a session leader's part
    (the cluster's daemons), PostgreSQL and Redis by process name. A process counts with the
    children it reaped, so a finished task process stays counted, in its parent's."""
    spent = {"machine": machine_cpu()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        part = sessions.get(int(fields[3])) or SERVERS.get(name)
        if part:  # utime, stime, cutime, cstime
            spent[part] = spent.get(part, 0.0) + sum(map(int, fields[11:15])) / TICK
    return spent


@dataclass(frozen=True)
class Window:
    seconds: float
    cpu: dict[str, float]  # CPU-seconds spent in the window: "machine" and by part

    @classmethod
    def timed(cls, sessions: dict[int, str], during: Callable[[], Any]) -> tuple[Window, Any]:
        """The window of `during()`, and what it returned."""
        started, before = time.monotonic(), cpu_now(sessions)
        result = during()
        after = cpu_now(sessions)
        spent = {part: after.get(part, 0.0) - before.get(part, 0.0) for part in after}
        return cls(time.monotonic() - started, spent), result

    @property
    def cores(self) -> float:
        return self.cpu["machine"] / self.seconds


# -- the segments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    segments: Path  # every segment's YAML
    refreshed: list[dict[str, Any]]  # the K refreshed segments' configs
    audience: int

    @property
    def ids(self) -> list[str]:
        return [config["id"] for config in self.refreshed]


def write_fleet(args: argparse.Namespace, folder: Path, audiences: Path | None) -> Fleet:
    """The fillers (manual schedule) and the K file segments, each with its own audience in
    `audiences` (written once and kept; None: not written, for the DAG processor alone)."""
    write_segments(folder, args.segments - args.refreshes, schedule=None)
    if audiences is not None:
        audiences.mkdir(parents=True, exist_ok=True)
    refreshed = []
    for k in range(args.refreshes):
        path = Path(f"audience_{args.audience}_{k}.parquet")
        if audiences is not None:
            path = data.write_audience(audiences / path, args.users, args.audience, seed=100 + k)
        config = file_segment(path, id=f"fleet_{k:03d}", name=f"Fleet {k}", schedule=None)
        (folder / f"{config['id']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        refreshed.append(config)
    return Fleet(folder, refreshed, args.audience)


def users_database(admin_url: str, users: int, audience: int) -> str:
    """The database holding `users` Netmera users and the store's empty tables, loaded once
    (bench.database.load_users) and copied for each run."""
    from bench.database import load_users
    from include.store import migrate

    parquet, _ = data.write(ROOT / ".local" / "bench" / f"fleet-{users}", users, audience)
    name = f"cs_bench_fleet_{users}"
    engine = sa.create_engine(load_users(admin_url, name, parquet))
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return name


@contextlib.contextmanager
def run_databases(admin_url: str, template: str) -> Iterator[dict[str, sa.URL]]:
    """This run's databases, dropped afterwards: `meta` (the cluster's Airflow metadata, empty),
    `floor` and `cluster` (netmera_db of each: copies of `template`)."""
    tag = uuid.uuid4().hex[:8]
    names = {part: f"cs_fleet_{tag}_{part}" for part in ("meta", "floor", "cluster")}
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for part, name in names.items():
                copy = "" if part == "meta" else f' TEMPLATE "{template}" STRATEGY FILE_COPY'
                for attempt in range(5):  # autovacuum may be visiting the template
                    try:
                        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
                        break
                    except sa.exc.OperationalError:
                        if attempt == 4:
                            raise
                        time.sleep(2)
        url = sa.make_url(admin_url)
        yield {part: url.set(database=name) for part, name in names.items()}
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def listed(env: dict[str, str]) -> dict[str, dict]:
    """`list --json` by segment id, with `env`'s segments and store."""
    done = subprocess.run(
        [sys.executable, "-m", "include.cli", "list", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {row["id"]: row for row in json.loads(done.stdout)}


# -- 1. the floor -------------------------------------------------------------------------------


def floor_refreshes(segment_ids: list[str]) -> dict[str, Any]:
    """In a child (bench.measure): each segment's DAG by `dag.test()`, one after another; the
    CPU-seconds of this process (and of its children) and of the machine from the first to the
    last, and each run's state."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags = {segment_id: bag.get_dag(dag_id_of(segment_id)) for segment_id in segment_ids}
    missing = sorted(segment_id for segment_id, dag in dags.items() if dag is None)
    assert not missing, f"no DAG for {missing}: {bag.import_errors}"
    started, cpu, machine = time.perf_counter(), own_cpu(), machine_cpu()
    states = {segment_id: str(dag.test().state) for segment_id, dag in dags.items()}
    return {
        "cpu": own_cpu() - cpu,
        "machine": machine_cpu() - machine,
        "wall": time.perf_counter() - started,
        "states": states,
    }


@dataclass(frozen=True)
class Floor:
    cpu: float
    machine: float
    wall: float
    states: dict[str, str]
    rows: dict[str, dict]


def run_floor(work: Path, fleet: Fleet, url: sa.URL) -> Floor:
    work.mkdir()
    env = environment(work, netmera_db(url), fleet.refreshed)
    result = measure("fleet.floor", env=env, segment_ids=fleet.ids).result
    rows = listed(env)
    return Floor(result["cpu"], result["machine"], result["wall"], result["states"], rows)


# -- 2. the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refreshes:
    booted: float  # seconds from launch to the API server's answer
    parsed: float  # seconds from launch to every segment's DAG written
    idle: Window
    window: Window
    states: dict[str, str]  # segment id -> its run's state
    processes: int  # task instances a worker ran, all K runs
    task_seconds: float  # their durations
    rows: dict[str, dict]  # `list --json` of the K segments
    others: int  # runs of other DAGs that started during the two windows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _segment_dags(meta: sa.Engine) -> int:
    with meta.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM dag "
                "WHERE substr(dag_id, 1, 18) = 'connector_segment_' AND NOT is_stale"
            )
        ).scalar_one()


def _runs(airflow: harness.Airflow, **params: Any) -> dict:
    return harness.rest(airflow.admin, "GET", f"{airflow.api}/api/v2/dags/~/dagRuns", params=params)


def _wait_quiet(airflow: harness.Airflow) -> None:
    """Until no run is queued or running at two looks 5 s apart (the stale check's first run,
    scheduled as soon as it is parsed, has finished)."""
    quiet = []

    def settled() -> bool:
        quiet.append(_runs(airflow, state=["queued", "running"], limit=1)["total_entries"] == 0)
        return quiet[-2:] == [True, True]

    airflow.cluster.wait_for("no run active", settled, 600, every=5)


def _ran(airflow: harness.Airflow, dag_id: str, run_id: str) -> list[dict]:
    """The run's task instances that a worker ran (a process: it recorded its hostname); not
    those the scheduler skipped or never started."""
    listing = harness.rest(
        airflow.admin,
        "GET",
        f"{airflow.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
        params={"limit": 100},
    )
    return [ti for ti in listing["task_instances"] if ti.get("hostname")]


def run_cluster(args: argparse.Namespace, ws: Path, fleet: Fleet, urls: dict) -> Refreshes:
    """Boot the cluster over `ws/segments`, idle, refresh the K segments, stop it."""
    import redis

    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    for name in ("airflow-home", "logs"):
        (ws / name).mkdir()
    pg = {"meta": urls["meta"], "netmera": urls["cluster"]}
    env = harness.airflow_env(ws / "airflow-home", ws, pg, _free_port(), REDIS_URL)
    env.update(
        {
            "AIRFLOW__CORE__PARALLELISM": str(max(8, args.workers * args.slots)),
            # Parsed once (its first pass): a re-parse is priced by the processor's second
            # pass below, and would land in one window and not the other.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "86400",
        }
    )
    cluster = harness.Cluster(env, ws / "logs")
    meta = sa.create_engine(urls["meta"])
    try:
        started = time.monotonic()
        airflow = harness.launch(cluster, args.workers, args.slots)
        booted = time.monotonic() - started
        cluster.wait_for(
            f"the {args.segments} segment DAGs written",
            lambda: _segment_dags(meta) == args.segments,
            timeout=1800 + args.segments * 0.5,
            every=2,
        )
        parsed = time.monotonic() - started
        _wait_quiet(airflow)
        quiet_since = _runs(airflow, limit=1)["total_entries"]
        sessions = {
            p.popen.pid: "workers" if p.name.startswith("worker") else p.name
            for p in cluster.processes
        }
        idle, _ = Window.timed(sessions, lambda: time.sleep(args.idle))

        def refresh() -> tuple[dict[str, tuple[str, str]], dict[str, dict]]:
            runs = {
                segment_id: (dag_id_of(segment_id), airflow.trigger(dag_id_of(segment_id)))
                for segment_id in fleet.ids
            }
            return runs, airflow.wait_runs(runs, timeout=900 + 120 * args.refreshes, every=1)

        window, (runs, finished) = Window.timed(sessions, refresh)
        ran = [ti for dag_id, run_id in runs.values() for ti in _ran(airflow, dag_id, run_id)]
        others = _runs(airflow, limit=1)["total_entries"] - quiet_since - len(runs)
        rows = airflow.cli_list()
    finally:
        cluster.stop()
        for left in cluster.leftovers():
            print(f"left running: {left}", file=sys.stderr)
        meta.dispose()
        broker.flushdb()  # no queued work left for a later run
        broker.close()
    return Refreshes(
        booted=booted,
        parsed=parsed,
        idle=idle,
        window=window,
        states={segment_id: run["state"] for segment_id, run in finished.items()},
        processes=len(ran),
        task_seconds=sum(ti["duration"] or 0.0 for ti in ran),
        rows={segment_id: rows.get(segment_id, {}) for segment_id in fleet.ids},
        others=others,
    )


def floor_wrong(fleet: Fleet, floor: Floor) -> dict[str, str]:
    """The floor's segments that are not exact, and why: a run that did not succeed, or a
    segment not Ready with the audience's Connector Users."""
    wrong = {}
    for segment_id in fleet.ids:
        row = {field: floor.rows.get(segment_id, {}).get(field) for field in COMPARED}
        if floor.states[segment_id] != "success":
            wrong[segment_id] = f"floor run {floor.states[segment_id]}"
        elif row["status"] != "Ready" or row["connector_users"] != fleet.audience:
            wrong[segment_id] = f"floor lists {row}, not Ready with {fleet.audience:,}"
    return wrong


def cluster_wrong(fleet: Fleet, floor: Floor, cluster: Refreshes) -> dict[str, str]:
    """The cluster's segments that are not exact, and why: a run that did not succeed, or a
    segment listed otherwise than the floor's (status, Connector and Netmera Users)."""
    wrong = {}
    for segment_id in fleet.ids:
        ours = {field: cluster.rows.get(segment_id, {}).get(field) for field in COMPARED}
        floors = {field: floor.rows.get(segment_id, {}).get(field) for field in COMPARED}
        if cluster.states[segment_id] != "success":
            wrong[segment_id] = f"cluster run {cluster.states[segment_id]}"
        elif ours != floors:
            wrong[segment_id] = f"cluster lists {ours}, the floor {floors}"
    return wrong


# -- 3. the DAG processor -----------------------------------------------------------------------


# Airflow's own floor: a shard file that builds, for each segment file of its shard, the least
# DAG this project could have (one task, no Params, the names, tags and docs every DAG here
# carries) without reading the file. Any layout with one DAG per segment costs at least this.
FLOOR_SHARD = """\
# A generated DAG file (bench.fleet's floor): one single-task DAG per segment file, unread.
import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task

SHARD, SHARDS = {shard}, {shards}
for path in sorted(Path(os.environ["CONNECTOR_SEGMENTS_DIR"]).glob("*.yaml"))[SHARD::SHARDS]:
    @dag(
        dag_id="connector_segment_" + path.stem,
        dag_display_name=path.stem,
        description="floor",
        doc_md="### " + path.stem,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["connector-segment"],
    )
    def segment():
        @task
        def refresh() -> None:
            pass

        refresh()

    globals()[path.stem] = segment()
"""


def floor_tree(folder: Path, shards: int) -> Path:
    """A tree whose `dags/` holds `shards` FLOOR_SHARD files."""
    dags = folder / "dags"
    dags.mkdir(parents=True)
    for shard in range(shards):
        text = FLOOR_SHARD.format(shard=shard, shards=shards)
        (dags / f"connector_segments_{shard:02d}.py").write_text(text)
    return folder


def run_processor(ref: str, work: Path, segments: Path) -> dict[tuple[str, int], ProcessorPass]:
    """Two passes each for `ref`'s tree, this one and Airflow's floor, alternating, over
    `segments`: by (tree, pass number)."""
    baseline = work / "baseline"
    baseline.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "dags", "include"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
    template = migrated_home(work / "template-home")
    floor = floor_tree(work / "floor", len(DAG_FILES))
    trees = {"baseline": baseline, "current": ROOT, "floor": floor}
    homes = {name: shutil.copytree(template, work / f"home-{name}") for name in trees}
    return {
        (name, number): processor_run(airflow_env(homes[name], segments, root), homes[name])
        for number in (1, 2)
        for name, root in trees.items()
    }


def import_timeout() -> float:
    """`dagbag_import_timeout` as the DAG processor reads it (a child: Airflow's config)."""
    option = ["core", "dagbag_import_timeout"]
    with tempfile.TemporaryDirectory(prefix="cs-bench-fleet-cfg-") as home:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "config", "get-value", *option],
            env={**os.environ, "AIRFLOW_HOME": home},
            capture_output=True,
            text=True,
            check=True,
        )
    return float(done.stdout.strip().splitlines()[-1])


# -- the report ---------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_refreshes(
    args: argparse.Namespace, floor: Floor, cluster: Refreshes, wrong: dict[str, dict[str, str]]
) -> None:
    """The refreshes' table; `wrong`: by side ("floor", "cluster"), the segments not exact."""
    k, window, idle = args.refreshes, cluster.window, cluster.idle
    per = floor.cpu / k
    own = sorted((part for part in window.cpu if part != "machine"), key=lambda p: -window.cpu[p])

    def row(label: str, cpu: float, tail: str = "") -> None:
        print(f"{label:38}{cpu / k:8.2f}{cpu / k / per:9.2f}{tail}")

    def exact(side: str) -> str:
        return f"{k - len(wrong[side])}/{k}"

    def cores(spent: dict[str, float], seconds: float) -> str:
        other = spent["machine"] - sum(spent.get(part, 0.0) for part in own)
        shares = [f"{part} {spent.get(part, 0.0) / seconds:.2f}" for part in own]
        return ", ".join([*shares, f"other {other / seconds:.2f}"])

    print(
        f"\nrefreshes: {k} at once, {args.audience:,} source users each, {args.users:,} Netmera "
        f"users in PostgreSQL; CPU-seconds, task processes and their seconds per refresh; "
        f"wall: all {k}"
    )
    print(
        f"{'':38}{'CPU-s':>8}{'x floor':>9}{'wall s':>9}{'task procs':>12}{'task-s':>9}{'exact':>7}"
    )
    tail = f"{floor.wall:9.1f}{'-':>12}{'-':>9}{exact('floor'):>7}"
    row("floor: dag.test(), one process", floor.cpu, tail)
    row("  the whole machine meanwhile", floor.machine)
    for label, parts in (("whole machine", ["machine"]), ("its own processes", own)):
        gross = sum(window.cpu[part] for part in parts)
        standing = sum(idle.cpu.get(part, 0.0) for part in parts) * window.seconds / idle.seconds
        tail = ""
        if parts == ["machine"]:
            ratio = gross / k / per
            tail = (
                f"{window.seconds:9.1f}{cluster.processes / k:12.1f}"
                f"{cluster.task_seconds / k:9.2f}{exact('cluster'):>7}"
            )
        row(f"cluster, {label}: gross", gross, tail)
        row("  standing cost (the idle cluster)", standing)
        row("  net of it", gross - standing)
    print(
        f"  cores busy in the window ({window.seconds:.0f} s): {cores(window.cpu, window.seconds)}"
    )
    print(
        f"  cores busy in the idle cluster ({idle.seconds:.0f} s): {cores(idle.cpu, idle.seconds)}"
    )
    print(
        f"  target: the whole machine's gross <= {TARGET_RATIO:g}x the floor: {ratio:.1f}x: "
        f"{_verdict(ratio <= TARGET_RATIO)}"
    )
    print(
        f"  the cluster answered after {cluster.booted:.0f} s and had every segment's DAG after "
        f"{cluster.parsed:.0f} s (its first DAG-processor pass)"
    )
    if cluster.others:
        print(f"  note: {cluster.others} run(s) of other DAGs started during the windows")


def print_processor(
    args: argparse.Namespace, passes: dict[tuple[str, int], ProcessorPass], limit: float
) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    labels = {
        "baseline": f"baseline {args.baseline_ref}",
        "current": f"this tree ({head})",
        "floor": "Airflow's floor",
    }
    print(
        f"\nDAG processor: `airflow dag-processor --num-runs 1`, {args.segments:,} segments, "
        f"SQLite metadata; dagbag_import_timeout {limit:g} s"
    )
    print(
        f"{'tree':24}{'pass':>7}{'CPU-s':>9}{'x baseline':>11}{'wall s':>9}"
        f"{'slowest file':>14}{'% timeout':>10}{'DAGs':>7}"
    )
    for (name, number), run in passes.items():
        base = passes[("baseline", number)].cpu
        print(
            f"{labels[name]:24}{('first', 'again')[number - 1]:>7}{run.cpu:9.1f}"
            f"{run.cpu / base:11.2f}{run.wall:9.1f}{run.slowest:13.2f}s"
            f"{100 * run.slowest / limit:9.1f}%{run.dags:7d}"
        )
    ratio = passes[("current", 1)].cpu / passes[("baseline", 1)].cpu
    share = passes[("current", 1)].slowest / limit
    print(
        f"  target: first pass <= {TARGET_PROCESSOR:g} of the baseline's CPU: {ratio:.2f}: "
        f"{_verdict(ratio <= TARGET_PROCESSOR)}; slowest file <= {TARGET_TIMEOUT_SHARE:.0%} of "
        f"the timeout: {share:.1%}: {_verdict(share <= TARGET_TIMEOUT_SHARE)}"
    )
    floor = passes[("floor", 1)].cpu / passes[("baseline", 1)].cpu
    print(
        f"  Airflow's floor (one single-task DAG per segment file, nothing read): {floor:.2f} of "
        f"the baseline's first pass, {passes[('floor', 1)].cpu / passes[('current', 1)].cpu:.2f} "
        "of this tree's"
    )
    again = passes[("current", 2)]
    print(
        f"  re-parsing every 30 s (min_file_process_interval's default) would keep "
        f"{again.cpu / max(30.0, again.wall):.2f} cores busy (this tree's second pass)"
    )
    wrong = [
        f"{labels[name]} pass {number}: {run.dags}"
        for (name, number), run in passes.items()
        if run.dags != args.segments
    ]
    if wrong:
        print(f"  NOT every segment's DAG written: {', '.join(wrong)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10_000, help="all segment files")
    parser.add_argument("--refreshes", type=int, default=24, help="of them, refreshed (K)")
    parser.add_argument("--audience", type=int, default=10_000, help="source users a refresh")
    parser.add_argument("--users", type=int, default=1_000_000, help="Netmera users")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers")
    parser.add_argument("--slots", type=int, default=2, help="a worker's concurrency")
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle cluster")
    parser.add_argument("--baseline-ref", default="1fbc8ff", help="the processor's baseline")
    parser.add_argument("--skip-cluster", action="store_true", help="no floor, no cluster")
    parser.add_argument("--skip-processor", action="store_true", help="no processor passes")
    parser.add_argument("--pg", default=os.environ.get("CONNECTOR_SEGMENTS_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()
    if not 1 <= args.refreshes <= min(100, args.segments):
        parser.error("--refreshes: from 1 to 100, and at most --segments")

    clock = time.monotonic()
    took: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="cs-bench-fleet-"))
    print(
        f"fleet: {args.segments:,} segments, {args.refreshes} refreshed (file), the rest manual "
        f"(parsed only); {args.workers} workers x {args.slots} slots; {os.cpu_count()} CPUs; "
        f"work in {work}",
        flush=True,
    )
    wrong: dict[str, dict[str, str]] = {}
    try:
        audiences = None if args.skip_cluster else ROOT / ".local" / "bench" / f"fleet-{args.users}"
        fleet = write_fleet(args, work / "cluster" / "segments", audiences)
        if not args.skip_cluster:
            template = users_database(args.pg, args.users, args.audience)
            took["data"] = time.monotonic() - clock
            with run_databases(args.pg, template) as urls:
                floor = run_floor(work / "floor", fleet, urls["floor"])
                took["floor"] = time.monotonic() - clock - sum(took.values())
                cluster = run_cluster(args, work / "cluster", fleet, urls)
                took["cluster"] = time.monotonic() - clock - sum(took.values())
            wrong = {
                "floor": floor_wrong(fleet, floor),
                "cluster": cluster_wrong(fleet, floor, cluster),
            }
            print_refreshes(args, floor, cluster, wrong)
        if not args.skip_processor:
            passes = run_processor(args.baseline_ref, work / "processor", fleet.segments)
            took["processor"] = time.monotonic() - clock - sum(took.values())
            print_processor(args, passes, import_timeout())
    except BaseException:
        print(f"failed: the work folder {work} (logs in cluster/logs) is kept", file=sys.stderr)
        raise
    for side in wrong.values():
        for segment_id, why in side.items():
            print(f"NOT exact: {segment_id}: {why}")
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items())
    print(f"\ntook {time.monotonic() - clock:.0f} s ({steps})")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if any(wrong.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
