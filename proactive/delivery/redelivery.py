"""Re-delivery (ARCHITECTURE.md flow 6): the ``deliveries-retry`` queue, its poison queue, reconciliation.

The three triggers of :mod:`proactive.functions.redelivery` each call one method of :class:`Redelivery`:

``deliveries_retry`` (queue trigger on ``Settings.queues.deliveries_retry``, with a Durable client)
    Makes sure the one ledger row a :class:`~proactive.delivery.ports.RetryRequest` names is taken by a
    paced run of its tenant; it never sends itself (:mod:`proactive.delivery.redrive` has the design and the
    decision table): a row not due yet goes back to the queue invisible until its ``notBefore``; a due
    row starts the tenant's re-drive run (``tenant_lane`` under a deterministic instance id), or wakes the
    one under way and is checked again later; a row sent or settled meanwhile completes the message; a row
    handed off more than ``policies.MAX_REDRIVES`` times is dead-lettered (``RetryRequest.attempt``, the
    row's ``redrives``). A message that is not a ``RetryRequest`` can never succeed: it is dead-lettered at
    once instead of being delivered five times. A trigger that fails (storage, the Durable client) is
    delivered again by the host and, after ``maxDequeueCount`` (5), moved to ``<queue>-poison``.

``deliveries_retry_poison`` (queue trigger on ``<queue>-poison``)
    Writes a :class:`~proactive.models.DeadLetter` (id ``{notificationId}:{tenantId}:{recipientKey}``, so a
    repeat is an idempotent upsert) with the row's last error as the reason, **then** marks the row
    ``dead_lettered`` (ETag-guarded, only from ``pending``). In that order a crash between the two leaves a
    dead letter and a pending row, and the repeated poison message finishes the job; the other order could
    leave a ``dead_lettered`` row with no dead letter saying why. A row that meanwhile settled (another
    path sent it) is left alone and no dead letter is written.
    When this trigger itself fails on the message's last delivery, the failure is logged and recorded as
    a dead letter with reason code ``poison_handler_failed``
    (:func:`~proactive.delivery.dead_letters.record_poison_failure`) instead of going to ``-poison-poison``, which
    nothing watches. Dead letters are listed and re-driven through ``/api/deadletters``
    (:mod:`proactive.delivery.dead_letters`).

``reconcile`` (timer, :data:`RECONCILE_SCHEDULE`, every 5 minutes)
    Which notifications: every ``running`` one, and ``completed`` / ``failed`` / ``cancelled`` ones updated
    within :data:`FINISHED_LOOKBACK` (read from the notifications' reconciliation index, see "Scan cost"
    below). The finished ones matter: a ``send_batch`` killed mid-flight leaves its claimed rows
    ``sending``, Durable re-runs the activity (which claims *other* rows), and the orchestration can complete
    with those rows still ``sending``. For each notification and tenant:

    * rows ``sending`` for longer than ``Settings.reconcile_after_seconds`` (``RECONCILE_AFTER_SECONDS``) go back to ``pending``
      (:func:`~proactive.delivery.batch.reconcile_stuck`): the one duplicate window (Teams may have accepted the send
      the ledger never recorded), counted in :attr:`ReconcileReport.reconciled`;
    * those rows, ``pending`` rows a retry message should have taken long ago (``not_before`` and
      ``updated_at`` both older than the deadline: a lost message), and ``deferred`` rows whose quiet
      window ended that long ago with no run to take them, get a fresh ``RetryRequest`` (``attempt`` =
      the row's ``redrives``: a lost reminder is no new hand-off), which leads to a paced re-drive run. The
      orchestration may pick the same row while it still runs; the claim lets exactly one of them send it;
    * of a cancelled notification, those rows become ``cancelled`` instead (never re-sent).

    ``pending`` rows with no ``not_before`` of a *running* notification are the orchestration's (they wait
    for their turn at the limiter); they are never queued, or the queue would send around the pacing.

    ``RECONCILE_AFTER_SECONDS`` (default 15 min) must exceed the longest a sender can hold a claimed row, which is
    bounded by host.json ``functionTimeout`` (10 min): a shorter deadline could re-drive a live send.

Scan cost: the notifications come from the reconciliation index of
:class:`~proactive.storage.stores.TableNotificationStore` (one partition with a row per running or recently
finished notification; rows of notifications finished before the lookback are dropped as they are read),
so a run reads what is running or just finished, however many notifications the table holds. A table
written before the index existed is indexed once by the first run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from proactive import json_input, telemetry
from proactive.broadcast.audience import audience_tenants, stored_request
from proactive.delivery.contract import Reason
from proactive.delivery.ports import RetryRequest, WorkQueue
from proactive.delivery.redrive import Action, Decision, PacedRuns, decide, recheck_delay
from proactive.errors import ConcurrencyConflict
from proactive.models import DeadLetter, DeliveryStatus, ErrorInfo, Notification, NotificationStatus
from proactive.storage.ports import DeadLetterStore, DeliveryLedger, NotificationStore
from proactive.storage.stores import TableNotificationStore

__all__ = [
    "FINISHED_LOOKBACK",
    "ReconcileReport",
    "Redelivery",
    "notifications_to_reconcile",
    "reconcile_stuck",
]

logger = logging.getLogger(__name__)


# Finished notifications younger than this are still reconciled (a crash in their last batch).
FINISHED_LOOKBACK = timedelta(days=1)


# A RetryRequest written by reconciliation is visible at once.
_REQUEUE_DELAY = 0.0


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconciliation run did.

    Attributes:
        notifications: notifications looked at.
        reconciled: rows returned from ``sending`` to ``pending`` (the duplicate window).
        requeued: ``RetryRequest`` messages written (reconciled rows and lost hand-offs).
        cancelled: reconciled rows of cancelled notifications marked ``cancelled``.
    """

    notifications: int = 0
    reconciled: int = 0
    requeued: int = 0
    cancelled: int = 0

    def __add__(self, other: ReconcileReport) -> ReconcileReport:
        return ReconcileReport(
            self.notifications + other.notifications,
            self.reconciled + other.reconciled,
            self.requeued + other.requeued,
            self.cancelled + other.cancelled,
        )


