"""Metrics for on-call through Airflow's own StatsD client, received by a UDP StatsD listener on
127.0.0.1 that each test starts, with Airflow's `[metrics]` set through its environment.

What must hold: after a publish (or restore) the segment's counts as the store has them, each
step's duration, and counters for Failed, Held, Stale and each send's outcome, under the names
the README documents (the segment in the name for plain StatsD, in tags where the backend keeps
them); a metric that cannot be sent changes nothing about the run.

Airflow picks its metrics backend from `[metrics]` when a process calls `stats.initialize`: a
task process does it first thing (`task_runner.main`), other processes when `airflow.sdk.serde`
is first imported. `dag.test()` runs the tasks in this process, whose choice was made before
these tests set the environment, so the fixture makes the task runner's call again.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, netmera_conn, run_segment, write_users
from tests.fakes import FakeNetmera
from tests.test_alerts import (
    _published_days_ago,
    run_stale_check,
    store_row,
    write_audience,
    write_segment,
)

pytestmark = pytest.mark.dagrun

PREFIX = "cstest"
OURS = f"{PREFIX}.connector_segments."
# nm-3 has no push permission: reachable is one less than Netmera Users.
USERS = [(f"nm-{i}", f"ext-{i}", None, None, None, i != 3) for i in range(1, 6)]
MAPPING = ROOT / "docker" / "metrics" / "statsd-mapping.yaml"


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    kind: str  # StatsD's: c, g, ms


class StatsdListener:
    """A StatsD server's receiving end: every datagram sent to 127.0.0.1:<port>."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[Metric] = []

    def ours(self) -> list[Metric]:
        """Everything received so far (ours only, prefix included). A marker sent last comes in
        last: on the loopback, a datagram is queued by the time its `sendto` returns."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            marker.sendto(b"end-of-test-marker", ("127.0.0.1", self.port))
        self.sock.settimeout(30)  # only if the marker were lost
        while (data := self.sock.recv(65535)) != b"end-of-test-marker":
            for line in data.decode().splitlines():
                name, rest = line.split(":", 1)
                value, kind = rest.split("|")[:2]
                self.received.append(Metric(name, float(value), kind))
        return [m for m in self.received if m.name.startswith(OURS)]

    def named(self, name: str) -> list[Metric]:
        return [m for m in self.ours() if m.name == OURS + name]

    def value(self, name: str) -> float:
        """The value sent last under `name` (one was sent)."""
        found = self.named(name)
        assert found, f"no {OURS + name} among {sorted({m.name for m in self.ours()})}"
        return found[-1].value

    def close(self) -> None:
        self.sock.close()


def _start_stats() -> None:
    """What `airflow.sdk.execution_time.task_runner.main` does before a task runs."""
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    stats.initialize(
        factory=stats_utils.get_stats_factory(),
        export_legacy_names=conf.getboolean("metrics", "legacy_names_on"),
    )


@pytest.fixture
def statsd(workspace: Path) -> Iterator[StatsdListener]:
    """StatsD on, to a listener of this test's; Airflow's metrics as they were afterwards."""
    listener = StatsdListener()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
        env.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
        env.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.port))
        env.setenv("AIRFLOW__METRICS__STATSD_PREFIX", PREFIX)
        _start_stats()
        yield listener
    _start_stats()
    listener.close()


@pytest.fixture
def ws(workspace: Path, statsd: StatsdListener) -> Path:
    write_users(workspace / "netmera.db", USERS)
    return workspace


def _is_timing(metric: Metric) -> bool:
    return metric.kind == "ms" and metric.value >= 0


def test_a_publish_sends_the_counts_the_store_has_and_each_steps_duration(ws, statsd):
    # s1..s4: ext-1..ext-4 match (nm-3 not reachable); s9 matches no one.
    write_audience(ws, [1, 2, 3, 4, 9])
    write_segment(ws, "buyers", None)
    assert run_segment("buyers") == "success"
    row = store_row(ws, "buyers")
    assert (row["connector_users"], row["netmera_users"], row["reachable"]) == (5, 4, 3)

    for name in ("connector_users", "netmera_users", "reachable"):
        assert statsd.value(f"{name}.buyers") == row[name], name
        assert statsd.value(name) == row[name], name  # the tagged name: tags dropped here
    assert statsd.value("match_rate.buyers") == pytest.approx(4 / 5)
    assert all(m.kind == "g" for m in statsd.ours() if "users" in m.name or "rate" in m.name)
    for step in ("extract", "match", "validate", "publish"):
        (took,) = statsd.named(f"step_duration.buyers.{step}")
        assert _is_timing(took), took
    assert len(statsd.named("step_duration")) == 4
    # Nothing was sent (no send asked), held, failed or stale.
    assert not [m for m in statsd.ours() if m.kind == "c"]

    # A refresh to a smaller audience, then a restore of version 1: its counts again.
    write_audience(ws, [1, 2, 4])
    assert run_segment("buyers") == "success"
    assert statsd.value("netmera_users.buyers") == 3
    assert statsd.value("match_rate.buyers") == 1.0
    assert run_segment("buyers", restore_version=1) == "success"
    assert store_row(ws, "buyers")["netmera_users"] == 4
    for name in ("connector_users", "netmera_users", "reachable"):
        assert statsd.value(f"{name}.buyers") == row[name], name
    assert statsd.value("match_rate.buyers") == pytest.approx(4 / 5)
    (took,) = statsd.named("step_duration.buyers.restore")
    assert _is_timing(took)

    # Every name maps to a labelled Prometheus metric, or is a tag-less aggregate dropped.
    mapped = {_map(m.name.replace(PREFIX, "airflow", 1), m.kind) for m in statsd.ours()}
    assert mapped == {
        ("connector_segments_connector_users", (("segment", "buyers"),)),
        ("connector_segments_netmera_users", (("segment", "buyers"),)),
        ("connector_segments_reachable", (("segment", "buyers"),)),
        ("connector_segments_match_rate", (("segment", "buyers"),)),
        *(
            ("connector_segments_step_duration_seconds", (("segment", "buyers"), ("step", s)))
            for s in ("extract", "match", "validate", "publish", "restore")
        ),
        None,
    }


def test_held_and_failed_refreshes_are_counted_with_their_tags(ws, statsd, monkeypatch):
    # statsd_influxdb_enabled: Airflow appends the tags to the name (statsd_exporter's labels).
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED", "True")
    _start_stats()
    write_audience(ws, range(0))  # an empty source: Held unless allow_empty
    write_segment(ws, "empty", None)
    assert run_segment("empty") == "success"
    assert store_row(ws, "empty")["status"] == "Held"

    write_segment(ws, "broken", None, audience="missing.csv")
    assert run_segment("broken") == "failed"
    assert store_row(ws, "broken")["status"] == "Failed"
    # A failed dry run leaves the status alone: not counted.
    write_segment(ws, "trial", None, audience="missing.csv")
    assert run_segment("trial", dry_run=True) == "failed"
    assert store_row(ws, "trial")["status"] is None

    counters = sorted((m.name, m.value) for m in statsd.ours() if m.kind == "c")
    assert counters == [
        (f"{OURS}failed,segment=broken,source_type=file", 1),
        (f"{OURS}failed.broken,source_type=file", 1),
        (f"{OURS}held,segment=empty,source_type=file", 1),
        (f"{OURS}held.empty,source_type=file", 1),
    ]
    # The held run published nothing: no counts; its extract, match and validate were timed.
    assert not [m for m in statsd.ours() if m.kind == "g"]
    timed = {m.name for m in statsd.ours() if m.kind == "ms" and "segment=empty" in m.name}
    assert timed == {
        f"{OURS}step_duration,segment=empty,source_type=file,step={step}"
        for step in ("extract", "match", "validate")
    }


def test_a_send_counts_its_recipients_and_a_failed_send_counts_once(ws, statsd, monkeypatch):
    with FakeNetmera(api_key="key-1") as netmera:
        monkeypatch.setenv("AIRFLOW_CONN_NETMERA_DEFAULT", netmera_conn(netmera, "key-1"))
        write_audience(ws, range(1, 4))
        write_segment(ws, "buyers", None, campaign={"title": "Hi", "text": "Come back"})
        assert run_segment("buyers", send_message=True) == "success"
        assert len(netmera.delivered()) == 3
        assert statsd.value("sends.sent.buyers") == 3
        assert statsd.value("sends.uncertain.buyers") == 0
        assert statsd.value("sends.holdout.buyers") == 0
        (took,) = statsd.named("step_duration.buyers.send_message")
        assert _is_timing(took)

        # Send Message again (a new key) with Netmera refusing the key: the send fails, once;
        # the segment is not Failed.
        netmera.fail_next("invalid_key", path=FakeNetmera.SEND)
        again = {"refresh": False, "send_message": True, "send_key": "again"}
        assert run_segment("buyers", **again) == "failed"
    assert store_row(ws, "buyers")["status"] == "Ready"
    assert [m.value for m in statsd.named("sends.failed.buyers")] == [1]
    assert [m.value for m in statsd.named("sends.sent.buyers")] == [3]
    assert not statsd.named("failed.buyers")


def test_each_stale_check_counts_every_stale_segment(ws, statsd):
    write_audience(ws, range(1, 4))
    write_segment(ws, "nightly", None, schedule="0 2 * * *")
    write_segment(ws, "fresh", None, schedule="0 2 * * *")
    for segment_id in ("nightly", "fresh"):
        assert run_segment(segment_id) == "success"
    _published_days_ago(ws, "nightly", 3)

    assert run_stale_check() == "success"
    assert run_stale_check() == "success"
    assert [m.value for m in statsd.named("stale.nightly")] == [1, 1]  # while it stays Stale
    assert not statsd.named("stale.fresh")
    assert [m.value for m in statsd.named("stale_segments")] == [1, 1]


def refuse_our_names(name: str) -> str:
    """A `[metrics] stat_name_handler` that fails on every name of ours."""
    if "connector_segments" in name:
        raise RuntimeError(f"refusing {name}")
    return name


def test_a_metric_that_cannot_be_sent_changes_no_run(ws, statsd, monkeypatch, logs):
    monkeypatch.setenv("AIRFLOW__METRICS__STAT_NAME_HANDLER", f"{__name__}.refuse_our_names")
    _start_stats()
    write_audience(ws, range(1, 4))
    write_segment(ws, "buyers", None)
    write_segment(ws, "broken", None, audience="missing.csv")
    assert run_segment("buyers") == "success"
    assert run_segment("broken") == "failed"
    assert store_row(ws, "buyers")["status"] == "Ready"
    assert store_row(ws, "broken")["status"] == "Failed"
    assert statsd.ours() == []
    assert statsd.received  # Airflow's own metrics still went out
    for event in ("published", "step_took", "run_failed"):
        assert f"metrics: {event} not sent (RuntimeError: refusing" in logs.text, event


# -- statsd_exporter's mapping (docker/metrics/statsd-mapping.yaml) -----------------------------


def _map(name: str, kind: str) -> tuple[str, tuple] | None:
    """(Prometheus name, labels) as statsd_exporter maps the StatsD metric: the first rule
    whose glob matches (`*` one dot-separated component) and whose metric type fits; None
    where it drops it. The file's rules only, no default mapping: each name must be covered."""
    types = {"c": "counter", "g": "gauge", "ms": "timer"}
    parts = name.split(".")
    for rule in yaml.safe_load(MAPPING.read_text())["mappings"]:
        glob = rule["match"].split(".")
        if rule.get("match_metric_type", types[kind]) != types[kind] or len(glob) != len(parts):
            continue
        if any(g != "*" and g != p for g, p in zip(glob, parts, strict=True)):
            continue
        if rule.get("action") == "drop":
            return None
        stars = [p for g, p in zip(glob, parts, strict=True) if g == "*"]
        labels = tuple(sorted((k, _filled(v, stars)) for k, v in rule.get("labels", {}).items()))
        return _filled(rule["name"], stars), labels
    raise AssertionError(f"{name} ({kind}) matches no rule of {MAPPING.name}")


