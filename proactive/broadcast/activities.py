"""What the broadcast orchestrations' activities do: materialise, send a batch, cancel the rest, count, record.

Each method takes and returns the JSON of :mod:`proactive.orchestration.runs`; the triggers in
:mod:`proactive.functions.durable` only pass it through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from proactive.broadcast.audience import AudienceMaterialiser
from proactive.broadcast.ports import JsonSender
from proactive.broadcast.status import ledger_counts
from proactive.delivery.contract import SendBatchInput, SendBatchResult
from proactive.errors import ConcurrencyConflict, RecordNotFound
from proactive.models import DeliveryStatus, NotificationStatus
from proactive.orchestration.runs import (
    AudiencePageRequest,
    CancelledRows,
    LedgerCounts,
    LedgerCountsRequest,
    RecordRequest,
    TenantRows,
)
from proactive.storage.ports import DeliveryLedger, NotificationStore

__all__ = ["BroadcastSteps"]


class BroadcastSteps:
    """What the broadcast activities do (one method per activity, JSON in and out).

    Args:
        notifications: notification store.
        ledger: delivery ledger.
        materialiser: audience materialiser.
        sender: ``send_batch`` on the wire (the composition root wraps ``BatchSender``).
        clock: current time.
    """

    def __init__(
        self,
        notifications: NotificationStore,
        ledger: DeliveryLedger,
        materialiser: AudienceMaterialiser,
        sender: JsonSender,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._notifications = notifications
        self._ledger = ledger
        self._materialiser = materialiser
        self._sender = sender
        self._clock = clock

    async def materialise(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Activity ``materialise_audience``: ``{notificationId, tenantId, cursor}`` -> MaterialisePage."""
        request = AudiencePageRequest.from_json(payload)
        page = await self._materialiser.materialise(
            request.notification_id, request.tenant_id, request.cursor
        )
        return page.to_json()

    async def send_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Activity ``send_batch``: stop at the cancelled flag (sends only), else run the sender."""
        batch = SendBatchInput.from_json(payload)
        if batch.operation == "send":
            found = await self._notifications.get(batch.notification_id)
            if found is None or found.value.status is NotificationStatus.CANCELLED:
                return SendBatchResult(cancelled=True).to_json()
        result = await self._sender(payload)
        return {**result, "cancelled": False}

    async def cancel_remaining(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Activity ``cancel_remaining``: ``pending`` / ``deferred`` rows of a tenant -> ``cancelled``."""
        rows = TenantRows.from_json(payload)
        notification_id, tenant_id = rows.notification_id, rows.tenant_id
        marked, continuation = 0, None
        while True:
            page = await self._ledger.list(
                notification_id,
                tenant_id,
                statuses=[DeliveryStatus.PENDING, DeliveryStatus.DEFERRED],
                continuation=continuation,
            )
            for row in page.items:
                cancelled = row.value.model_copy(
                    update={"status": DeliveryStatus.CANCELLED, "updated_at": self._clock()}
                )
                try:
                    await self._ledger.replace(cancelled, row.etag)
                    marked += 1
                except ConcurrencyConflict:
                    continue  # a sender claimed it first: it ends as sent (or failed), which is the truth
            continuation = page.continuation
            if continuation is None:
                return CancelledRows(cancelled=marked).to_json()

    async def progress(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Activity ``broadcast_progress``: ``{"counts": {...}}`` from the ledger."""
        request = LedgerCountsRequest.from_json(payload)
        counts = await ledger_counts(self._ledger, request.notification_id, request.tenants)
        return LedgerCounts(counts=counts).to_json()

    async def record(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Activity ``record_broadcast``: store the notification's status (and counts when tenants are given).

        A ``cancelled`` notification stays cancelled whatever the orchestration reports afterwards.
        """
        request = RecordRequest.from_json(payload)
        notification_id, status, tenants = request.notification_id, request.status, request.tenants
        counts = await ledger_counts(self._ledger, notification_id, tenants) if tenants is not None else None
        for _ in range(5):
            found = await self._notifications.get(notification_id)
            if found is None:
                raise RecordNotFound(f"notification {notification_id} not found")
            current = found.value
            new_status = current.status if current.status is NotificationStatus.CANCELLED else status
            snapshot = dict(current.counts)
            if counts is not None:
                snapshot = {**counts, "throttled": request.throttled}
            try:
                await self._notifications.replace(
                    current.model_copy(
                        update={"status": new_status, "counts": snapshot, "updated_at": self._clock()}
                    ),
                    found.etag,
                )
                break
            except ConcurrencyConflict:
                continue
        return LedgerCounts(counts=counts).to_json()
