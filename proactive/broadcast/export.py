"""A broadcast's deliveries as ``GET /api/broadcasts/{id}/deliveries`` shows them: JSON items or CSV, paged.

No personalisation data leaves through here: it may be personal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from proactive.csv_export import csv_text
from proactive.errors import InvalidInput
from proactive.models import DeliveryRecord, DeliveryStatus

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "DeliveriesPage",
    "delivery_item",
    "parse_page_size",
    "parse_statuses",
]


MAX_PAGE_SIZE: Final = 1000


DEFAULT_PAGE_SIZE: Final = 100


CSV_COLUMNS: Final = (
    "tenantId",
    "recipientKey",
    "status",
    "attempts",
    "activityId",
    "errorCode",
    "errorMessage",
    "httpStatus",
    "notBefore",
    "updatedAt",
)


@dataclass(frozen=True)
class DeliveriesPage:
    """One page of ledger rows as JSON items, and the continuation of the next page."""

    items: list[dict[str, Any]]
    continuation: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "continuation": self.continuation}

    def to_csv(self) -> str:
        """RFC 4180 CSV with a header (:func:`~proactive.csv_export.csv_text`)."""

        def row(item: dict[str, Any]) -> list[object]:
            error = item.get("lastError") or {}
            return [
                item["tenantId"],
                item["recipientKey"],
                item["status"],
                item["attempts"],
                item.get("activityId", ""),
                error.get("code", ""),
                error.get("message", ""),
                error.get("httpStatus", ""),
                item.get("notBefore", ""),
                item.get("updatedAt", ""),
            ]

        return csv_text(CSV_COLUMNS, (row(item) for item in self.items))


def delivery_item(record: DeliveryRecord) -> dict[str, Any]:
    """The public JSON of one ledger row (no personalisation data: it may be personal)."""
    item: dict[str, Any] = {
        "tenantId": record.tenant_id,
        "recipientKey": record.recipient_key,
        "status": record.status.value,
        "attempts": record.attempts,
        "updatedAt": record.updated_at.isoformat(),
    }
    if record.activity_id:
        item["activityId"] = record.activity_id
    if record.last_error:
        item["lastError"] = record.last_error.to_json()
    if record.not_before:
        item["notBefore"] = record.not_before.isoformat()
    return item


def parse_statuses(raw: str | None) -> list[DeliveryStatus] | None:
    if not raw:
        return None
    wanted: list[DeliveryStatus] = []
    for part in (p.strip() for p in raw.split(",")):
        try:
            wanted.append(DeliveryStatus(part))
        except ValueError:
            raise InvalidInput(
                f"unknown status {part[:40]!r}; use {', '.join(s.value for s in DeliveryStatus)}",
                code="invalid_status",
                field="status",
            ) from None
    return wanted


def parse_page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses (that was a 500).
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}",
            code="invalid_page_size",
            field="pageSize",
        )
    return int(raw)
