"""Message Report: a segment's sends from the ledger with Netmera's delivery stats, as
`report --json` prints them and the UI's JSON API answers them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from include.store.views import iso

if TYPE_CHECKING:
    from include.clients.netmera import NetmeraClient
    from include.store.sends import SendLedger


def send_report(send: dict[str, Any], client) -> dict[str, Any]:
    """One send of the ledger, with its per-platform stats when `client` can fetch them.

    Counts are of members: planned + holdout + not_addressable = the version's members at the
    send (recipients = planned once every batch is sent); `holdout_shared` counts those held
    out for sharing a drawn member's extId (include/campaign/audience.py)."""
    entry = {
        "time": iso(send["created_at"]),
        "version": send["version"],
        "title": send["title"],
        "text": send["text"],
        "sent_by": send["sent_by"],
        "recipients": send["sent"],
        "status": send["status"],
        "notification_key": send["notification_key"],
        "not_addressable": send["not_addressable"],
        "uncertain": send["uncertain"],
        "holdout": send["holdout"],
        "holdout_shared": send["holdout_shared"],
        "holdout_percent": send["holdout_percent"],
        "audience": send["audience"],
        "since_version": send["since_version"],
        "planned": send["recipients"],
        "send_key": send["send_key"],
        "error": send["error"],
        "stats": None,
    }
    if client is not None and send["notification_key"] is not None:
        try:
            stats = client.push_stats(send["notification_key"])
            entry["stats"] = [
                {k: s.get(k) for k in ("platform", "sent", "failed", "clicked")}
                for s in stats.get("stats") or []
            ]
            entry["delivery_status"] = stats.get("status")
        except Exception as exc:  # the report still lists the send; say why stats are missing
            entry["stats_error"] = str(exc)
    return entry


def message_report(
    segment_id: str, limit: int, sends: SendLedger, client: Callable[[], NetmeraClient]
) -> tuple[list[dict[str, Any]], str | None]:
    """The segment's last `limit` sends, newest first, and why delivery stats are missing
    altogether (no usable Netmera Connection), or None.

    `sends` (the Netmera database's ledger) and `client` (a Netmera client from its
    Connection; LookupError or ValueError when it has none usable) are handed in by the CLI and
    the UI's API: the Connections are Airflow's, read in the orchestration layer above this
    one. `client` is asked only when there are sends."""
    found = sends.for_segment(segment_id, limit)
    try:
        netmera = client() if found else None
    except (LookupError, ValueError) as exc:
        return [send_report(send, None) for send in found], f"no delivery stats: {exc}"
    return [send_report(send, netmera) for send in found], None
