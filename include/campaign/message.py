"""Send Message for a segment: which message, to which published version, or why not; then
the send itself (`send.py`) or, on a dry run, what it would do.

Knows nothing of Airflow: it is given the Netmera database and a way to build the REST client
(only built when something is really sent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from include.campaign.audience import audience
from include.campaign.send import (
    DEFAULT_PLATFORMS,
    Message,
    SendRefused,
    entered_after,
    failure_key,
    send,
)
from include.config.segments import MAX_HOLDOUT_PERCENT, SEND_AUDIENCES

if TYPE_CHECKING:
    from include.clients.netmera import NetmeraClient
    from include.config.segments import SegmentConfig, SendAudience
    from include.store.database import NetmeraDatabase

log = logging.getLogger(__name__)


def send_asked(config: SegmentConfig, params: dict[str, Any]) -> bool:
    """Whether the run sends: asked by its trigger, or a refresh (not a restore) of a segment
    whose campaign sends on every refresh."""
    if params.get("send_message"):
        return True
    refresh = params.get("refresh", True) and params.get("restore_version") is None
    return bool(refresh and config.campaign and config.campaign.send_on_refresh)


def send_message(
    config: SegmentConfig,
    run_id: str,
    params: dict[str, Any],
    db: NetmeraDatabase,
    client: Callable[[], NetmeraClient],
    sent_by: str | None = None,
) -> dict[str, Any]:
    """Send the campaign to the published membership. Raises SendRefused when there is
    nothing to do (not listed in Message Report); a failure (no message, no usable Connection,
    Netmera refusing) raises too, once it is a failed ledger entry with its reason. Neither
    touches the membership or its status. `sent_by`: who triggered it (the run's user, or
    "schedule"), recorded in the ledger."""
    try:
        if not send_asked(config, params):
            raise SendRefused("no send requested (send_message is false, send_on_refresh is off)")
        version = _target_version(config, run_id, params, db)
        try:
            message = message_for(config, params)
            percent = holdout_percent_for(config, params)
            to = audience_for(config, params)
        except ValueError as exc:
            if not params.get("dry_run"):  # a dry run writes nothing, failures included
                _record_failure(config, run_id, params, db, version, exc, sent_by)
            raise
        if params.get("dry_run"):
            return _preview(config, message, percent, to, version, db)
        return send(
            engine=db.engine,
            client=client,
            users=db.users,
            segment_id=config.id,
            version=version,
            message=message,
            nonce=params.get("send_key") or None,
            run_id=run_id,
            holdout_percent=percent,
            sent_by=sent_by,
            to=to,
        )
    except SendRefused as exc:  # nothing to do, or already sent: say why, send nothing
        log.warning("segment %s: nothing sent: %s", config.id, exc)
        raise


def _target_version(
    config: SegmentConfig, run_id: str, params: dict[str, Any], db: NetmeraDatabase
) -> int:
    """The published version to message: after a refresh, the one *this run* published, and
    only while it is current; without one, the current version."""
    segment = db.store.segment(config.id)
    version = segment["current_version"] if segment else None
    if params.get("refresh", True) and not params.get("dry_run"):
        run = db.store.run(config.id, run_id)
        if not run or run["status"] != "published":
            raise SendRefused(
                f"segment {config.id!r}: this refresh did not publish "
                f"({run['status'] if run else 'no run'}); nothing sent"
            )
        if run["version"] != version:
            raise SendRefused(
                f"segment {config.id!r}: version {run['version']} of this run is "
                f"no longer the published one ({version}); nothing sent"
            )
    if version is None:
        raise SendRefused(f"segment {config.id!r} has no published membership to message")
    return version


def _preview(
    config: SegmentConfig,
    message: Message,
    percent: float,
    to: SendAudience,
    version: int,
    db: NetmeraDatabase,
) -> dict[str, Any]:
    since = entered_after(db.sends, config.id, message, to)
    target = audience(
        db.engine,
        db.users,
        config.id,
        version,
        fingerprint=message.fingerprint,
        holdout_percent=percent,
        entered_after=since,
    )
    log.info(
        "segment %s: dry run: would send %r to %d users of version %d in %d batches, "
        "holding out %d (%s%%) (%d members without an extId cannot be addressed); nothing sent",
        config.id,
        message.title,
        target.recipients,
        version,
        len(target.batches),
        len(target.holdout),
        percent,
        target.not_addressable,
    )
    return {
        "dry_run": True,
        "version": version,
        "members": target.members,
        "recipients": target.recipients,
        "holdout": len(target.holdout),
        "holdout_percent": percent,
        "audience": to,
        "since_version": since,
        "batches": [len(b.ext_ids) for b in target.batches],
        "not_addressable": target.not_addressable,
        "title": message.title,
    }


def _record_failure(
    config: SegmentConfig,
    run_id: str,
    params: dict[str, Any],
    db: NetmeraDatabase,
    version: int,
    error: Exception,
    sent_by: str | None,
) -> None:
    """A trigger that cannot make a message: listed in Message Report as failed, with why."""
    campaign = config.campaign
    db.sends.record_failure(
        segment_id=config.id,
        version=version,
        send_key=failure_key(config.id, version, run_id),
        message={
            "title": params.get("message_title") or (campaign.title if campaign else ""),
            "text": params.get("message_text") or (campaign.text if campaign else ""),
            "platforms": list(campaign.platforms if campaign else DEFAULT_PLATFORMS),
        },
        error=str(error),
        run_id=run_id,
        sent_by=sent_by,
    )


def message_for(config: SegmentConfig, params: dict[str, Any]) -> Message:
    """The message a send would send: the trigger's title and text over the YAML campaign's
    (ValueError naming the segment when neither gives both)."""
    campaign = config.campaign
    title = params.get("message_title") or (campaign.title if campaign else None)
    text = params.get("message_text") or (campaign.text if campaign else None)
    if not title or not text:
        raise ValueError(
            f"segment {config.id!r}: no message to send: set 'campaign' (title, text) in the "
            "YAML or the message_title and message_text trigger parameters"
        )
    return Message(title, text, campaign.platforms if campaign else DEFAULT_PLATFORMS)


def holdout_percent_for(config: SegmentConfig, params: dict[str, Any]) -> float:
    """The share of addressable members a send holds out: the trigger's `holdout_percent` over
    the YAML campaign's, 0 without either (ValueError naming the segment outside 0..50)."""
    asked = params.get("holdout_percent")
    if asked is None:
        return config.campaign.holdout_percent if config.campaign else 0.0
    if isinstance(asked, bool) or not isinstance(asked, int | float):
        raise ValueError(f"segment {config.id!r}: holdout_percent {asked!r} is not a number")
    if not 0 <= asked <= MAX_HOLDOUT_PERCENT:
        raise ValueError(
            f"segment {config.id!r}: holdout_percent {asked!r} is outside 0..{MAX_HOLDOUT_PERCENT}"
        )
    return float(asked)


def audience_for(config: SegmentConfig, params: dict[str, Any]) -> SendAudience:
    """Who a send messages: the trigger's `audience` over the YAML campaign's, "all" without
    either (ValueError naming the segment for anything else)."""
    asked = params.get("audience")
    if asked is None:
        return config.campaign.audience if config.campaign else "all"
    if asked not in SEND_AUDIENCES:
        raise ValueError(
            f"segment {config.id!r}: audience {asked!r} is not one of {list(SEND_AUDIENCES)}"
        )
    return asked
