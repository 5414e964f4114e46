"""The per-broadcast report people ask for (issue 15): ``GET /api/broadcasts/{id}/report``.

The status body (:meth:`~proactive.broadcasts.BroadcastService.status`: ledger counts, throttled, timing) plus
what only the rows know, read in one pass over the ledger partitions of the broadcast's tenants, a page at
a time, so memory stays bounded whatever the audience (the aggregates are bounded by the broadcast's
duration in minutes and by the number of distinct error codes):

* ``perMinute``: rows recorded ``sent`` in each UTC minute (the row's ``updatedAt`` when it became sent,
  which for a sent row is when the send was recorded), oldest first: the delivery rate over time;
* ``failuresByReason``: rows that did not get the message (failed, unreachable, stale, dead-lettered,
  skipped), by ``status:errorCode``;
* ``throttledPerSent``: 429 answers per message sent (the throttle rate; 0 when nothing was sent).

The CSV form is one table of ``section,key,count`` rows (``count`` / ``minute`` / ``reason``), so a
spreadsheet reads it without knowing the JSON.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC
from typing import Any, Final

from proactive.audience import audience_tenants, stored_request
from proactive.broadcasts import not_found
from proactive.dead_letters import csv_cell
from proactive.models import DeliveryStatus
from proactive.ports import DeliveryLedger, NotificationStore

__all__ = ["NOT_DELIVERED", "BroadcastReports", "broadcast_report", "report_csv"]

NOT_DELIVERED: Final = (
    DeliveryStatus.FAILED,
    DeliveryStatus.UNREACHABLE,
    DeliveryStatus.STALE,
    DeliveryStatus.DEAD_LETTERED,
    DeliveryStatus.SKIPPED,
)


async def broadcast_report(
    ledger: DeliveryLedger, notification_id: str, tenants: Sequence[str], status: Mapping[str, Any]
) -> dict[str, Any]:
    """``status`` (the status route's body) with the per-minute rate, failures by reason and throttle rate."""
    per_minute: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    wanted = [DeliveryStatus.SENT, *NOT_DELIVERED]
    for tenant in tenants:
        continuation: str | None = None
        while True:
            page = await ledger.list(notification_id, tenant, statuses=wanted, continuation=continuation)
            for item in page.items:
                row = item.value
                if row.status is DeliveryStatus.SENT:
                    per_minute[row.updated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")] += 1
                else:
                    code = row.last_error.code if row.last_error else "none"
                    reasons[f"{row.status.value}:{code}"] += 1
            continuation = page.continuation
            if continuation is None:
                break
    counts = status.get("counts") or {}
    sent = int(counts.get(DeliveryStatus.SENT.value, 0))
    throttled = int(status.get("throttled") or 0)
    return {
        **status,
        "throttledPerSent": round(throttled / sent, 4) if sent else 0.0,
        "perMinute": [{"minute": minute, "sent": n} for minute, n in sorted(per_minute.items())],
        "failuresByReason": dict(sorted(reasons.items())),
    }


def report_csv(report: Mapping[str, Any]) -> str:
    """The report as ``section,key,count`` rows (RFC 4180, with a header)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("section", "key", "count"))
    rows: list[tuple[str, object, object]] = [
        ("count", key, value) for key, value in (report.get("counts") or {}).items()
    ]
    rows.append(("count", "throttled", report.get("throttled", 0)))
    rows.extend(("minute", minute["minute"], minute["sent"]) for minute in report.get("perMinute", []))
    rows.extend(("reason", reason, n) for reason, n in (report.get("failuresByReason") or {}).items())
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])  # error codes come from remote services
    return out.getvalue()


class BroadcastReports:
    """The service behind ``GET /api/broadcasts/{id}/report``.

    Args:
        notifications: the notifications (the broadcast's tenants).
        ledger: the delivery ledger.
        status: the status route's body for an id (``BroadcastService.status``; 404 for an unknown id).
    """

    def __init__(
        self,
        notifications: NotificationStore,
        ledger: DeliveryLedger,
        status: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> None:
        self._notifications = notifications
        self._ledger = ledger
        self._status = status

    async def report(self, notification_id: str) -> dict[str, Any]:
        """The report of one broadcast (module docstring).

        Raises:
            InvalidInput: 404 for an unknown id.
        """
        body = await self._status(notification_id)
        found = await self._notifications.get(notification_id)
        if found is None:
            raise not_found(notification_id)
        tenants = audience_tenants(stored_request(found.value))
        return await broadcast_report(self._ledger, notification_id, tenants, body)
