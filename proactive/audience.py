"""Materialise a broadcast's audience into the delivery ledger: one ``pending`` row per recipient.

Called by the ``materialise_audience`` activity, one tenant and one slice at a time; each call returns a
cursor, never recipients, so no recipient list passes through Durable. Idempotent: rows are inserted only
when missing (:meth:`~proactive.ports.DeliveryLedger.add_pending`), so a retried or replayed call never
resets a row that already moved on.

Per tenant, two phases:

* explicit ``users`` and ``channels`` of that tenant, in request order (cursor ``e:{offset}``), with each
  user's personalisation ``data`` copied onto the row;
* with the tenant listed in ``audience.tenants``: every *active* reference of the tenant, paged through
  :meth:`~proactive.ports.ReferenceStore.list_tenant` (cursor ``t:{continuation}``). A user listed
  explicitly too keeps the row (and data) of the explicit phase.

A tenant outside ``Settings.tenant_allowed`` gets no rows (the API refuses such requests; this is the
second line of defence).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from proactive.broadcast_request import BroadcastRequest
from proactive.errors import RecordNotFound
from proactive.models import DeliveryRecord, Notification, Recipient
from proactive.orchestration.runs import MaterialisePage
from proactive.ports import DeliveryLedger, NotificationStore, ReferenceStore

EXPLICIT: Final = "e:"
TENANT: Final = "t:"


def stored_request(notification: Notification) -> BroadcastRequest:
    """The validated request kept on a notification (the parser's normalised form, as JSON)."""
    return BroadcastRequest.model_validate(notification.request)


def audience_tenants(request: BroadcastRequest) -> tuple[str, ...]:
    """Every tenant a request addresses, sorted (GUIDs are already lower-case)."""
    tenants = {r.tenant_id for r in request.recipients()} | set(request.audience.tenants)
    return tuple(sorted(tenants))


class AudienceMaterialiser:
    """Writes ledger rows for one tenant's slice of a notification's audience per call.

    Args:
        notifications: where the request is stored.
        references: the conversation references (for ``tenants`` audiences).
        ledger: the delivery ledger.
        tenant_allowed: ``Settings.tenant_allowed``.
        clock: the current time, for the rows' timestamps.
        rows_per_call: how many recipients one call handles at most (a few table pages).
        page_size: reference page size.
    """

    def __init__(
        self,
        notifications: NotificationStore,
        references: ReferenceStore,
        ledger: DeliveryLedger,
        *,
        tenant_allowed: Callable[[str], bool],
        clock: Callable[[], datetime],
        rows_per_call: int = 2000,
        page_size: int = 1000,
    ) -> None:
        self._notifications = notifications
        self._references = references
        self._ledger = ledger
        self._tenant_allowed = tenant_allowed
        self._clock = clock
        self._rows_per_call = rows_per_call
        self._page_size = page_size

    async def materialise(self, notification_id: str, tenant_id: str, cursor: str | None) -> MaterialisePage:
        """Create the next slice of ``tenant_id``'s rows, starting at ``cursor`` (``None``: the beginning).

        Returns:
            How many rows were new, how many recipients were seen, and the cursor of the next call
            (``None`` once the tenant is done).

        Raises:
            RecordNotFound: the notification does not exist.
        """
        found = await self._notifications.get(notification_id)
        if found is None:
            raise RecordNotFound(f"notification {notification_id} not found")
        if not self._tenant_allowed(tenant_id):
            return MaterialisePage(skipped_tenant=True)
        request = stored_request(found.value)
        cursor = cursor or f"{EXPLICIT}0"
        added = seen = 0
        if cursor.startswith(EXPLICIT):
            explicit = [r for r in request.recipients() if r.tenant_id == tenant_id]
            offset = int(cursor.removeprefix(EXPLICIT))
            chunk = explicit[offset : offset + self._rows_per_call]
            added += await self._ledger.add_pending([self._row(notification_id, r) for r in chunk])
            seen += len(chunk)
            offset += len(chunk)
            if offset < len(explicit):
                return MaterialisePage(added=added, seen=seen, cursor=f"{EXPLICIT}{offset}")
            if tenant_id not in request.audience.tenants:
                return MaterialisePage(added=added, seen=seen, cursor=None)
            cursor = TENANT
        continuation: str | None = cursor.removeprefix(TENANT) or None
        while seen < self._rows_per_call:
            page = await self._references.list_tenant(
                tenant_id, active_only=True, page_size=self._page_size, continuation=continuation
            )
            rows = [
                self._row(
                    notification_id,
                    Recipient(
                        tenant_id=tenant_id, kind=ref.kind, recipient_id=ref.recipient_id, team_id=ref.team_id
                    ),
                )
                for ref in page.items
            ]
            added += await self._ledger.add_pending(rows)
            seen += len(rows)
            continuation = page.continuation
            if continuation is None:
                return MaterialisePage(added=added, seen=seen, cursor=None)
        return MaterialisePage(added=added, seen=seen, cursor=f"{TENANT}{continuation}")

    def _row(self, notification_id: str, recipient: Recipient) -> DeliveryRecord:
        at = self._clock()
        return DeliveryRecord(
            notification_id=notification_id,
            tenant_id=recipient.tenant_id,
            recipient_key=recipient.key,
            data=recipient.data,
            created_at=at,
            updated_at=at,
        )
