"""Send Message: a campaign to a published membership version, at most once per user and key.

Strategy: definition-then-list-send. One `createNotificationDefinition`, then `sendNotification`
to the members' extIds in batches of ≤1000. Each batch is its own ledger entry, so progress is
recorded as it happens and a retry resumes at the first batch not yet sent; tag-then-bulk-send
would instead end in one all-or-nothing call whose outcome is unknowable after a timeout, and
leave tags behind on users.

The idempotency key is (segment, version, fingerprint of title/text/platforms[, send_key]):
the same message to the same version is refused once sent; a new `send_key` forces a new send.
The ledger entry is written before the Netmera client is built, so a send that cannot start
(no usable Connection, Netmera refusing or unreachable) is a failed entry with its reason, which
the next trigger of the same key resumes. A trigger with no message at all is recorded under
`failure_key` (see include/store/sends.py).

A send may hold out a share of the addressable members (`holdout_percent`, drawn as
include/campaign/audience.py says): drawn when the ledger entry is created and recorded in the
same transaction as its batches, so a retry or resume never draws again. The percent is not
part of the key: the same message reaches a version once, whatever share it holds out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.campaign.audience import Audience, audience
from include.clients.http import AmbiguousOutcome, VendorError
from include.clients.netmera import NetmeraClient, NetmeraError
from include.store import sends as ledger_states
from include.store.sends import SendLedger

if TYPE_CHECKING:
    from include.config.segments import SendAudience
    from include.matching.user_table import UserTable

log = logging.getLogger(__name__)
DEFAULT_PLATFORMS = ("IOS", "ANDROID")


class _BatchTaken(Exception):
    """Another worker claimed this batch first."""


class SendRefused(RuntimeError):
    """Nothing to send, or already sent: not an error, but nothing was sent and here is why."""


@dataclass(frozen=True)
class Message:
    title: str
    text: str
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def send_key(segment_id: str, version: int, message: Message, nonce: str | None) -> str:
    key = f"{segment_id}/v{version}/{message.fingerprint[:16]}"
    return f"{key}/{nonce}" if nonce else key


def entered_after(
    ledger: SendLedger, segment_id: str, message: Message, to: SendAudience
) -> int | None:
    """The version a send to "entered" counts its newcomers after: the one this message was
    last sent to (None the first time, and always for "all": every member)."""
    if to != "entered":
        return None
    return ledger.last_sent_version(segment_id, message.fingerprint)


def failure_key(segment_id: str, version: int, run_id: str) -> str:
    """The ledger key of a run's trigger that had no message to send: one per run (a retry
    updates it), and never a message's key (`failed` is no hex fingerprint)."""
    return f"{segment_id}/v{version}/failed/{hashlib.sha256(run_id.encode()).hexdigest()[:16]}"


