"""Metrics for on-call, sent through Airflow's own metrics client: whatever `[metrics]` turns on
(`statsd_on`, `statsd_datadog_enabled` or `otel_on`, with their host, port and prefix) carries
them, beside Airflow's own. The only module that imports Airflow's Stats.

Every name starts `connector_segments.` (after `[metrics] statsd_prefix`, `airflow` by default):

    gauges, after a publish or a restore:  connector_users, netmera_users, reachable,
        match_rate (matched source users / connector users; none for an empty audience)
    timing, each step that returns:        step_duration (tag `step`: extract, match, validate,
        publish, restore, send_message)
    counters: failed (a run that left the segment Failed), held (a refresh held by a guardrail),
        stale (each stale segment, at each hourly stale check), sends.sent / sends.uncertain /
        sends.holdout (recipients of a send that finished), sends.failed (a failed send task)
    gauge, at each stale check:            stale_segments (how many are stale now; no segment)

Each per-segment metric goes out twice, as Airflow's own per-DAG metrics do:
- `connector_segments.<name>`, tagged `segment=<id>`, `source_type=<type>` (and `step`): the
  name for backends that keep tags (OpenTelemetry attributes; Datadog with
  `statsd_datadog_metrics_tags`; StatsD with `statsd_influxdb_enabled`, which appends them to
  the name as `,segment=<id>` for statsd_exporter to turn into labels). Plain StatsD drops
  tags: there it is the sum, or last value, over all segments.
- `connector_segments.<name>.<segment id>` (`step_duration.<segment id>.<step>`), tagged
  `source_type`: the segment in the name, for plain StatsD. Sent while `[metrics]
  legacy_names_on` is on (its default), the switch of Airflow's own per-DAG names such as
  `dagrun.duration.failed.<dag_id>`.

A metric that cannot be sent is a warning in the task log, never an error: it must not fail or
retry a refresh.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from include.config.segments import SegmentConfig

log = logging.getLogger(__name__)
PREFIX = "connector_segments"
GAUGES = ("connector_users", "netmera_users", "reachable")
SEND_COUNTS = ("sent", "uncertain", "holdout")
UNKNOWN = "unknown"  # the source type when the store cannot say (it may be what failed)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _quiet(event: Callable[_P, None]) -> Callable[_P, None]:
    """An event never raises: a metric lost is logged, the refresh goes on."""

    @functools.wraps(event)
    def sent_or_logged(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            event(*args, **kwargs)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("metrics: %s not sent (%s); the run is unaffected", event.__name__, why)

    return sent_or_logged


def _send(
    kind: str, name: str, value: float | timedelta, segment: tuple[str, str], **more: str
) -> None:
    """One per-segment metric in both forms (the module docstring says why)."""
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability import stats

    emit = {"incr": stats.incr, "gauge": stats.gauge, "timing": stats.timing}[kind]
    segment_id, source_type = segment
    tags = {"segment": segment_id, "source_type": source_type, **more}
    emit(f"{PREFIX}.{name}", value, tags=tags)
    if conf.getboolean("metrics", "legacy_names_on", fallback=True):
        named = ".".join([PREFIX, name, segment_id, *more.values()])
        emit(named, value, tags={"source_type": source_type})


def _of(config: SegmentConfig) -> tuple[str, str]:
    return config.id, config.source.type


def _stored(segment_id: str) -> tuple[str, str]:
    """For the failure callbacks, which have only the DAG's id: the source type the store
    recorded for the segment."""
    from include.orchestration.connections import netmera_database

    try:
        row = netmera_database().store.segment(segment_id)
    except Exception as exc:  # the store may be what failed: the metric goes out all the same
        log.warning("metrics: segment %s: its source type is unknown: %s", segment_id, exc)
        row = None
    return segment_id, row["source_type"] if row else UNKNOWN


# -- events ------------------------------------------------------------------------------------


@_quiet
def published(config: SegmentConfig, run_id: str) -> None:
    """The run published (or restored) a version: its counts, as the store recorded them."""
    from include.orchestration.connections import netmera_database

    counts = netmera_database().store.run(config.id, run_id)
    segment = _of(config)
    for name in GAUGES:
        if counts.get(name) is not None:  # reachable: unknown where the user table cannot say
            _send("gauge", name, counts[name], segment)
    if counts.get("connector_users") and counts.get("matched_source_users") is not None:
        rate = counts["matched_source_users"] / counts["connector_users"]
        _send("gauge", "match_rate", rate, segment)


@_quiet
def step_took(config: SegmentConfig, step: str, duration: timedelta) -> None:
    _send("timing", "step_duration", duration, _of(config), step=step)


@_quiet
def held(config: SegmentConfig) -> None:
    """A guardrail held the refresh."""
    _send("incr", "held", 1, _of(config))


@_quiet
def run_failed(segment_id: str, run_id: str) -> None:
    """An Airflow run failed: counted when it left the segment Failed (a refresh's failure,
    not a dry run's, a restore's or a Send Message's), or when the store cannot say."""
    from include.orchestration.connections import netmera_database
    from include.store.repository import fails_segment

    try:
        failed = fails_segment(netmera_database().store.run(segment_id, run_id))
    except Exception as exc:
        log.warning("metrics: segment %s: counted as failed, the store unread: %s", segment_id, exc)
        failed = True
    if failed:
        _send("incr", "failed", 1, _stored(segment_id))


@_quiet
def sent(config: SegmentConfig, report: Mapping[str, Any]) -> None:
    """A send finished: its recipients by outcome. A dry run's preview sends nothing."""
    if report.get("dry_run"):
        return
    for outcome in SEND_COUNTS:
        _send("incr", f"sends.{outcome}", report.get(outcome, 0), _of(config))


@_quiet
def send_failed(segment_id: str) -> None:
    """The send task failed for good (after its retries)."""
    _send("incr", "sends.failed", 1, _stored(segment_id))


@_quiet
def stale_check(stale: Iterable[tuple[str, str]]) -> None:
    """The hourly stale check found these (segment id, source type) Stale: each one counts at
    every check while it stays Stale, so a rate over the last hours follows the condition."""
    from airflow.sdk.observability import stats

    stale = list(stale)
    for segment in stale:
        _send("incr", "stale", 1, segment)
    stats.gauge(f"{PREFIX}.stale_segments", len(stale))


# -- sends ---------------------------------------------------------------------------------


def counts_sends(send_message: Callable[_P, dict[str, Any]]) -> Callable[_P, dict[str, Any]]:
    """`refresh.send_message`: its report counted by `sent`."""

    @functools.wraps(send_message)
    def counted(*args: _P.args, **kwargs: _P.kwargs) -> dict[str, Any]:
        report = send_message(*args, **kwargs)
        sent(args[0], report)
        return report

    return counted