class Redelivery:
    """The services of the three triggers (see the module docstring).

    Args:
        ledger: the delivery ledger.
        notifications: the notifications (urgency of a re-drive run, the cancelled flag).
        dead_letters: where exhausted messages are kept.
        retries: queue ``deliveries-retry`` (reconciliation writes to it; the trigger puts messages back).
        clock: current time (aware UTC).
    """

    def __init__(
        self,
        *,
        ledger: DeliveryLedger,
        notifications: NotificationStore,
        dead_letters: DeadLetterStore,
        retries: WorkQueue,
        clock: Callable[[], datetime],
    ) -> None:
        self._ledger = ledger
        self._notifications = notifications
        self._dead_letters = dead_letters
        self._retries = retries
        self._clock = clock

    # ---- deliveries-retry -------------------------------------------------------------------------

    async def redrive(self, raw: bytes, runs: PacedRuns) -> Decision:
        """Make sure a paced run takes the row a ``deliveries-retry`` message names (:mod:`proactive.delivery.redrive`).

        Returns:
            What was done: ``done`` (nothing to do, or a malformed message, dead-lettered at once),
            ``dead_letter``, ``wait`` (the message was put back with ``delay``) or ``run`` (a run started).

        Raises:
            StorageError: the ledger or the queue failed (the host delivers the message again).
        """
        request = _parse(raw)
        if request is None:
            await self._malformed(raw)
            return Decision(Action.DONE, why="malformed message")
        found = await self._notifications.get(request.notification_id)
        if found is None:
            logger.warning("A retry message names a notification that does not exist; dropped")
            return Decision(Action.DONE, why="notification not found")
        notification = found.value
        row = await self._ledger.get(request.notification_id, request.tenant_id, request.recipient_key)
        decision = decide(
            request,
            row.value if row is not None else None,
            cancelled=notification.status is NotificationStatus.CANCELLED,
            now=self._clock(),
        )
        if decision.action is Action.DEAD_LETTER:
            await self._dead_letter(request, source_queue=self._retries.name)
        elif decision.action is Action.WAIT:
            await self._retries.put(request.to_json(), delay=decision.delay)
        elif decision.action is Action.RUN and not await runs.ensure(notification, request.tenant_id):
            delay = recheck_delay(request.waits)
            again = request.model_copy(update={"waits": request.waits + 1})
            await self._retries.put(again.to_json(), delay=delay)
            decision = Decision(Action.WAIT, delay=delay, why="a re-drive run is under way: woken")
        return decision

    # ---- deliveries-retry-poison ------------------------------------------------------------------

    async def dead_letter(self, raw: bytes, *, source_queue: str) -> DeadLetter | None:
        """Dead-letter the row a poison message names (see the module docstring).

        Returns:
            The dead letter written, or ``None`` when the row had settled meanwhile.
        """
        request = _parse(raw)
        if request is None:
            return await self._malformed(raw, source_queue=source_queue)
        return await self._dead_letter(request, source_queue=source_queue)

    async def _dead_letter(self, request: RetryRequest, *, source_queue: str) -> DeadLetter | None:
        for _ in range(5):
            found = await self._ledger.get(request.notification_id, request.tenant_id, request.recipient_key)
            if found is None:
                entry = self._entry(request, source_queue, "ledger row not found", "ledger_row_not_found")
                await self._dead_letters.add(entry)
                return entry
            row = found.value
            if row.status is DeliveryStatus.DEAD_LETTERED:
                entry = self._entry(request, source_queue, *_reason(row.last_error, request))
                await self._dead_letters.add(entry)  # a repeat after a crash: same id, same row
                return entry
            if row.status is not DeliveryStatus.PENDING:
                logger.info("Poison message for a row that is now %s: nothing to dead-letter", row.status)
                return None
            entry = self._entry(request, source_queue, *_reason(row.last_error, request))
            await self._dead_letters.add(entry)
            marked = row.model_copy(
                update={
                    "status": DeliveryStatus.DEAD_LETTERED,
                    "not_before": None,
                    "updated_at": self._clock(),
                }
            )
            try:
                await self._ledger.replace(marked, found.etag)
            except ConcurrencyConflict:
                continue  # claimed or changed meanwhile: look again
            logger.warning("Dead-lettered a delivery after its retries ran out: %s", entry.reason)
            telemetry.current().dead_lettered(source_queue, entry.reason_code)
            return entry
        raise ConcurrencyConflict("the ledger row kept changing while it was dead-lettered")

    def _entry(self, request: RetryRequest, source_queue: str, reason: str, reason_code: str) -> DeadLetter:
        return DeadLetter(
            id=f"{request.notification_id}:{request.tenant_id}:{request.recipient_key}",
            source_queue=source_queue,
            payload=request.to_json(),
            reason=reason,
            created_at=self._clock(),
            notification_id=request.notification_id,
            tenant_id=request.tenant_id,
            reason_code=reason_code[:64],
        )

    async def _malformed(self, raw: bytes, *, source_queue: str | None = None) -> DeadLetter:
        text = raw.decode(errors="replace")
        entry = DeadLetter(
            id="malformed:" + _digest(text),
            source_queue=source_queue or self._retries.name,
            payload={"raw": text[:2000]},
            reason="malformed_message: not a RetryRequest",
            created_at=self._clock(),
            reason_code="malformed_message",
        )
        await self._dead_letters.add(entry)
        logger.warning("Dead-lettered a malformed %s message", entry.source_queue)
        telemetry.current().dead_lettered(entry.source_queue, entry.reason_code)
        return entry

    # ---- reconcile --------------------------------------------------------------------------------

    async def reconcile(
        self, notifications: Sequence[Notification], *, older_than: timedelta
    ) -> ReconcileReport:
        """Reconcile the given notifications' rows (see the module docstring)."""
        report = ReconcileReport()
        for notification in notifications:
            for tenant in audience_tenants(stored_request(notification)):
                report += await self._reconcile_tenant(notification, tenant, older_than)
            report += ReconcileReport(notifications=1)
        telemetry.current().reconciled(
            reconciled=report.reconciled, requeued=report.requeued, cancelled=report.cancelled
        )
        if report.reconciled or report.requeued:
            logger.warning(
                "Reconciliation: %d rows back from 'sending' (may duplicate), %d re-queued, %d cancelled",
                report.reconciled,
                report.requeued,
                report.cancelled,
            )
        return report

    async def _reconcile_tenant(
        self, notification: Notification, tenant: str, older_than: timedelta
    ) -> ReconcileReport:
        now = self._clock()
        reconciled = await reconcile_stuck(
            self._ledger, notification.id, tenant, now=now, older_than=older_than
        )
        cancelled = notification.status is NotificationStatus.CANCELLED
        cutoff = now - older_than
        requeued = marked = 0
        continuation: str | None = None
        while True:
            page = await self._ledger.list(
                notification.id,
                tenant,
                statuses=[DeliveryStatus.PENDING, DeliveryStatus.DEFERRED],
                continuation=continuation,
            )
            for item in page.items:
                row = item.value
                just_reconciled = (
                    row.status is DeliveryStatus.PENDING
                    and row.last_error is not None
                    and row.last_error.code == Reason.RECONCILED
                    and row.not_before is None
                )
                # A hand-off whose message was lost, or a quiet window that ended with no run to take the row.
                lost = row.not_before is not None and row.not_before <= cutoff and row.updated_at <= cutoff
                if cancelled and (just_reconciled or lost):
                    try:
                        await self._ledger.replace(
                            row.model_copy(update={"status": DeliveryStatus.CANCELLED, "updated_at": now}),
                            item.etag,
                        )
                        marked += 1
                    except ConcurrencyConflict:
                        pass
                elif just_reconciled or lost:
                    request = RetryRequest(
                        notification_id=notification.id,
                        tenant_id=tenant,
                        recipient_key=row.recipient_key,
                        reason=Reason.RECONCILED,
                        uncertain=just_reconciled,
                        attempt=row.redrives,
                    )
                    await self._retries.put(request.to_json(), delay=_REQUEUE_DELAY)
                    requeued += 1
            continuation = page.continuation
            if continuation is None:
                break
        return ReconcileReport(reconciled=reconciled, requeued=requeued, cancelled=marked)


