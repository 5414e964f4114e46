"""The per-broadcast report people ask for (issue 15): ``GET /api/broadcasts/{id}/report``.

The status body (:meth:`~proactive.broadcast.service.BroadcastService.status`: ledger counts, throttled, timing) plus
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

:class:`TenantAudienceReport` is ``GET /api/tenants/{tenantId}/audience``: who in a tenant the bot can no
longer reach and why (``kind=inactive``: references marked inactive, with the reason they were, such as an
uninstall, a removed member or a user who blocked the bot, and since when) and who opted out
(``kind=optedOut``: all messages or some categories, and since when). Ids only, paged, JSON or CSV.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

from proactive.broadcast.audience import audience_tenants, stored_request
from proactive.broadcast.service import not_found
from proactive.csv_export import csv_text
from proactive.errors import InvalidInput
from proactive.models import DeliveryStatus, Preferences, StoredReference
from proactive.storage.keys import encode_key
from proactive.storage.paging import decode_continuation, encode_continuation
from proactive.storage.ports import DeliveryLedger, EntityTable, NotificationStore
from proactive.storage.stores import from_entity

__all__ = [
    "AUDIENCE_KINDS",
    "NOT_DELIVERED",
    "AudiencePage",
    "BroadcastReports",
    "TenantAudienceReport",
    "broadcast_report",
    "report_csv",
]

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
    rows: list[tuple[str, object, object]] = [
        ("count", key, value) for key, value in (report.get("counts") or {}).items()
    ]
    rows.append(("count", "throttled", report.get("throttled", 0)))
    rows.extend(("minute", minute["minute"], minute["sent"]) for minute in report.get("perMinute", []))
    rows.extend(("reason", reason, n) for reason, n in (report.get("failuresByReason") or {}).items())
    return csv_text(("section", "key", "count"), rows)  # error codes come from remote services


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


AUDIENCE_KINDS: Final = ("inactive", "optedOut")
AUDIENCE_CSV_COLUMNS: Final = ("kind", "recipientKey", "reason", "categories", "since")
_MAX_PAGE: Final = 1000


@dataclass(frozen=True)
class AudiencePage:
    """One page of a tenant's audience report."""

    items: list[dict[str, Any]]
    continuation: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "continuation": self.continuation}

    def to_csv(self) -> str:
        rows = (
            [
                item["kind"],
                item["recipientKey"],
                item.get("reason", ""),
                ";".join(item.get("categories", ())),
                item["since"],
            ]
            for item in self.items
        )
        return csv_text(AUDIENCE_CSV_COLUMNS, rows)


class TenantAudienceReport:
    """Who in a tenant is unreachable or opted out (module docstring).

    Args:
        references: the references table.
        preferences: the preferences table.
        tenant_allowed: ``Settings.tenant_allowed`` (another tenant is refused with 403).
    """

    def __init__(
        self, references: EntityTable, preferences: EntityTable, *, tenant_allowed: Callable[[str], bool]
    ) -> None:
        self._references = references
        self._preferences = preferences
        self._tenant_allowed = tenant_allowed

    async def page(
        self, tenant_id: str, kind: str | None, page_size: str | None, continuation: str | None
    ) -> AudiencePage:
        """One page of ``kind`` (``inactive`` or ``optedOut``).

        Raises:
            InvalidInput: 400 naming the field (kind, pageSize, continuation), 403 for a tenant not served.
        """
        if not self._tenant_allowed(tenant_id):
            raise InvalidInput(
                "this deployment does not serve that tenant",
                code="tenant_not_allowed",
                field="tenantId",
                status=403,
            )
        if kind not in AUDIENCE_KINDS:
            raise InvalidInput(
                f"kind must be one of {', '.join(AUDIENCE_KINDS)}", code="invalid_kind", field="kind"
            )
        size = _page_size(page_size)
        token = decode_continuation(continuation).get("c") if continuation else None
        if kind == "inactive":
            where: dict[str, object] = {"PartitionKey": encode_key(tenant_id), "active": False}
            page = await self._references.query(where, page_size=size, continuation=token)
            items = [_inactive(from_entity(e, StoredReference)) for e in page.items]
        else:
            # Opt-outs have no column of their own: a page of the tenant's preferences, filtered here.
            where = {"PartitionKey": encode_key(tenant_id)}
            page = await self._preferences.query(where, page_size=size, continuation=token)
            found = (from_entity(e, Preferences) for e in page.items)
            items = [_opted_out(p) for p in found if p.opted_out_all or p.opted_out_categories]
        next_token = encode_continuation({"c": page.continuation}) if page.continuation else None
        return AudiencePage(items, next_token)


def _inactive(reference: StoredReference) -> dict[str, Any]:
    return {
        "kind": "inactive",
        "recipientKey": reference.key,
        "reason": reference.stale_reason or "unknown",
        "since": reference.updated_at.isoformat(),
    }


def _opted_out(preferences: Preferences) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": "optedOut",
        "recipientKey": f"user:{preferences.aad_object_id}",
        "reason": "all" if preferences.opted_out_all else "categories",
        "since": preferences.updated_at.isoformat(),
    }
    if preferences.opted_out_categories:
        item["categories"] = list(preferences.opted_out_categories)
    return item


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return 100
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= _MAX_PAGE:
        raise InvalidInput(
            f"pageSize must be a whole number from 1 to {_MAX_PAGE}",
            code="invalid_page_size",
            field="pageSize",
        )
    return int(raw)
