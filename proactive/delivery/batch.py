"""The ``send_batch`` activity's service: send each recipient its message once, classify, record.

:class:`BatchSender` picks the next up-to-``limit`` claimable rows of one ``{notificationId}:{tenantId}``
ledger partition itself (``pending``, or ``deferred`` whose ``not_before`` has come), so no recipient list
passes through Durable, and works on them concurrently (``asyncio.Semaphore``), one shared HTTP session.

Per row (each step a value, :class:`RowOutcome`; telemetry hooks in at ``on_outcome``):

1. **claim** (:func:`proactive.delivery.ledger.claim`, ETag-guarded ``pending/deferred -> sending``); ``None`` means
   another worker has it or it is settled: skip it silently.
2. **reference**: missing or inactive ->

   * user: ``stale`` with ``no_reference`` (or the stored stale reason) and ``{tenantId, aadObjectId,
     reason}`` to queue ``installs`` (the Graph bootstrap installs the app and stores a reference, so the
     *next* broadcast reaches them); but a user whose reference was closed by their own act (blocked the
     bot: ``MessageWritesBlocked`` / ``ConversationBlockedByUser``, or ``uninstalled``) is ``unreachable``
     and never reinstalled behind their back;
   * channel or group chat: ``skipped`` with ``no_reference`` (the bot is not installed there);
   * one row, one cheap outcome and at most one queue message: a tenant full of missing references
     produces no calls to Teams at all (no error storm).

3. **service URL**: a reference whose ``serviceUrl`` fails the outbound allow-list is never used:
   ``failed`` with ``service_url_refused``.
4. **preferences** (users): opted out of everything or of the category -> ``suppressed``. Inside quiet hours
   in the recipient's time zone (preferences, else reference; unknown -> UTC, and the record says so) and not
   urgent -> ``deferred`` with ``not_before`` = the window's end (:mod:`proactive.delivery.quiet_hours`).
5. **thread windows** (channels and group chats, with ``threads``): the first request takes a place in
   the thread's windows (:mod:`proactive.limiter.threads`) after its slot; full windows -> ``deferred``
   with ``thread_busy`` and ``not_before`` = when they open (no request made).
6. **send** the rendered message (:func:`proactive.broadcast.message.render` with the row's ``data``) with
   in-process retries by type (:func:`proactive.delivery.retry.call_with_retries`): 429 after ``Retry-After``,
   412/502/503 (504 after update/delete) and connect failures with full-jitter backoff, bounded attempts.
7. **record** with an ETag-guarded replace of the claimed row:

   ================================  =============================================================
   answer                            row
   ================================  =============================================================
   2xx                               ``sent`` + activity id + conversation id
   403 MessageWritesBlocked /        ``unreachable``; the reference is deactivated with the code
   ConversationBlockedByUser
   403 BotNotInConversationRoster /  ``stale``; the reference is deactivated; ``installs`` gets
   ForbiddenOperationException /     ``{tenantId, aadObjectId | teamId, reason}``
   404 ConversationNotFound
   403 BotDisabledByAdmin            ``failed``; the batch **halts** for the tenant (rows not yet sent
                                     stay ``pending``; ``SendBatchResult.halted`` names the code)
   401 / NotEnoughPermissions /      ``failed``; halts too: every other send would fail the same way
   InvalidBotApiHost
   400 / 413                         ``failed``, never retried
   500                               ``failed`` (the docs say do not retry)
   transient, attempts exhausted     ``pending`` with ``last_error``, ``not_before`` and ``redrives``
   (or Retry-After too long)         + 1; a :class:`~proactive.delivery.ports.RetryRequest` (``attempt``
                                     = ``redrives``) goes to ``deliveries-retry``, visible at
                                     ``not_before``
   ================================  =============================================================

   Side effects (deactivate, enqueue) happen **before** the row is written: if they fail the row stays
   ``sending`` and reconciliation re-drives it, so nothing is lost (a repeated install request is harmless:
   Graph answers 409 for an installed app).

Pacing
    With ``SendBatchInput.pacing`` (the limiter grant's ``notBefore``, ``paceSeconds``, ``sendBy``,
    ``slackSeconds``) every Bot Connector request, first attempts and in-process retries alike, first takes
    a slot of a :class:`~proactive.delivery.pacing.SlotPacer` with ``limit`` slots, so the batch is spread over its
    grant instead of bursting. The claim and the reference and preference lookups come before the slot, so
    their I/O overlaps the wait. A row whose first request finds no slot is given back untouched (its
    listed status and attempts, ``last_error`` ``slot_expired``); a row whose *retry* finds none (its earlier
    attempts failed transiently, so nothing was delivered) is recorded ``pending``, due at once (its
    ``not_before``, if any, has passed and is kept) with its attempts. Either way the next batch takes it, it counts once, in ``remaining``, and rows not
    started once the slots are gone are not claimed at all. Claims follow the slots (``_ClaimBudget``):
    at most one row per slot is being worked on or has sent, and a row that made no request (its claim was
    lost to an overlapping batch, or it was suppressed, deferred or skipped) hands its slot to a spare row
    (a paced batch lists up to ``limit + min(limit, concurrency)`` candidates: a pipelined batch starts
    while its predecessor has at most about ``concurrency`` rows left to claim), so two pipelined batches of one tenant do not
    waste each other's slots. ``SendBatchResult.first_send_at`` and
    ``last_send_at`` are the starts of the first and last requests, ``slots_skipped`` the slots lost to
    lateness.

Who owns which retry (STYLE.md rule 11): this module retries in-process; rows it hands off are owned by
the ``deliveries-retry`` queue until their ``not_before``. Its trigger never sends: it starts (or wakes) a
paced re-drive run of the tenant (:mod:`proactive.delivery.redrive`), whose ``send_batch`` takes the row like any
other, so a re-drive takes the tenant's grants, reports its 429s, keeps the broadcast's urgency and waits
out quiet hours. The row's ``redrives`` counts the hand-offs; past ``policies.MAX_REDRIVES`` the trigger
dead-letters it. ``send_batch`` never picks a ``pending`` row whose ``not_before`` lies ahead: that row is
the queue's. If the enqueue itself fails the row is recorded ``pending`` without ``not_before``, so the
orchestration picks it up again.

Exactly once, and the one duplicate window
    The claim makes a re-run activity, a replayed orchestration or two concurrent workers harmless: one
    winner per row, and a row leaves ``sending`` only through its winner's ETag-guarded write. A duplicate
    is possible only when **Teams may have accepted a send that the ledger does not record as sent**:

    * a send that ended in ``Timeout`` (a gateway's 504 included) or ``ConnectionLost`` (the request may
      have been processed): it is **not** retried in-process; the row is handed to ``deliveries-retry``
      marked ``uncertain`` and counted in ``SendBatchResult.uncertain``, and its later re-drive may
      duplicate it (at-least-once, chosen over silently losing the message: the Bot Connector has no
      idempotency key to check);
    * a crash (or a failed ledger write, counted in ``unrecorded``) between Teams accepting and the row
      being written leaves the row ``sending``; :func:`~proactive.delivery.redelivery.reconcile_stuck` returns such rows to ``pending``
      after a deadline (count returned), and the re-drive may duplicate it.

    Both are the same window, "accepted but not recorded"; everything else is sent at most once. A
    ``ConnectFailed`` transport failure never reached Teams and is retried like a 503.

Update and delete (``operation="update"|"delete"``) work on ``sent`` rows with an activity id and mark each
row done in ``DeliveryRecord.last_operation`` (``update:<digest>`` or ``delete``); they are idempotent at Teams' side, so a repeated call
after a crash is harmless and timeouts are retried in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from proactive.broadcast.message import MessageContent, render
from proactive.broadcast.request import BroadcastRequest
from proactive.delivery.contract import Pacing, Reason, RowOutcome, SendBatchInput, SendBatchResult, part_of
from proactive.delivery.failures import (
    MAYBE_DELIVERED,
    USER_CLOSED,
    Halt,
    NoSlot,
    Release,
    SlotsGone,
    ThreadBusy,
    Uncertain,
    classify,
    code_of,
    install_request,
    server_error,
    status_of,
    transient_outcome,
)
from proactive.delivery.ledger import claim_listed
from proactive.delivery.pacing import SlotPacer
from proactive.delivery.ports import (
    BotConnector,
    InstallRequest,
    RetryRequest,
    Sleep,
    ThreadWindows,
    UniformSource,
    WorkQueue,
)
from proactive.delivery.quiet_hours import quiet_until
from proactive.delivery.retry import Failed, RetryPolicy, Succeeded, call_with_retries
from proactive.errors import (
    ActivityNotFound,
    BotMisconfigured,
    ConcurrencyConflict,
    DeliveryError,
    InvalidInput,
    OutboundHostRefused,
    ProactiveError,
    RecipientUnreachable,
    RecordNotFound,
    ReferenceStale,
    StorageError,
    TenantDisabled,
    Throttled,
    TransientDeliveryError,
    TransportFailure,
)
from proactive.models import (
    DeliveryRecord,
    DeliveryStatus,
    ErrorInfo,
    NotificationStatus,
    Operation,
    Preferences,
    RecipientKind,
    SendOutcome,
    SendStatus,
    StoredReference,
    Urgency,
)
from proactive.storage.ports import (
    DeliveryLedger,
    NotificationStore,
    PreferenceStore,
    ReferenceStore,
    Versioned,
)

__all__ = ["BatchSender"]

# How long before its grant's notBefore a paced batch starts claiming and preparing rows (see send_batch):
# more than preparation takes (tens of ms on Azure storage, a second under load), far below the
# reconciliation deadline (RECONCILE_AFTER_SECONDS, 15 min by default), which must exceed the time a
# claimed row can wait for its request.
PREPARE_AHEAD_SECONDS = 2.0

logger = logging.getLogger(__name__)

MAX_HANDOFF_DELAY = 3600.0
# How long a row waits when other senders took the thread's places under each of its tries: the shortest
# per-thread window (teams-platform-facts.md section 1), after which those senders' places are settled.
THREAD_CONTENDED_DELAY = timedelta(seconds=1)


@dataclass
class _Batch:
    """What every row of one batch shares."""

    notification_id: str
    tenant_id: str
    now: datetime
    urgent: bool
    message: MessageContent
    category: str | None
    operation: Operation = "send"
    halted: str | None = None
    pacer: SlotPacer | None = None
    first_send: datetime | None = None
    last_send: datetime | None = None
    left: int = 0  # rows not worked on (halt, no slot) or given back: claimable for the next batch
    returned: int = 0  # of those, rows claimed and given back
    # Read for the whole batch before its rows start (see BatchSender._prefetch); a key missing here is
    # read on its own, a key mapped to None has no row.
    references: dict[str, StoredReference | None] = field(default_factory=dict)
    preferences: dict[str, Preferences | None] = field(default_factory=dict)

    def started(self, moment: datetime) -> None:
        """Note that a request started at ``moment``."""
        if self.first_send is None or moment < self.first_send:
            self.first_send = moment
        if self.last_send is None or moment > self.last_send:
            self.last_send = moment

    @property
    def stopped(self) -> bool:
        """Whether rows not started yet should be left alone (halted, or no slot will come)."""
        return self.halted is not None or (self.pacer is not None and self.pacer.exhausted)


class _ClaimBudget:
    """How many more rows a paced batch may start: one per slot of its grant.

    A row holds a unit from before its claim until it ends; the unit is spent if the row made a request
    (it used a slot) and comes back otherwise (claim lost to another batch, suppressed, deferred, skipped,
    given back), so a spare row can use that slot. :meth:`take` waits while every unit is held by a row
    still working; it answers ``False`` once all are spent.
    """

    def __init__(self, units: int) -> None:
        self._free = units
        self._held = 0
        self._changed = asyncio.Event()

    async def take(self) -> bool:
        while self._free == 0 and self._held > 0:
            self._changed.clear()
            await self._changed.wait()
        if self._free == 0:
            return False
        self._free -= 1
        self._held += 1
        return True

    def give(self, *, used: bool) -> None:
        self._held -= 1
        if not used:
            self._free += 1
        self._changed.set()


@dataclass(frozen=True)
class _Candidates:
    rows: list[Versioned[DeliveryRecord]]
    remaining: int
    next_deferred_at: datetime | None


class BatchSender:
    """Sends batches of one notification to one tenant (see the module docstring).

    Args:
        ledger: the delivery ledger.
        references: conversation references.
        preferences: users' opt-outs and quiet hours.
        notifications: where the notification (its stored request: message, category) is read.
        connector: the Bot Connector.
        installs: queue ``installs`` (the Graph bootstrap reads it); ``None`` when the bootstrap is off
            (no ``TEAMS_APP_ID``: there is no app to install), and rows without a usable reference stay
            ``stale`` with their reason.
        retries: queue ``deliveries-retry``.
        policy: in-process retry policy (:meth:`RetryPolicy.for_sends`).
        clock: current time (timestamps on rows, elapsed time).
        sleep: awaited between retries (``asyncio.sleep``).
        rng: jitter source.
        service_url_allowed: the outbound allow-list (``OutboundPolicy.for_bot_connector(...).allows``).
        concurrency: rows worked on at once inside a batch (claim, lookups, waiting for a slot, sending).
        handoff_delay: seconds before a handed-off row is retried (at least the ``Retry-After``).
        on_outcome: called with every :class:`RowOutcome` (the one place for metrics).
        threads: per-thread request windows (:mod:`proactive.limiter.threads`) for channels and group chats,
            the threads that receive many messages; ``None`` leaves them to Teams' 429s.
    """

    def __init__(
        self,
        *,
        ledger: DeliveryLedger,
        references: ReferenceStore,
        preferences: PreferenceStore,
        notifications: NotificationStore,
        connector: BotConnector,
        installs: WorkQueue | None,
        retries: WorkQueue,
        policy: RetryPolicy,
        clock: Callable[[], datetime],
        sleep: Sleep,
        rng: UniformSource,
        service_url_allowed: Callable[[str], bool],
        concurrency: int = 16,
        handoff_delay: float = 60.0,
        on_outcome: Callable[[RowOutcome], None] | None = None,
        threads: ThreadWindows | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._ledger = ledger
        self._references = references
        self._preferences = preferences
        self._notifications = notifications
        self._connector = connector
        self._installs = installs
        self._retries = retries
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._allowed = service_url_allowed
        self._concurrency = concurrency
        self._handoff_delay = handoff_delay
        self._on_outcome = on_outcome
        self._threads = threads

    # ---- entry points -----------------------------------------------------------------------------

    async def send_batch(self, request: SendBatchInput) -> SendBatchResult:
        """Work on the next up-to-``limit`` claimable rows; see the module docstring.

        Raises:
            StorageError: the ledger could not be read or a claim failed (the activity fails and is
                retried; claimed rows it could not settle stay ``sending`` for reconciliation).
        """
        started = self._clock()
        waited = 0.0
        if request.pacing is not None:
            # Claim no row long before its time: a claimed row is 'sending', and reconciliation re-drives
            # rows 'sending' past its deadline. The orchestration starts this activity as soon as it has the
            # grant (up to BATCH_START_LEAD ahead), so wait here until PREPARE_AHEAD before notBefore.
            ahead = (request.pacing.not_before - started).total_seconds() - PREPARE_AHEAD_SECONDS
            if ahead > 0:
                await self._sleep(ahead)
                waited = ahead
        batch = await self._batch(request.notification_id, request.tenant_id, request.now, request.urgency)
        if batch is None:
            return SendBatchResult(halted="cancelled", elapsed_ms=self._elapsed(started))
        operation = batch.operation = request.operation
        marker = _marker(operation, batch.message)
        budget: _ClaimBudget | None = None
        capacity = request.limit
        if request.pacing is not None:
            batch.pacer = self._pacer(request.pacing, request.limit)
            if operation == "send":
                # Claims follow the slots: one row claimed per slot, and a slot whose row was taken by a
                # concurrent batch (pipelined batches overlap) or needed no request goes to a spare row.
                budget = _ClaimBudget(request.limit)
                capacity = request.limit + min(request.limit, self._concurrency)
        if operation == "send":
            candidates = await self._send_candidates(request, capacity)
        else:
            candidates = await self._sent_candidates(request, marker, capacity)
        await self._prefetch(batch, candidates.rows, with_preferences=operation == "send")

        def work(row: Versioned[DeliveryRecord]) -> Awaitable[RowOutcome | None]:
            if operation == "send":
                return self._send_row(batch, row)
            return self._operate_row(batch, row, operation, marker)

        semaphore = asyncio.Semaphore(self._concurrency)

        async def bounded(row: Versioned[DeliveryRecord]) -> RowOutcome | None:
            async with semaphore:
                if budget is None:
                    if batch.stopped:
                        batch.left += 1
                        return None
                    return await work(row)
                if not await budget.take():
                    batch.left += 1  # every slot is used: the row stays claimable for the next batch
                    return None
                used = False
                try:
                    if batch.stopped:
                        batch.left += 1
                        return None
                    outcome = await work(row)
                    used = outcome is not None and outcome.requests > 0
                    return outcome
                finally:
                    budget.give(used=used)

        results = await asyncio.gather(*(bounded(row) for row in candidates.rows), return_exceptions=True)
        outcomes = [r for r in results if isinstance(r, RowOutcome)]
        for outcome in outcomes:
            self._emit(outcome)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return self._result(batch, outcomes, candidates, batch.left, started, waited)

    async def _prefetch(
        self, batch: _Batch, rows: list[Versioned[DeliveryRecord]], *, with_preferences: bool
    ) -> None:
        """Read the references (and users' preferences) of every listed row in a few queries at once,
        instead of two point reads per row after its claim: half the storage requests of a send, and the
        rows are ready sooner. A preference changed in the second between this read and the row's request
        is honoured from the next broadcast on, as it would be when it changed just after the request."""
        keys = [row.value.recipient_key for row in rows]
        users = [recipient for kind, recipient in map(_split_key, keys) if kind is RecipientKind.USER]
        if not keys:
            return
        references, preferences = await asyncio.gather(
            self._references.get_many(batch.tenant_id, keys),
            self._preferences.get_many(batch.tenant_id, users) if with_preferences and users else _nothing(),
        )
        batch.references = {key: references.get(key) for key in keys}
        if with_preferences:
            batch.preferences = {user: preferences.get(user) for user in users}

    async def _reference(self, batch: _Batch, key: str) -> StoredReference | None:
        if key in batch.references:
            return batch.references[key]
        return await self._references.get(batch.tenant_id, key)

    async def _preferences_of(self, batch: _Batch, aad_object_id: str) -> Preferences | None:
        if aad_object_id in batch.preferences:
            return batch.preferences[aad_object_id]
        return await self._preferences.get(batch.tenant_id, aad_object_id)

    def _pacer(self, pacing: Pacing, slots: int) -> SlotPacer:
        return SlotPacer(
            not_before=pacing.not_before.timestamp(),
            pace_seconds=pacing.pace_seconds,
            tokens=slots,
            send_by=pacing.send_by.timestamp(),
            slack_seconds=pacing.slack_seconds,
            clock=lambda: self._clock().timestamp(),
            sleep=self._sleep,
        )

    async def _start_request(self, batch: _Batch) -> None:
        """Right before a Bot Connector call: wait for its slot (paced batches) and note its start.

        Raises:
            Halt: the batch was halted (before, or while waiting for the slot: the slot goes unused).
            NoSlot: the grant has no slot left.
        """
        if batch.halted is not None:
            raise Halt
        if batch.pacer is None:
            batch.started(self._clock())
            return
        start = await batch.pacer.acquire()
        if start is None:
            raise NoSlot("no slot left in this batch's grant")
        if batch.halted is not None:
            raise Halt
        batch.started(datetime.fromtimestamp(start, UTC))

    # ---- selection --------------------------------------------------------------------------------

    async def _batch(
        self, notification_id: str, tenant_id: str, now: datetime, urgency: Urgency
    ) -> _Batch | None:
        found = await self._notifications.get(notification_id)
        if found is None:
            raise RecordNotFound(f"notification {notification_id!r} not found")
        if found.value.status is NotificationStatus.CANCELLED:
            return None
        request = BroadcastRequest.from_json(found.value.request)
        return _Batch(
            notification_id=notification_id,
            tenant_id=tenant_id,
            now=now,
            urgent=urgency is Urgency.URGENT,
            message=request.message,
            category=request.category,
        )

    async def _send_candidates(self, request: SendBatchInput, capacity: int) -> _Candidates:
        def due(record: DeliveryRecord) -> bool | None:
            # True: take it. None: deferred into the future (reported). False: not ours (queue-owned, or
            # another lane's part).
            if request.parts > 1 and part_of(record.recipient_key, request.parts) != request.part:
                return False
            if record.not_before is None or record.not_before <= request.now:
                return True
            return None if record.status is DeliveryStatus.DEFERRED else False

        return await self._scan(request, capacity, (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED), due)

    async def _sent_candidates(self, request: SendBatchInput, marker: str, capacity: int) -> _Candidates:
        def due(record: DeliveryRecord) -> bool:
            if request.parts > 1 and part_of(record.recipient_key, request.parts) != request.part:
                return False  # another lane's part: update and delete lanes never share a row
            done = record.last_operation
            return record.activity_id is not None and done != marker and done != "delete"

        return await self._scan(request, capacity, (DeliveryStatus.SENT,), due)

    async def _scan(
        self,
        request: SendBatchInput,
        capacity: int,
        statuses: tuple[DeliveryStatus, ...],
        due: Callable[[DeliveryRecord], bool | None],
    ) -> _Candidates:
        rows: list[Versioned[DeliveryRecord]] = []
        extra = 0
        next_deferred: datetime | None = None
        continuation: str | None = None
        page_size = max(100, min(1000, capacity * 2))
        while True:
            page = await self._ledger.list(
                request.notification_id,
                request.tenant_id,
                statuses=statuses,
                page_size=page_size,
                continuation=continuation,
            )
            for row in page.items:
                verdict = due(row.value)
                if verdict is None and row.value.not_before is not None:
                    if next_deferred is None or row.value.not_before < next_deferred:
                        next_deferred = row.value.not_before
                elif verdict and len(rows) < capacity:
                    rows.append(row)
                elif verdict:
                    extra += 1
            continuation = page.continuation
            # Once the batch is full and one more row is known to wait, ``remaining > 0`` is settled:
            # reading on would only refine a count nobody needs exactly.
            if continuation is None or extra > 0:
                break
        return _Candidates(rows, extra, next_deferred)

    # ---- one row: send ----------------------------------------------------------------------------

    async def _send_row(self, batch: _Batch, listed: Versioned[DeliveryRecord]) -> RowOutcome | None:
        # Claimed with the ETag it was listed with: a row changed since belongs to someone else or a later batch.
        claimed = await claim_listed(self._ledger, listed, self._clock())
        if claimed is None:
            return None
        try:
            return await self._deliver(batch, listed, claimed)
        except Release as released:
            await self._release(batch, listed, claimed, released)
            return None

    async def _deliver(
        self,
        batch: _Batch,
        listed: Versioned[DeliveryRecord],
        claimed: Versioned[DeliveryRecord],
    ) -> RowOutcome:
        key = claimed.value.recipient_key
        kind, recipient_id = _split_key(key)
        previous_attempts = listed.value.attempts
        reference = await self._reference(batch, key)

        if reference is None or not reference.active:
            return await self._without_reference(batch, claimed, kind, recipient_id, reference)
        if not self._allowed(reference.reference.service_url):
            return await self._settle(
                claimed,
                DeliveryStatus.FAILED,
                Reason.SERVICE_URL_REFUSED,
                "the reference's serviceUrl is not on the outbound allow-list",
                attempts=previous_attempts,
            )
        preferences = None
        if kind is RecipientKind.USER:
            preferences = await self._preferences_of(batch, recipient_id)
        if preferences is not None:
            held = await self._consent(batch, claimed, preferences, reference, previous_attempts)
            if held is not None:
                return held
        try:
            activity = _outgoing(render(batch.message, claimed.value.data), reference, batch.notification_id)
        except InvalidInput as exc:
            return await self._settle(
                claimed,
                DeliveryStatus.FAILED,
                Reason.MISSING_PLACEHOLDER,
                str(exc),
                attempts=previous_attempts,
            )
        if batch.halted is not None:
            raise Halt
        conversation_id = reference.reference.conversation.id
        service_url = reference.reference.service_url
        # Channels and group chats are the threads that receive many messages: their first request takes a
        # place in the thread's windows (retries come after a Retry-After and need none).
        reserve = self._threads is not None and kind is not RecipientKind.USER

        async def send_once() -> str | None:
            nonlocal reserve
            await self._start_request(batch)
            if reserve:
                reserve = False
                await self._reserve_thread(batch.tenant_id, conversation_id)
            try:
                return await self._connector.send_activity(service_url, conversation_id, activity)
            except TransportFailure as exc:
                if exc.code in MAYBE_DELIVERED:
                    raise Uncertain(exc) from exc
                raise

        result = await call_with_retries(send_once, policy=self._policy, sleep=self._sleep, rng=self._rng)
        if isinstance(result, Failed) and isinstance(result.error, ThreadBusy):
            # Nothing was sent: the row waits, like one in quiet hours, until the thread has room.
            return await self._settle(
                claimed,
                DeliveryStatus.DEFERRED,
                Reason.THREAD_BUSY,
                str(result.error),
                attempts=previous_attempts,
                not_before=result.error.until,
            )
        if isinstance(result, Failed) and isinstance(result.error, NoSlot):
            if result.attempts == 1:
                raise SlotsGone  # nothing was sent: give the row back as it was listed
            return await self._out_of_slots(claimed, result, previous_attempts)
        attempts = previous_attempts + result.attempts
        if isinstance(result, Succeeded):
            send = SendOutcome(
                recipient_key=key, status=SendStatus.SENT, attempts=result.attempts, activity_id=result.value
            )
            return await self._settle(
                claimed,
                DeliveryStatus.SENT,
                None,
                attempts=attempts,
                send=send,
                failures=result.failures,
                activity_id=result.value,
                conversation_id=conversation_id,
            )
        return await self._failed_send(batch, claimed, reference, result, attempts)

    async def _without_reference(
        self,
        batch: _Batch,
        claimed: Versioned[DeliveryRecord],
        kind: RecipientKind,
        recipient_id: str,
        reference: StoredReference | None,
    ) -> RowOutcome:
        attempts = claimed.value.attempts - 1  # no send was made: the claim's count does not stand
        reason = (reference.stale_reason if reference is not None else None) or Reason.NO_REFERENCE
        if kind is RecipientKind.CHANNEL and reference is None and self._installs is not None:
            # A channel of a team the bot was never added to: the Graph bootstrap installs it in the team.
            await self._installs.put(
                InstallRequest(
                    tenant_id=batch.tenant_id,
                    channel_id=recipient_id,
                    reason=reason,
                    notification_id=batch.notification_id,  # the team comes from this audience
                ).to_json()
            )
            return await self._settle(
                claimed,
                DeliveryStatus.INSTALLING,
                reason,
                "bot not in the team; install requested",
                attempts=attempts,
            )
        if kind is not RecipientKind.USER:
            return await self._settle(
                claimed,
                DeliveryStatus.SKIPPED,
                Reason.NO_REFERENCE,
                f"bot not installed ({reason})",
                attempts=attempts,
            )
        if reason.lower() in USER_CLOSED:
            return await self._settle(
                claimed,
                DeliveryStatus.UNREACHABLE,
                reason,
                "the user closed the conversation",
                attempts=attempts,
            )
        if self._installs is None:
            return await self._settle(
                claimed, DeliveryStatus.STALE, reason, "no usable reference", attempts=attempts
            )
        # Put before the row is recorded: a crash between leaves the row sending, which is re-driven.
        await self._installs.put(
            InstallRequest(
                tenant_id=batch.tenant_id,
                aad_object_id=recipient_id,
                reason=reason,
                notification_id=batch.notification_id,  # the row is re-driven once installed
            ).to_json()
        )
        return await self._settle(
            claimed,
            DeliveryStatus.INSTALLING,
            reason,
            "no usable reference; install requested",
            attempts=attempts,
        )

    async def _consent(
        self,
        batch: _Batch,
        claimed: Versioned[DeliveryRecord],
        preferences: Preferences,
        reference: StoredReference,
        attempts: int,
    ) -> RowOutcome | None:
        if not preferences.allows(batch.category):
            code = Reason.OPTED_OUT if preferences.opted_out_all else Reason.OPTED_OUT_CATEGORY
            detail = (
                "opted out of all notifications"
                if preferences.opted_out_all
                else f"opted out of {batch.category}"
            )
            return await self._settle(claimed, DeliveryStatus.SUPPRESSED, code, detail, attempts=attempts)
        if batch.urgent or preferences.quiet_hours is None:
            return None
        decision = quiet_until(
            preferences.quiet_hours, preferences.time_zone or reference.time_zone, batch.now
        )
        if decision.until is None:
            return None
        zone = "time zone unknown: UTC assumed" if decision.assumed_utc else decision.zone
        detail = f"quiet hours {preferences.quiet_hours.start}-{preferences.quiet_hours.end} ({zone})"
        return await self._settle(
            claimed,
            DeliveryStatus.DEFERRED,
            Reason.QUIET_HOURS,
            detail,
            attempts=attempts,
            not_before=decision.until,
        )

    async def _failed_send(
        self,
        batch: _Batch,
        claimed: Versioned[DeliveryRecord],
        reference: StoredReference,
        result: Failed,
        attempts: int,
    ) -> RowOutcome:
        error = result.error
        key = claimed.value.recipient_key
        failures = result.failures
        if isinstance(error, Uncertain | TransientDeliveryError) or not isinstance(
            error, DeliveryError | OutboundHostRefused
        ):
            # Transient (or not a delivery answer at all, e.g. a token endpoint hiccup): later, out of process.
            return await self._later(batch, claimed, error, result, attempts)
        status, send_status = classify(error)
        code = code_of(error)
        send = SendOutcome(
            recipient_key=key,
            status=send_status,
            attempts=result.attempts,
            http_status=status_of(error),
            error_code=code,
        )
        failed_in = reference.reference.conversation.id  # a reinstall's fresh reference stays active
        if isinstance(error, RecipientUnreachable):
            await self._references.deactivate(
                batch.tenant_id, key, code, self._clock(), conversation_id=failed_in
            )
        elif isinstance(error, ReferenceStale):
            await self._references.deactivate(
                batch.tenant_id, key, code, self._clock(), conversation_id=failed_in
            )
            install = install_request(batch.tenant_id, reference, code, batch.notification_id)
            if install is not None and self._installs is not None:
                await self._installs.put(install.to_json())
                if install.notification_id is not None:
                    status = DeliveryStatus.INSTALLING  # the install re-drives (or settles) this row
        elif isinstance(error, TenantDisabled | BotMisconfigured):
            batch.halted = batch.halted or code
            logger.warning("Sending halted for tenant %s: %s", batch.tenant_id, code)
        return await self._settle(
            claimed, status, code, str(error), attempts=attempts, send=send, failures=failures
        )

    async def _later(
        self,
        batch: _Batch,
        claimed: Versioned[DeliveryRecord],
        error: ProactiveError,
        result: Failed,
        attempts: int,
    ) -> RowOutcome:
        uncertain = isinstance(error, Uncertain)
        cause: ProactiveError = error.cause if isinstance(error, Uncertain) else error
        code = code_of(cause)
        retry_after = cause.retry_after if isinstance(cause, Throttled) else None
        delay = min(MAX_HANDOFF_DELAY, max(self._handoff_delay, retry_after or 0.0))
        not_before: datetime | None = self._clock() + timedelta(seconds=delay)
        handed_off = False
        redrives = claimed.value.redrives + 1
        message = RetryRequest(
            notification_id=batch.notification_id,
            tenant_id=batch.tenant_id,
            recipient_key=claimed.value.recipient_key,
            reason=code,
            uncertain=uncertain,
            attempt=redrives,
        )
        try:
            await self._retries.put(message.to_json(), delay=delay)
            handed_off = True
        except StorageError:
            # Nothing is lost: a pending row without not_before is picked up by the next batch.
            logger.warning("Could not queue a retry; the row stays pending for the next batch")
            not_before = None
            redrives -= 1
        send = transient_outcome(claimed.value.recipient_key, cause, result.attempts)
        return await self._settle(
            claimed,
            DeliveryStatus.PENDING,
            code,
            str(cause) + ("; may have been delivered" if uncertain else ""),
            attempts=attempts,
            send=send,
            failures=result.failures,
            not_before=not_before,
            handed_off=handed_off,
            uncertain=uncertain,
            redrives=redrives,
        )

    async def _out_of_slots(
        self, claimed: Versioned[DeliveryRecord], result: Failed, previous_attempts: int
    ) -> RowOutcome:
        # Requests were made and each was answered "not processed" (429, 412, 5xx, no connection: only
        # those are retried in-process; a timeout or lost connection never is), then the retry found no
        # slot. Nothing was delivered, so the row goes back to ``pending``, due at once: the next batch
        # (not the retry queue) takes it. Its attempts stand, it counts once, in ``remaining``, and its
        # 429s and 5xx still reach the limiter through ``failures``. Its ``not_before`` (already passed)
        # stays: a re-driven row or a welcome keeps the mark that makes reconciliation re-queue it should
        # its run end without it.
        requests = result.attempts - 1
        failures = result.failures[:-1]
        last = failures[-1]
        code = code_of(last)
        send = transient_outcome(claimed.value.recipient_key, last, requests)
        return await self._settle(
            claimed,
            DeliveryStatus.PENDING,
            Reason.NO_SLOT,
            f"no slot left in this batch's grant to retry after {code}; the next batch takes the row",
            attempts=previous_attempts + requests,
            send=send,
            failures=failures,
            not_before=claimed.value.not_before,
        )

    async def _reserve_thread(self, tenant_id: str, conversation_id: str) -> None:
        """Take a place in the thread's windows for a request starting now.

        Raises:
            ThreadBusy: the windows are full; the first start they allow.
        """
        assert self._threads is not None
        now = self._clock()
        try:
            until = await self._threads.reserve(tenant_id, conversation_id, now)
        except ConcurrencyConflict:
            # Other senders took places under every try: the thread is busy, look again a window later.
            raise ThreadBusy(now + THREAD_CONTENDED_DELAY) from None
        except StorageError:
            # Sending anyway loses nothing: Teams answers a request over its windows with a 429.
            logger.warning("Could not reserve a place in a thread's windows; sending without it")
            return
        if until is not None:
            raise ThreadBusy(until)

    # ---- one row: update / delete -----------------------------------------------------------------

    async def _operate_row(
        self, batch: _Batch, row: Versioned[DeliveryRecord], operation: Operation, marker: str
    ) -> RowOutcome | None:
        record = row.value
        reference = await self._reference(batch, record.recipient_key)
        conversation_id = record.conversation_id or (
            reference.reference.conversation.id if reference else None
        )
        activity_id = record.activity_id
        if reference is None or conversation_id is None or activity_id is None:
            return await self._mark(row, marker, DeliveryStatus.FAILED, Reason.NO_REFERENCE, "no reference")
        service_url = reference.reference.service_url
        if not self._allowed(service_url):
            return await self._mark(row, marker, DeliveryStatus.FAILED, Reason.SERVICE_URL_REFUSED, "refused")

        async def once() -> None:
            await self._start_request(batch)
            if operation == "delete":
                await self._connector.delete_activity(service_url, conversation_id, activity_id)
                return
            activity = _outgoing(render(batch.message, record.data), reference, batch.notification_id)
            await self._connector.update_activity(service_url, conversation_id, activity_id, activity)

        try:
            result = await call_with_retries(once, policy=self._policy, sleep=self._sleep, rng=self._rng)
        except Halt:
            batch.left += 1
            return None
        if isinstance(result, Succeeded):
            return await self._mark(row, marker, DeliveryStatus.SENT, None, "", result)
        error = result.error
        if isinstance(error, NoSlot):
            if result.attempts == 1:
                batch.left += 1  # nothing was called: the row is untouched and due again
                return None
            # A retry found no slot: like a transient failure below, minus the slotless "attempt".
            return RowOutcome(
                record.recipient_key,
                DeliveryStatus.PENDING,
                Reason.NO_SLOT,
                failures=result.failures[:-1],
                requests=result.attempts - 1,
                recorded=False,
            )
        if isinstance(error, TransientDeliveryError):
            # Left unmarked and counted in ``remaining``: the next batch takes the row again (update and
            # delete are idempotent, so no queue hand-off is needed).
            return RowOutcome(
                record.recipient_key,
                DeliveryStatus.PENDING,
                code_of(error),
                failures=result.failures,
                requests=result.attempts,
                recorded=False,
            )
        if isinstance(error, TenantDisabled | BotMisconfigured):
            batch.halted = batch.halted or code_of(error)
            return RowOutcome(
                record.recipient_key,
                DeliveryStatus.FAILED,
                code_of(error),
                failures=result.failures,
                requests=1,
            )
        if isinstance(error, ActivityNotFound):
            # "update/delete of an unknown message: drop" (facts sheet): the row is done either way.
            return await self._mark(row, marker, DeliveryStatus.SENT, code_of(error), str(error), result)
        return await self._mark(row, marker, DeliveryStatus.FAILED, code_of(error), str(error), result)

    async def _mark(
        self,
        row: Versioned[DeliveryRecord],
        marker: str,
        counted_as: DeliveryStatus,
        code: str | None,
        detail: str,
        result: Succeeded[None] | Failed | None = None,
    ) -> RowOutcome:
        now = self._clock()
        changes: dict[str, Any] = {"last_operation": marker, "last_operation_at": now, "updated_at": now}
        if code is not None:
            changes["last_error"] = ErrorInfo(code=code, message=detail[:500])
        recorded = True
        try:
            await self._ledger.replace(row.value.model_copy(update=changes), row.etag)
        except ConcurrencyConflict:
            recorded = False  # another worker did the same idempotent call and recorded it
        failures = result.failures if result is not None else ()
        requests = result.attempts if result is not None else 0
        return RowOutcome(
            row.value.recipient_key, counted_as, code, failures=failures, requests=requests, recorded=recorded
        )

    # ---- recording --------------------------------------------------------------------------------

    async def _settle(
        self,
        claimed: Versioned[DeliveryRecord],
        status: DeliveryStatus,
        code: str | None,
        detail: str = "",
        *,
        attempts: int,
        send: SendOutcome | None = None,
        failures: tuple[ProactiveError, ...] = (),
        not_before: datetime | None = None,
        activity_id: str | None = None,
        conversation_id: str | None = None,
        handed_off: bool = False,
        uncertain: bool = False,
        redrives: int | None = None,
    ) -> RowOutcome:
        changes: dict[str, Any] = {
            "status": status,
            "attempts": max(0, attempts),
            "last_error": ErrorInfo(
                code=code, message=detail[:500], http_status=send.http_status if send else None
            )
            if code is not None
            else None,
            "not_before": not_before,
            "updated_at": self._clock(),
        }
        if redrives is not None:
            changes["redrives"] = redrives
        if activity_id is not None or status is DeliveryStatus.SENT:
            changes["activity_id"] = activity_id
            changes["conversation_id"] = conversation_id
        record = claimed.value.model_copy(update=changes)
        recorded = True
        try:
            await self._ledger.replace(record, claimed.etag)
        except ConcurrencyConflict:
            # Only reconciliation moves a row out of ``sending`` besides its claimer: its deadline was too
            # short for this send. The row is pending again and will be re-driven (the duplicate window).
            logger.warning("A claimed row changed under its sender (reconciled too early?)")
            recorded = False
        except StorageError:
            logger.warning("Could not record a settled row; it stays 'sending' for reconciliation")
            recorded = False
        return RowOutcome(
            claimed.value.recipient_key,
            status if recorded else DeliveryStatus.SENDING,
            code,
            send=send,
            handed_off=handed_off,
            uncertain=uncertain,
            recorded=recorded,
            failures=failures,
            requests=send.attempts if send is not None else 0,
            not_before=not_before,
        )

    async def _release(
        self,
        batch: _Batch,
        listed: Versioned[DeliveryRecord],
        claimed: Versioned[DeliveryRecord],
        why: Release,
    ) -> None:
        # No request was made for this row (halted, or no slot): give it back untouched (its old status
        # and count), claimable by the next batch, so it counts as remaining.
        batch.left += 1
        batch.returned += 1
        restored = claimed.value.model_copy(
            update={
                "status": listed.value.status,
                "attempts": listed.value.attempts,
                "updated_at": self._clock(),
                "last_error": ErrorInfo(code=why.code, message=why.detail),
            }
        )
        try:
            await self._ledger.replace(restored, claimed.etag)
        except StorageError:
            logger.warning("Could not release a claimed row; reconciliation will")

    # ---- results ----------------------------------------------------------------------------------

    def _emit(self, outcome: RowOutcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _elapsed(self, started: datetime) -> int:
        return max(0, int((self._clock() - started).total_seconds() * 1000))

    def _result(
        self,
        batch: _Batch,
        outcomes: list[RowOutcome],
        candidates: _Candidates,
        left: int,
        started: datetime,
        waited: float = 0.0,
    ) -> SendBatchResult:
        statuses: Counter[DeliveryStatus] = Counter()
        unrecorded = 0
        for outcome in outcomes:
            if not outcome.recorded and outcome.status is DeliveryStatus.SENDING:
                unrecorded += 1
            else:
                statuses[outcome.status] += 1
        failures = [f for outcome in outcomes for f in outcome.failures]
        throttles = [f for f in failures if isinstance(f, Throttled)]
        retry_afters = [t.retry_after for t in throttles if t.retry_after is not None]
        deferred_now = [o.not_before for o in outcomes if o.status is DeliveryStatus.DEFERRED]
        # A row left pending was handed to the retry queue, or (update/delete, or the enqueue failed) waits
        # for the next batch and so counts as remaining.
        handed_off = sum(1 for o in outcomes if o.handed_off)
        kept = statuses[DeliveryStatus.PENDING] - handed_off
        left += kept
        return SendBatchResult(
            attempted=len(outcomes),
            sent=statuses[DeliveryStatus.SENT],
            suppressed=statuses[DeliveryStatus.SUPPRESSED],
            deferred=statuses[DeliveryStatus.DEFERRED],
            skipped=statuses[DeliveryStatus.SKIPPED],
            unreachable=statuses[DeliveryStatus.UNREACHABLE],
            stale=statuses[DeliveryStatus.STALE] + statuses[DeliveryStatus.INSTALLING],
            failed=statuses[DeliveryStatus.FAILED],
            retry_queued=handed_off,
            unrecorded=unrecorded,
            uncertain=sum(1 for o in outcomes if o.uncertain),
            requests=sum(o.requests for o in outcomes),
            throttled=len(throttles),
            server_errors=sum(1 for f in failures if server_error(f)),
            max_retry_after=max(retry_afters) if retry_afters else None,
            next_deferred_at=_earliest(candidates.next_deferred_at, *deferred_now),
            remaining=candidates.remaining + left,
            halted=batch.halted,
            elapsed_ms=self._elapsed(started),
            first_send_at=batch.first_send,
            last_send_at=batch.last_send,
            first_ready_at=_ready_at(batch.pacer, waited),
            slots_skipped=batch.pacer.skipped if batch.pacer is not None else 0,
            returned=batch.returned + kept,
        )


# ---- helpers -------------------------------------------------------------------------------------------


async def _nothing() -> dict[str, Preferences]:
    return {}


def _ready_at(pacer: SlotPacer | None, waited: float) -> datetime | None:
    # Less the time this batch chose to wait before preparing: the limiter learns how long dispatch and
    # preparation take, not how early the orchestration started the activity.
    if pacer is None or pacer.first_ready is None:
        return None
    return datetime.fromtimestamp(pacer.first_ready - waited, UTC)


def _split_key(key: str) -> tuple[RecipientKind, str]:
    prefix, _, rest = key.partition(":")
    try:
        return RecipientKind(prefix), rest
    except ValueError:
        return RecipientKind.CHAT, key


def _marker(operation: Operation, message: MessageContent) -> str:
    if operation == "delete":
        return "delete"
    digest = hashlib.sha256(message.to_json_text().encode()).hexdigest()[:16]
    return f"update:{digest}"


def _outgoing(activity: dict[str, Any], stored: StoredReference, notification_id: str) -> dict[str, Any]:
    """The rendered activity addressed like the Bot Framework SDKs' ``apply_conversation_reference``.

    ``channelData.proactive.notificationId`` names the broadcast, so a duplicate is countable (the emulator's
    stats do) and a bot can recognise its own messages.
    """
    reference = stored.reference
    conversation: dict[str, Any] = {"id": reference.conversation.id}
    if reference.conversation.tenant_id:
        conversation["tenantId"] = reference.conversation.tenant_id
    outgoing = {**activity, "from": {"id": reference.bot.id}, "conversation": conversation}
    if stored.kind is RecipientKind.USER and reference.user is not None:
        recipient: dict[str, Any] = {"id": reference.user.id}
        if reference.user.aad_object_id:
            recipient["aadObjectId"] = reference.user.aad_object_id
        outgoing["recipient"] = recipient
    channel_data = dict(activity.get("channelData") or {})
    channel_data["tenant"] = {"id": stored.tenant_id}
    channel_data["proactive"] = {"notificationId": notification_id}
    outgoing["channelData"] = channel_data
    return outgoing


def _earliest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return min(present) if present else None
