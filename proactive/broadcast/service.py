"""The broadcast service: what the ``/api/broadcasts`` routes do.

:class:`BroadcastService` sits behind ``/api/broadcasts`` (ARCHITECTURE.md flow 3 and 7):

* ``start``: validate (:func:`~proactive.broadcast.request.parse_broadcast_request`), refuse tenants outside
  the allow-list (403 ``tenant_not_allowed``), store the notification **insert-only** (the notification id
  is the idempotency key), then start orchestration ``broadcast`` with instance id = notification id. The
  same id posted again starts nothing and answers with the existing instance; a *different* body under a
  taken id is 409 ``notification_conflict`` (``sendAt`` is left out of the comparison: a retry after the
  scheduled time has passed parses it as "now"). A stored notification whose orchestration never started
  (a crash between the two writes) is started by the repeated POST.
* ``status``: counts by ledger status summed over the audience's tenants (the ledger is the truth, not
  the orchestration's custom status), plus throttled count, rate and timing from the orchestration.
* ``deliveries``: ledger rows as JSON or CSV, filtered by status, paged with an opaque continuation
  (tenant index + the table's own continuation).
* ``cancel``: sets the notification's ``cancelled`` flag (read by every ``send_batch``) and raises the
  ``cancel`` event to the broadcast and its tenant orchestrations (ends timer waits early). Rows already
  sent stay recorded; the rest become ``cancelled``.
* ``update`` (PATCH) and ``recall`` (DELETE messages): store the new message (checked like a POST, against
  every user's data), then start a paced fan-out with operation ``update`` / ``delete`` under instance id
  ``{id}.update`` / ``{id}.delete``. Only once the send has finished, one at a time (409 otherwise).

The status body is built in :mod:`proactive.broadcast.status`, the deliveries pages in
:mod:`proactive.broadcast.export`; the activities are :mod:`proactive.broadcast.activities`.

Ids starting with ``welcome-`` are the tenants' welcome notifications (:mod:`proactive.bot.welcome`): their
status and deliveries can be read here, but no caller can start, cancel, update or recall one (400 / 404).

Durable's client is behind the :class:`~proactive.broadcast.ports.Orchestrations` port.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from proactive import function_names as fn
from proactive import json_input
from proactive.bot.welcome import WELCOME_PREFIX
from proactive.broadcast.audience import audience_tenants, stored_request
from proactive.broadcast.export import DeliveriesPage, delivery_item, parse_page_size, parse_statuses
from proactive.broadcast.ports import Orchestrations
from proactive.broadcast.request import BroadcastLimits, BroadcastRequest, parse_broadcast_request
from proactive.broadcast.status import ledger_counts, public_status, send_rate
from proactive.errors import ConcurrencyConflict, InvalidInput
from proactive.models import DeliveryStatus, Notification, NotificationStatus, Operation
from proactive.orchestration import policies
from proactive.orchestration.broadcast import child_instance_id
from proactive.orchestration.runs import (
    BroadcastRun,
)
from proactive.orchestration.tenant_broadcast import lane_instance_id, redrive_instance_id
from proactive.storage.paging import decode_continuation, encode_continuation
from proactive.storage.ports import DeliveryLedger, NotificationStore

_OPERATION_SUFFIX: Final[Mapping[str, str]] = {"update": ".update", "delete": ".delete"}


def operation_instance_id(notification_id: str, operation: Operation) -> str:
    """The ``broadcast`` instance of an operation: the id itself for ``send``, ``{id}.update`` / ``{id}.delete``."""
    return notification_id + _OPERATION_SUFFIX.get(operation, "")


@dataclass(frozen=True)
class Accepted:
    """A started (or already running) orchestration for a notification."""

    notification_id: str
    instance_id: str
    created: bool
    operation: Operation = "send"

    def to_json(self, status_url: str) -> dict[str, Any]:
        """The ``202`` body: ours, never Durable's management URLs (they carry the system key in Azure)."""
        body: dict[str, Any] = {"id": self.notification_id, "status": "accepted", "statusUri": status_url}
        if self.operation != "send":
            body["operation"] = self.operation
        return body


def not_found(notification_id: str) -> InvalidInput:
    """404 with the contract body."""
    return InvalidInput(f"no broadcast with id {notification_id!r}", code="not_found", field="id", status=404)


def conflict(code: str, message: str) -> InvalidInput:
    """409 with the contract body."""
    return InvalidInput(message, code=code, status=409)