def _filled(text: str, stars: list[str]) -> str:
    """`$n` and `${n}` replaced by the n-th wildcard's match."""
    for i, value in reversed(list(enumerate(stars, 1))):
        text = text.replace(f"${{{i}}}", value).replace(f"${i}", value)
    return text


def test_the_mapping_names_every_metric_by_segment():
    assert _map("airflow.connector_segments.sends.sent.vip", "c") == (
        "connector_segments_sends_sent_total",
        (("segment", "vip"),),
    )
    assert _map("airflow.connector_segments.sends.sent", "c") is None
    assert _map("airflow.connector_segments.held.vip", "c") == (
        "connector_segments_held_total",
        (("segment", "vip"),),
    )
    for counter in ("failed", "stale"):
        assert _map(f"airflow.connector_segments.{counter}.vip", "c") == (
            f"connector_segments_{counter}_total",
            (("segment", "vip"),),
        )
    assert _map("airflow.connector_segments.stale_segments", "g") == (
        "connector_segments_stale_segments",
        (),
    )
    assert _map("airflow.connector_segments.held", "c") is None
    rules = (ROOT / "docker" / "metrics" / "prometheus-rules.yaml").read_text()
    for name in ("connector_segments_failed_total", "connector_segments_held_total"):
        assert f"increase({name}[" in rules, name


def test_compose_turns_statsd_on_only_when_asked(tmp_path):
    from tests.test_compose import REQUIRED, compose_config

    def worker_env(values: dict[str, str]) -> dict:
        done = compose_config(tmp_path, {**REQUIRED, **values})
        assert done.returncode == 0, done.stderr
        return yaml.safe_load(done.stdout)["services"]["airflow-worker"]["environment"]

    assert worker_env({})["AIRFLOW__METRICS__STATSD_ON"] == "false"
    env = worker_env({"AIRFLOW_STATSD_ON": "true"})
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "true"
    assert (env["AIRFLOW__METRICS__STATSD_HOST"], env["AIRFLOW__METRICS__STATSD_PORT"]) == (
        "statsd-exporter",
        "9125",
    )
    assert env["AIRFLOW__METRICS__STATSD_PREFIX"] == "airflow"  # the mapping's
    done = compose_config(tmp_path, REQUIRED)
    exporter = yaml.safe_load(done.stdout)["services"]["statsd-exporter"]
    assert exporter["profiles"] == ["metrics"]  # only on request
    assert exporter["volumes"] == [f"{MAPPING}:/etc/statsd-exporter/mapping.yaml:ro"]
