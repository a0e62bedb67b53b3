"""Alerts: a segment's `alerts` block sent through Airflow notifiers (the Slack incoming-webhook
and SMTP providers) when the segment turns Failed or Held, or goes Stale.

- Failed: the run's failure callback (once per failed run), when the run left the segment
  Failed. A failed Send Message, dry run or restore leaves the status alone and alerts no one.
- Held: `refresh.validate`, from the task, right after it holds the refresh.
- Stale: the hourly `connector_segments_stale_check` DAG, once per stale episode (the store
  remembers which, `include/store/stale_alerts.py`).

The providers are imported only here, when an alert fires: the DAG file builds thousands of
DAGs and must not pay for them at parse time. An alert that cannot be delivered is logged and
never raised, so it cannot fail or retry a refresh. Messages name the segment, its status, the
reason (redacted of personal data) and where to look in Airflow (a path relative to the UI:
the deployment's base URL is not known here); credentials live in the Connections only.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from include.orchestration.connections import netmera_database
from include.store.redaction import MAX_ERROR, redact_personal_data

if TYPE_CHECKING:
    from include.config.segments import AlertEvent, Alerts, EmailAlert, SegmentConfig, SlackAlert

log = logging.getLogger(__name__)
FAILED, HELD, STALE = "failed", "held", "stale"
STATUS = {FAILED: "Failed", HELD: "Held", STALE: "Stale"}
NEXT_STEP = {
    FAILED: "The previous membership keeps serving. Its runs: python -m include.cli details {id}",
    HELD: "Not published. Approve it on the Connector Segments page (or trigger the DAG with "
    "approve=true) once the change is expected.",
    STALE: "It still serves its last published membership. Its runs: "
    "python -m include.cli details {id}",
}
_URL = re.compile(r"\b\w+://\S+")  # an exception's text could hold a webhook URL: a secret
_T = TypeVar("_T")


@dataclass(frozen=True)
class Alert:
    """One alert, as every channel words it."""

    segment_id: str
    name: str
    event: AlertEvent
    reason: str
    airflow_path: str  # relative to the Airflow UI: dags/<dag_id>[/runs/<run_id>]

    @property
    def subject(self) -> str:
        return _one_line(f"Connector segment {STATUS[self.event]}: {self.name} [{self.segment_id}]")

    def lines(self) -> list[str]:
        return [
            f"Reason: {_one_line(self.reason)}",
            NEXT_STEP[self.event].format(id=self.segment_id),
            f"Airflow: {self.airflow_path}",
        ]

    def slack_text(self) -> str:
        # Slack reads <...> as links and mentions (<!channel>) and &...; as entities: names
        # and errors are text, so those three characters are escaped as Slack asks.
        return "\n".join([f"*{_slack_escape(self.subject)}*", *map(_slack_escape, self.lines())])

    def email_html(self) -> str:
        body = "<br>\n".join(html.escape(line) for line in self.lines())
        return f"<p><b>{html.escape(self.subject)}</b></p>\n<p>{body}</p>\n"


def _one_line(text: str) -> str:
    """No line breaks or control characters: a subject is a mail header."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _never_raises(func: Callable[..., _T]) -> Callable[..., _T | None]:
    """For the hooks inside a refresh: whatever goes wrong with an alert is logged only."""

    @functools.wraps(func)
    def guarded(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            log.error(
                "alert not sent (%s): %s; the refresh is unaffected", func.__name__, _why(exc)
            )
            return None

    return guarded


def _why(exc: BaseException) -> str:
    return redact_personal_data(_URL.sub("<url>", f"{type(exc).__name__}: {exc}"))[:MAX_ERROR]


# -- channels ---------------------------------------------------------------------------------


def _send_slack(channel: SlackAlert, alert: Alert) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    # No retry handlers: slack_sdk logs each retry at INFO with the full webhook URL, whose
    # path is the Connection's secret (one try; an undelivered alert is logged, not retried).
    notifier = SlackWebhookNotifier(
        slack_webhook_conn_id=channel.conn_id, text=alert.slack_text(), retry_handlers=[]
    )
    # notify(), not notifier(context): calling it renders its fields as Jinja templates first,
    # and a segment's name or an error is text, not a template (`{{ var.value.x }}`).
    notifier.notify({})


def _send_email(channel: EmailAlert, alert: Alert) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(
        to=list(channel.to),
        subject=alert.subject,
        html_content=alert.email_html(),
        smtp_conn_id=channel.conn_id,
    )
    notifier.notify({})  # as above; the sender is the Connection's `from_email`


def deliver(alerts: Alerts, alert: Alert) -> list[str]:
    """Send `alert` on each channel of `alerts`; return those that took it. Never raises."""
    channels: list[tuple[str, Callable[[], None]]] = []
    if alerts.slack is not None:
        channels.append(
            (f"slack ({alerts.slack.conn_id})", lambda: _send_slack(alerts.slack, alert))
        )
    if alerts.email is not None:
        channels.append(
            (f"email ({alerts.email.conn_id})", lambda: _send_email(alerts.email, alert))
        )
    delivered = []
    for channel, send in channels:
        try:
            send()
        except Exception as exc:  # Slack down, SMTP refused, a missing Connection, ...
            log.error(
                "segment %s: %s alert by %s not delivered: %s",
                alert.segment_id,
                STATUS[alert.event],
                channel,
                _why(exc),
            )
        else:
            delivered.append(channel)
            log.info(
                "segment %s: %s alert sent by %s", alert.segment_id, STATUS[alert.event], channel
            )
    return delivered


def _wants(config: SegmentConfig, event: AlertEvent) -> bool:
    return config.alerts is not None and event in config.alerts.on


def _run_path(config: SegmentConfig, run_id: str) -> str:
    return f"dags/{config.dag_id}/runs/{quote(run_id, safe='')}"


# -- events -----------------------------------------------------------------------------------


@_never_raises
def alert_failed_run(config: SegmentConfig, run_id: str) -> None:
    """The Airflow run failed: alert if it left the segment Failed, with the recorded error.
    A store that cannot be read is alerted too: nothing else will say so."""
    from include.store.repository import fails_segment

    if not _wants(config, FAILED):
        return
    try:
        run = netmera_database().store.run(config.id, run_id)
    except Exception as exc:
        reason = f"the run failed, and the segment store could not be read: {_why(exc)}"
    else:
        if not fails_segment(run):
            log.info(
                "segment %s: run %s failed without making the segment Failed (a Send Message, "
                "dry run or restore): no alert",
                config.id,
                run_id,
            )
            return
        reason = f"{run['failed_step']}: {run['error']}"
    deliver(config.alerts, _alert(config, FAILED, reason, _run_path(config, run_id)))


@_never_raises
def alert_held(config: SegmentConfig, run_id: str, hold_reason: str) -> None:
    """`refresh.validate` held this run's refresh."""
    if _wants(config, HELD):
        deliver(config.alerts, _alert(config, HELD, hold_reason, _run_path(config, run_id)))


def _alert(config: SegmentConfig, event: AlertEvent, reason: str, airflow_path: str) -> Alert:
    reason = redact_personal_data(reason)[:MAX_ERROR]
    return Alert(config.id, config.name, event, reason, airflow_path)


def alert_stale_segments() -> dict[str, int]:
    """The stale check: alert every stale segment that asks for it, once per stale episode
    (until a publish moves its last update date). An episode no channel took is tried again
    at the next check. Raises only if the store or the segments folder cannot be read."""
    from include.config.catalog import SegmentSummary
    from include.config.segments import load_segments
    from include.orchestration import metrics
    from include.store.stale_alerts import StaleAlerts, as_utc
    from include.store.staleness import grace
    from include.store.views import listed

    configs = load_segments().segments
    db = netmera_database()
    stale = [s for s in listed(db.store, [SegmentSummary.of(c) for c in configs]) if s.stale]
    metrics.stale_check((s.id, s.source_type) for s in stale)
    watching = {c.id: c for c in configs if _wants(c, STALE)}
    memory = StaleAlerts(db.engine)
    alerted = memory.alerted()
    sent = 0
    for segment in stale:
        config = watching.get(segment.id)
        if config is None:
            continue
        last_update = as_utc(segment.row["last_update_date"])
        if alerted.get(segment.id) == last_update:
            continue  # this episode was alerted
        reason = (
            f"Last Update Date {last_update:%Y-%m-%d %H:%M} UTC: no successful refresh within "
            f"one interval of its schedule ({config.schedule}) and the grace "
            f"({grace().total_seconds() / 60:g} min)"
        )
        alert = _alert(config, STALE, reason, f"dags/{config.dag_id}")
        if deliver(config.alerts, alert):
            memory.record(segment.id, last_update)
            sent += 1
    log.info(
        "stale check: %d stale segment(s), %d alerted now (%d ask for stale alerts)",
        len(stale),
        sent,
        len(watching),
    )
    return {"stale": len(stale), "alerted": sent}
