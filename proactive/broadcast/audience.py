"""Materialise a broadcast's audience into the delivery ledger: one ``pending`` row per recipient.

Called by the ``materialise_audience`` activity, one tenant and one slice at a time; each call returns a
cursor, never recipients, so no recipient list passes through Durable. Idempotent: rows are inserted only
when missing (:meth:`~proactive.storage.ports.DeliveryLedger.add_pending`), so a retried or replayed call never
resets a row that already moved on.

Per tenant, up to four phases:

* explicit ``users`` and ``channels`` of that tenant, in request order (cursor ``e:{offset}``), with each
  user's personalisation ``data`` copied onto the row;
* the tenant's ``groups``, one after the other: their transitive members that are users, paged through
  Graph's ``@odata.nextLink`` (cursor ``g:{group index}:{nextLink}``); guests only with ``includeGuests``,
  disabled accounts never. A group Graph does not know (404) is skipped with a warning;
* with the tenant listed in ``audience.tenants``: every *active* reference of the tenant, paged through
  :meth:`~proactive.storage.ports.ReferenceStore.list_tenant` (cursor ``t:{continuation}``);
* with ``includeUninstalled`` too: every user Graph lists in the tenant (cursor ``d:{nextLink}``), same
  guest and disabled rules.

A recipient listed twice keeps the row (and data) of its first phase. Users found through Graph who have no
reference get a plain ``pending`` row: the sender records them ``stale`` and asks the ``installs`` queue to
install the app, which re-drives the row in the same broadcast once installed (:mod:`proactive.install.installs`).
A tenant whose admin has not consented to the Graph permissions (401/403) gets no Graph rows; the warning
names it (the explicit and reference phases still run).

A tenant outside ``Settings.tenant_allowed`` gets no rows (the API refuses such requests; this is the
second line of defence).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final

from proactive.broadcast.request import BroadcastRequest
from proactive.errors import DirectoryObjectNotFound, GraphAccessDenied, RecordNotFound
from proactive.install.ports import DirectoryPage, Graph
from proactive.models import DeliveryRecord, Notification, Recipient, RecipientKind
from proactive.orchestration.runs import MaterialisePage
from proactive.storage.ports import DeliveryLedger, NotificationStore, ReferenceStore

EXPLICIT: Final = "e:"
GROUPS: Final = "g:"
TENANT: Final = "t:"
DIRECTORY: Final = "d:"

logger = logging.getLogger(__name__)


def stored_request(notification: Notification) -> BroadcastRequest:
    """The validated request kept on a notification (the parser's normalised form, as JSON)."""
    return BroadcastRequest.model_validate(notification.request)


def audience_tenants(request: BroadcastRequest) -> tuple[str, ...]:
    """Every tenant a request addresses, sorted (GUIDs are already lower-case)."""
    tenants = {r.tenant_id for r in request.recipients()} | set(request.audience.tenants)
    tenants |= {g.tenant_id for g in request.audience.groups}
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
        graph: the Graph client, built on first use (``groups`` and ``includeUninstalled`` audiences).
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
        graph: Callable[[], Awaitable[Graph]] | None = None,
    ) -> None:
        self._notifications = notifications
        self._references = references
        self._ledger = ledger
        self._tenant_allowed = tenant_allowed
        self._clock = clock
        self._rows_per_call = rows_per_call
        self._page_size = page_size
        self._graph = graph

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
            cursor = f"{GROUPS}0:"
        if cursor.startswith(GROUPS):
            new, count, cursor = await self._groups(notification_id, tenant_id, request, cursor)
            added, seen = added + new, seen + count
            if cursor is not None:
                return MaterialisePage(added=added, seen=seen, cursor=cursor)
            if tenant_id not in request.audience.tenants:
                return MaterialisePage(added=added, seen=seen, cursor=None)
            cursor = TENANT
        if cursor.startswith(DIRECTORY):
            new, count, cursor = await self._directory(notification_id, tenant_id, request, cursor)
            return MaterialisePage(added=added + new, seen=seen + count, cursor=cursor)
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
                after = DIRECTORY if request.audience.include_uninstalled else None
                return MaterialisePage(added=added, seen=seen, cursor=after)
        return MaterialisePage(added=added, seen=seen, cursor=f"{TENANT}{continuation}")

    async def _groups(
        self, notification_id: str, tenant_id: str, request: BroadcastRequest, cursor: str
    ) -> tuple[int, int, str | None]:
        """Rows of the tenant's groups from ``cursor`` (``g:{index}:{nextLink}``); ``(added, seen, cursor)``."""
        groups = [g for g in request.audience.groups if g.tenant_id == tenant_id]
        index_text, _, link = cursor.removeprefix(GROUPS).partition(":")
        index = int(index_text)
        added = seen = 0
        while index < len(groups) and seen < self._rows_per_call:
            group_id = groups[index].group_id
            try:
                page = await (await self._graph_client()).group_users(tenant_id, group_id, link or None)
            except DirectoryObjectNotFound:
                logger.warning("Group %s of tenant %s not found in Graph: skipped", group_id, tenant_id)
                index, link = index + 1, ""
                continue
            except GraphAccessDenied as exc:
                logger.warning(
                    "No Graph consent in tenant %s (%s): its groups are skipped", tenant_id, exc.code
                )
                return added, seen, None
            new, count = await self._add_users(notification_id, tenant_id, request, page)
            added, seen = added + new, seen + count
            if page.next is None:
                index, link = index + 1, ""
            else:
                link = page.next
        return added, seen, (f"{GROUPS}{index}:{link}" if index < len(groups) else None)

    async def _directory(
        self, notification_id: str, tenant_id: str, request: BroadcastRequest, cursor: str
    ) -> tuple[int, int, str | None]:
        """Rows of every user Graph lists in the tenant from ``cursor`` (``d:{nextLink}``)."""
        link: str | None = cursor.removeprefix(DIRECTORY) or None
        added = seen = 0
        while seen < self._rows_per_call:
            try:
                page = await (await self._graph_client()).tenant_users(tenant_id, link)
            except GraphAccessDenied as exc:
                logger.warning(
                    "No Graph consent in tenant %s (%s): uninstalled users skipped", tenant_id, exc.code
                )
                return added, seen, None
            new, count = await self._add_users(notification_id, tenant_id, request, page)
            added, seen = added + new, seen + count
            link = page.next
            if link is None:
                return added, seen, None
        return added, seen, f"{DIRECTORY}{link}"

    async def _add_users(
        self, notification_id: str, tenant_id: str, request: BroadcastRequest, page: DirectoryPage
    ) -> tuple[int, int]:
        include_guests = request.audience.include_guests
        rows = [
            self._row(
                notification_id,
                Recipient(tenant_id=tenant_id, kind=RecipientKind.USER, recipient_id=user.id.lower()),
            )
            for user in page.users
            if user.enabled and (include_guests or not user.guest)
        ]
        return await self._ledger.add_pending(rows), len(page.users)

    async def _graph_client(self) -> Graph:
        if self._graph is None:
            raise RecordNotFound("this materialiser has no Graph client for groups or includeUninstalled")
        return await self._graph()

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