def send(
    *,
    engine: sa.Engine,
    client: Callable[[], NetmeraClient],
    users: UserTable,
    segment_id: str,
    version: int,
    message: Message,
    nonce: str | None,
    run_id: str,
    holdout_percent: float = 0,
    sent_by: str | None = None,
    to: SendAudience = "all",
) -> dict[str, Any]:
    """Send (or resume sending) the message to the version; returns the ledger's summary.
    `to`: "all" its members, or "entered": those who entered since the version this message
    was last sent to (all of them the first time), chosen when the entry is created.

    `client` builds the Netmera client, once the ledger entry exists: a Connection that is
    undefined or unusable fails the entry (with its reason) like a refusal from Netmera does.
    The holdout (`include/campaign/audience.py`) is drawn once, when the entry is created, and
    recorded with its batches: a resumed send keeps it, whatever `holdout_percent` it is given.
    `sent_by` (who triggered the send) is recorded for Message Report."""
    ledger = SendLedger(engine)
    key = send_key(segment_id, version, message, nonce)
    entry = ledger.find(key)
    if entry and entry["status"] in (ledger_states.DONE, ledger_states.PARTIAL):
        raise SendRefused(
            f"segment {segment_id!r}: this message was already sent to version {version} "
            f"({entry['sent']} recipients, {entry['updated_at']:%Y-%m-%d %H:%M} UTC, key {key}); "
            "nothing sent. Trigger with a new send_key to send it again."
        )
    if entry is None:
        since = entered_after(ledger, segment_id, message, to)
        target = audience(
            engine,
            users,
            segment_id,
            version,
            fingerprint=message.fingerprint,
            holdout_percent=holdout_percent,
            entered_after=since,
        )
        _refuse_empty(target, segment_id, version, since)
        send_id = ledger.create(
            segment_id=segment_id,
            version=version,
            send_key=key,
            fingerprint=message.fingerprint,
            message=asdict(message) | {"platforms": list(message.platforms)},
            batches=target.batches,
            not_addressable=target.not_addressable,
            holdout=target.holdout,
            holdout_shared=target.holdout_shared,
            holdout_percent=holdout_percent,
            sent_by=sent_by,
            run_id=run_id,
            audience=to,
            since_version=since,
        )
        log.info(
            "segment %s: send %s created%s: %d recipients in %d batches, %d held out (%s%%), "
            "%d not addressable",
            segment_id,
            key,
            f" for those who entered since version {since}" if since is not None else "",
            target.recipients,
            len(target.batches),
            len(target.holdout),
            holdout_percent,
            target.not_addressable,
        )
    else:
        send_id = _resume(ledger, entry, segment_id, holdout_percent)
    entry = ledger.find(key)
    notification_key = entry["notification_key"]
    try:
        netmera = client()
        if notification_key is None:
            notification_key = netmera.create_definition(
                message.title, message.text, list(message.platforms)
            )
            ledger.set_notification_key(send_id, notification_key)
        _send_batches(ledger, netmera, send_id, notification_key, segment_id)
    except (LookupError, ValueError, VendorError, NetmeraError) as exc:
        # No usable Connection, Netmera refused, or Netmera unreachable after the client's
        # retries: failed with the reason (the task's retry, or a later trigger, resumes it).
        ledger.finish(send_id, ledger_states.FAILED, _reason(exc))
        raise
    entry = ledger.find(key)
    status = ledger_states.PARTIAL if entry["uncertain"] else ledger_states.DONE
    ledger.finish(send_id, status)
    log.info(
        "segment %s: send %s %s: %d sent, %d uncertain, %d held out, %d not addressable",
        segment_id,
        key,
        status,
        entry["sent"],
        entry["uncertain"],
        entry["holdout"],
        entry["not_addressable"],
    )
    return {
        "send_key": key,
        "status": status,
        "notification_key": notification_key,
        "sent": entry["sent"],
        "uncertain": entry["uncertain"],
        "holdout": entry["holdout"],
        "holdout_percent": entry["holdout_percent"],
        "not_addressable": entry["not_addressable"],
        "batches": entry["batches"],
    }


def _refuse_empty(target: Audience, segment_id: str, version: int, since: int | None) -> None:
    if target.batches:
        return
    held = f", {len(target.holdout)} held out" if target.holdout else ""
    who = f"no member who entered since version {since}" if since is not None else "no member"
    raise SendRefused(
        f"segment {segment_id!r}: version {version} has {who} to message "
        f"({target.not_addressable} without an extId{held})"
    )


def _resume(ledger: SendLedger, entry: dict[str, Any], segment_id: str, percent: float) -> int:
    """The entry's send again: its batches and holdout as recorded (never drawn again)."""
    caught = ledger.recover(entry["id"])
    log.info(
        "segment %s: resuming send %s%s",
        segment_id,
        entry["send_key"],
        f"; {caught} batch(es) caught mid-request marked uncertain" if caught else "",
    )
    if percent != entry["holdout_percent"]:
        log.warning(
            "segment %s: send %s keeps the holdout it was created with (%s%%, %d members); "
            "holdout_percent %s%% does not apply to a resumed send",
            segment_id,
            entry["send_key"],
            entry["holdout_percent"],
            entry["holdout"],
            percent,
        )
    return entry["id"]


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, NetmeraError) else str(exc)


def _send_batches(
    ledger: SendLedger, client: NetmeraClient, send_id: int, notification_key: int, segment_id: str
) -> None:
    for batch_no, ext_ids, behind in ledger.pending(send_id):

        def claim(b: int = batch_no) -> None:
            if not ledger.claim(send_id, b):
                raise _BatchTaken

        try:
            client.send_to_ext_ids(
                notification_key,
                ext_ids,
                # In flight while a request is out (claimed: one worker per batch); pending
                # again while waiting after a refusal, so a worker killed during the wait
                # resends the batch rather than skipping it.
                before_attempt=claim,
                after_refusal=lambda b=batch_no: ledger.mark_pending(send_id, b),
            )
        except _BatchTaken:
            log.info("segment %s: batch %d is another worker's; skipped", segment_id, batch_no)
            continue
        except AmbiguousOutcome as exc:
            # Netmera may have sent it: never again for this key. The rest still goes out.
            ledger.mark_uncertain(send_id, batch_no, behind)
            log.warning(
                "segment %s: batch %d outcome unknown (%s); not resent", segment_id, batch_no, exc
            )
            continue
        except (NetmeraError, VendorError):
            ledger.mark_pending(send_id, batch_no)  # refused or never accepted: not sent
            raise
        ledger.mark_sent(send_id, batch_no, segment_id, behind)
        log.info("segment %s: batch %d sent (%d extIds)", segment_id, batch_no, len(ext_ids))