class BroadcastService:
    """The HTTP side of broadcasts (see the module docstring).

    Args:
        notifications: notification store.
        ledger: delivery ledger.
        orchestrations: the Durable client, behind its port.
        tenant_allowed: ``Settings.tenant_allowed``.
        batch_size: ``Settings.batch_size``.
        batches_per_execution: ``Settings.batches_per_execution``.
        clock: current time (aware UTC).
        new_id: generator of notification ids when the caller gives none.
        limits: request limits.
    """

    def __init__(
        self,
        notifications: NotificationStore,
        ledger: DeliveryLedger,
        orchestrations: Orchestrations,
        *,
        tenant_allowed: Callable[[str], bool],
        batch_size: int,
        batches_per_execution: int,
        clock: Callable[[], datetime],
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        limits: BroadcastLimits | None = None,
    ) -> None:
        self._notifications = notifications
        self._ledger = ledger
        self._orchestrations = orchestrations
        self._tenant_allowed = tenant_allowed
        self._batch_size = batch_size
        self._batches_per_execution = batches_per_execution
        self._clock = clock
        self._new_id = new_id
        self._limits = limits or BroadcastLimits()

    # ------------------------------------------------------------------ start

    async def start(self, body: bytes) -> Accepted:
        """Validate, store insert-only, start ``broadcast`` (see the module docstring).

        Raises:
            InvalidInput: 400/413 bad body, 403 tenant not allowed, 409 same id with another body.
        """
        request = parse_broadcast_request(body, now=self._clock(), limits=self._limits)
        if request.notification_id is not None and _reserved(request.notification_id):
            raise InvalidInput(
                f"notification ids starting with {WELCOME_PREFIX!r} are reserved for welcome messages",
                code="reserved_notification_id",
                field="notificationId",
            )
        tenants = audience_tenants(request)
        refused = [tenant for tenant in tenants if not self._tenant_allowed(tenant)]
        if refused:
            raise InvalidInput(
                "the audience addresses tenants this deployment does not serve",
                code="tenant_not_allowed",
                status=403,
                details=[
                    {
                        "field": "audience",
                        "code": "tenant_not_allowed",
                        "message": f"tenant {t} is not allowed",
                    }
                    for t in refused[:100]
                ],
            )
        notification_id = request.notification_id or self._new_id()
        request = request.model_copy(update={"notification_id": notification_id})
        stored = request.to_json()
        notification = Notification(
            id=notification_id,
            request=stored,
            status=NotificationStatus.SCHEDULED if request.send_at else NotificationStatus.ACCEPTED,
            created_at=self._clock(),
        )
        created = True
        try:
            await self._notifications.create(notification)
        except ConcurrencyConflict:
            created = False
            existing = await self._notifications.get(notification_id)
            if existing is None:  # deleted in between: extremely unlikely, let the caller retry
                raise
            if _without_schedule(existing.value.request) != _without_schedule(stored):
                raise conflict(
                    "notification_conflict",
                    f"notificationId {notification_id!r} is taken by a broadcast with a different body",
                ) from None
            request = stored_request(existing.value)
        if await self._orchestrations.state(notification_id) is None:
            try:
                await self._orchestrations.start(
                    fn.BROADCAST, notification_id, self._run(request, "send").to_json()
                )
            except Exception:
                # A concurrent repeat of this POST may have started it between our read and our start.
                if created or await self._orchestrations.state(notification_id) is None:
                    raise
        return Accepted(notification_id, notification_id, created)

    def _run(self, request: BroadcastRequest, operation: Operation) -> BroadcastRun:
        assert request.notification_id is not None
        send_at = request.send_at.isoformat() if request.send_at and operation == "send" else None
        return BroadcastRun(
            notification_id=request.notification_id,
            operation=operation,
            urgency=request.urgency,
            tenants=audience_tenants(request),
            send_at=send_at,
            batch_size=self._batch_size,
            batches_per_execution=self._batches_per_execution,
        )

    # ------------------------------------------------------------------ read

    async def _require(self, notification_id: str) -> tuple[Notification, str]:
        found = await self._notifications.get(notification_id)
        if found is None:
            raise not_found(notification_id)
        return found.value, found.etag

    async def status(self, notification_id: str) -> dict[str, Any]:
        """``GET /api/broadcasts/{id}``: counts, throttled, rate, timing.

        Raises:
            InvalidInput: 404 unknown id.
        """
        notification, _ = await self._require(notification_id)
        request = stored_request(notification)
        counts = await ledger_counts(self._ledger, notification_id, audience_tenants(request))
        state = await self._orchestrations.state(notification_id)
        custom = state.custom_status if state and isinstance(state.custom_status, dict) else {}
        started_at, completed_at = custom.get("startedAt"), custom.get("completedAt")
        public = public_status(notification, state, custom)
        if public == "completed" and any(counts.get(s.value, 0) for s in DeliveryStatus if not s.terminal):
            # The orchestration is done but rows are still on their way (installing, re-driven after a
            # hand-off, reconciled after a crash): their runs settle them, and until then it is running.
            public = "running"
        body: dict[str, Any] = {
            "id": notification_id,
            "status": public,
            "runtimeStatus": state.runtime_status if state else None,
            "counts": counts,
            "throttled": int(custom.get("throttled") or notification.counts.get("throttled", 0)),
            "createdAt": notification.created_at.isoformat(),
            "sendAt": request.send_at.isoformat() if request.send_at else None,
            "startedAt": started_at,
            "completedAt": completed_at,
            "rate": send_rate(
                counts.get(DeliveryStatus.SENT.value, 0), started_at, completed_at, self._clock()
            ),
        }
        operations: dict[str, Any] = {}
        for operation in ("update", "delete"):
            op_state = await self._orchestrations.state(operation_instance_id(notification_id, operation))
            if op_state is not None:
                operations[operation] = {
                    "runtimeStatus": op_state.runtime_status,
                    "instanceId": operation_instance_id(notification_id, operation),
                }
                if isinstance(op_state.output, dict) and isinstance(op_state.output.get("phase"), str):
                    operations[operation]["phase"] = op_state.output["phase"]
        if operations:
            body["operations"] = operations
        return body

    async def deliveries(
        self,
        notification_id: str,
        *,
        statuses: str | None = None,
        page_size: str | None = None,
        continuation: str | None = None,
    ) -> DeliveriesPage:
        """``GET /api/broadcasts/{id}/deliveries``: one page of rows.

        Args:
            notification_id: the broadcast.
            statuses: comma-separated delivery statuses to keep (``sent,failed``), or all.
            page_size: 1..1000 (default 100), as given in the query string.
            continuation: the previous page's continuation.

        Raises:
            InvalidInput: 404 unknown id; 400 bad status, page size or continuation.
        """
        wanted = parse_statuses(statuses)
        size = parse_page_size(page_size)
        notification, _ = await self._require(notification_id)
        tenants = audience_tenants(stored_request(notification))
        index, table_token = 0, None
        if continuation:
            position = decode_continuation(continuation)
            raw_index = position.get("t", "")
            # ASCII digits only (int() also takes " 1", "-1" and other scripts' digits), and a tenant that exists.
            if not re.fullmatch(r"[0-9]{1,6}", raw_index) or int(raw_index) >= len(tenants):
                raise InvalidInput(
                    "malformed continuation token", code="invalid_continuation", field="continuation"
                )
            index = int(raw_index)
            table_token = position.get("c") or None
        items: list[dict[str, Any]] = []
        while len(items) < size and index < len(tenants):
            page = await self._ledger.list(
                notification_id,
                tenants[index],
                statuses=wanted,
                page_size=size - len(items),
                continuation=table_token,
            )
            items.extend(delivery_item(v.value) for v in page.items)
            table_token = page.continuation
            if table_token is None:
                index += 1
        token = (
            encode_continuation({"t": str(index), "c": table_token or ""}) if index < len(tenants) else None
        )
        return DeliveriesPage(items, token)

    # ------------------------------------------------------------------ change

    async def cancel(self, notification_id: str) -> dict[str, Any]:
        """``POST /api/broadcasts/{id}/cancel``.

        Raises:
            InvalidInput: 404 unknown id (or a tenant's welcome notification, which no caller may cancel);
                409 ``broadcast_finished`` when the send already ended.
        """
        if _reserved(notification_id):
            raise not_found(notification_id)
        notification, etag = await self._require(notification_id)
        state = await self._orchestrations.state(notification_id)
        if state is not None and state.terminal:
            raise conflict("broadcast_finished", f"broadcast {notification_id!r} has already finished")
        for _ in range(5):
            if notification.status is NotificationStatus.CANCELLED:
                break
            try:
                cancelled = notification.model_copy(
                    update={"status": NotificationStatus.CANCELLED, "updated_at": self._clock()}
                )
                await self._notifications.replace(cancelled, etag)
                break
            except ConcurrencyConflict:
                notification, etag = await self._require(notification_id)
        tenants = audience_tenants(stored_request(notification))
        await self._orchestrations.raise_event(notification_id, fn.CANCEL_EVENT, None)
        for tenant in tenants:
            child = child_instance_id(notification_id, tenant)
            await self._orchestrations.raise_event(child, fn.CANCEL_EVENT, None)
            # Lanes wait on timers (quiet hours) that only the cancel event cuts short; the sweep lane
            # (number SEND_LANES) may not exist yet, which raise_event tolerates.
            for lane in range(policies.SEND_LANES + 1):
                await self._orchestrations.raise_event(lane_instance_id(child, lane), fn.CANCEL_EVENT, None)
            # A re-drive run of the tenant (proactive.delivery.redrive) may sleep until a quiet window ends.
            await self._orchestrations.raise_event(
                redrive_instance_id(notification_id, tenant), fn.CANCEL_EVENT, None
            )
        return {"id": notification_id, "status": "cancelling"}

    async def update(self, notification_id: str, body: bytes) -> Accepted:
        """``PATCH /api/broadcasts/{id}`` with ``{"message": {...}}``: update every sent message.

        Raises:
            InvalidInput: 404, 400/413 bad message, 409 while the send or another operation runs.
        """
        if _reserved(notification_id):
            raise not_found(notification_id)
        notification, etag = await self._require(notification_id)
        await self._check_operation_allowed(notification_id, "update")
        message = _message_patch(body, self._limits)
        merged = {k: v for k, v in notification.request.items() if k != "sendAt"}
        merged["message"] = message
        request = parse_broadcast_request(json.dumps(merged).encode(), now=self._clock(), limits=self._limits)
        updated = notification.model_copy(
            update={
                "request": {**notification.request, "message": request.message.to_json()},
                "updated_at": self._clock(),
            }
        )
        try:
            await self._notifications.replace(updated, etag)
        except ConcurrencyConflict:
            raise conflict("concurrent_change", "the broadcast changed while updating; try again") from None
        return await self._start_operation(notification_id, request, "update")

    async def recall(self, notification_id: str) -> Accepted:
        """``DELETE /api/broadcasts/{id}/messages``: delete every sent message.

        Raises:
            InvalidInput: 404, 409 while the send or another operation runs.
        """
        if _reserved(notification_id):
            raise not_found(notification_id)
        notification, _ = await self._require(notification_id)
        await self._check_operation_allowed(notification_id, "delete")
        return await self._start_operation(notification_id, stored_request(notification), "delete")

    async def _check_operation_allowed(self, notification_id: str, operation: Operation) -> None:
        state = await self._orchestrations.state(notification_id)
        if state is None or not state.terminal:
            raise conflict(
                "broadcast_in_progress",
                f"broadcast {notification_id!r} is still sending; cancel it or wait until it completes",
            )
        for other in ("update", "delete"):
            op_state = await self._orchestrations.state(operation_instance_id(notification_id, other))
            if op_state is not None and not op_state.terminal:
                raise conflict(
                    "operation_in_progress", f"an {other} of broadcast {notification_id!r} is running"
                )
        if operation == "update":
            recalled = await self._orchestrations.state(operation_instance_id(notification_id, "delete"))
            if recalled is not None:
                raise conflict(
                    "messages_recalled", f"the messages of broadcast {notification_id!r} were recalled"
                )

    async def _start_operation(
        self, notification_id: str, request: BroadcastRequest, operation: Operation
    ) -> Accepted:
        instance_id = operation_instance_id(notification_id, operation)
        await self._orchestrations.start(fn.BROADCAST, instance_id, self._run(request, operation).to_json())
        return Accepted(notification_id, instance_id, True, operation)


def _reserved(notification_id: str) -> bool:
    """A tenant's welcome notification (:mod:`proactive.bot.welcome`): readable, never started or changed here."""
    return notification_id.startswith(WELCOME_PREFIX)


def _without_schedule(request: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k != "sendAt"}


def _message_patch(body: bytes, limits: BroadcastLimits) -> Any:
    if len(body) > limits.max_body_bytes:
        raise InvalidInput(
            f"the body is {len(body):,} bytes; the limit is {limits.max_body_bytes:,}",
            code="body_too_large",
            field="",
            status=413,
        )
    try:
        parsed = json_input.loads(body or b"null")
    except ValueError:  # invalid JSON or UTF-8, or nested too deeply
        raise InvalidInput("the body is not valid JSON", code="invalid_json", field="") from None
    if not isinstance(parsed, dict) or "message" not in parsed:
        raise InvalidInput('send {"message": {...}}', code="invalid_request", field="message")
    unknown = sorted(set(parsed) - {"message"})
    if unknown:
        raise InvalidInput(
            "only the message can be updated",
            code="unknown_field",
            details=[
                {"field": name[:64], "code": "unknown_field", "message": "not updatable"}
                for name in unknown[:20]
            ],
        )
    return parsed["message"]