async def notifications_to_reconcile(
    store: TableNotificationStore, *, now: datetime, lookback: timedelta = FINISHED_LOOKBACK
) -> list[Notification]:
    """Running notifications, and finished ones updated within ``lookback`` (module docstring).

    Read from the store's reconciliation index, so the cost follows the running and recently finished
    notifications, not every notification ever stored.
    """
    return await store.reconcile_candidates(now=now, lookback=lookback)


def _parse(raw: bytes) -> RetryRequest | None:
    try:
        body = json_input.loads(raw)  # nested too deeply is a ValueError too: dead-lettered, not a crash
        return RetryRequest.from_json(body) if isinstance(body, dict) else None
    except (ValueError, ValidationError):
        return None


def _reason(error: ErrorInfo | None, request: RetryRequest) -> tuple[str, str]:
    """The reason for people and its low-cardinality code."""
    if error is None:
        return f"retries exhausted ({request.reason})", request.reason
    detail = f": {error.message}" if error.message else ""
    return f"retries exhausted ({error.code}{detail})"[:1000], error.code


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def reconcile_stuck(
    ledger: DeliveryLedger,
    notification_id: str,
    tenant_id: str,
    *,
    now: datetime,
    older_than: timedelta,
) -> int:
    """Return rows stuck in ``sending`` for longer than ``older_than`` to ``pending`` (at-least-once).

    A row stays ``sending`` only when its sender crashed (or could not write) between the claim and the
    record. Teams may or may not have received that send: re-driving it is the documented duplicate window
    (module docstring). ``older_than`` must exceed the longest a ``send_batch`` can run (host.json
    ``functionTimeout``, 10 min, so 15 min is a safe choice), or a live send could be re-driven.

    Returns:
        How many rows were returned to ``pending`` (rows another writer changed meanwhile are left alone).
    """
    cutoff = now - older_than
    moved = 0
    continuation: str | None = None
    while True:
        page = await ledger.list(
            notification_id, tenant_id, statuses=[DeliveryStatus.SENDING], continuation=continuation
        )
        for row in page.items:
            if row.value.status is not DeliveryStatus.SENDING or row.value.updated_at > cutoff:
                continue
            reset = row.value.model_copy(
                update={
                    "status": DeliveryStatus.PENDING,
                    "not_before": None,
                    "updated_at": now,
                    "last_error": ErrorInfo(
                        code=Reason.RECONCILED,
                        message="left 'sending' by a sender that stopped; re-driven (may duplicate)",
                    ),
                }
            )
            try:
                await ledger.replace(reset, row.etag)
                moved += 1
            except ConcurrencyConflict:
                continue
        continuation = page.continuation
        if continuation is None:
            return moved
