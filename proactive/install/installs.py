"""The ``installs`` queue's service: paced Graph installs, 429s honoured, dead letters, self-healing.

:class:`InstallWorker` is what the queue triggers of :mod:`proactive.functions.installs` call.

``handle`` (queue ``installs``), for one :class:`~proactive.delivery.ports.InstallRequest`:

1. **admission** by the tenant's Graph limiter (:class:`GraphPacer`; entity ``graph_limiter@{tenantId}``, a
   key apart from the send limiter, at ``GRAPH_RATE_PER_TENANT`` Graph requests per second; one install costs
   :data:`READS_PER_INSTALL` reads, the scarcer budget, so installs run at half that rate; the installs a
   worker runs at once share one grant, :mod:`proactive.install.graph_pacing`). A slot a little ahead is waited for
   in process; one further ahead than :data:`MAX_ADMISSION_WAIT` (or none, while the limiter's breaker is
   open) puts the message back, invisible until then;
2. **install** (:class:`~proactive.install.installer.Installer`);
3. **outcome**, reported to the limiter (its AIMD and breaker learn from Graph's 429s and 5xx):

   =================================  =================================================================
   answer                             what happens
   =================================  =================================================================
   installed / already (409) /        the reference is stored; the broadcast row that asked for it (the
   reference exists                   request's ``notificationId``) goes ``stale -> pending`` and a
                                      :class:`~proactive.delivery.ports.RetryRequest` re-drives it at once
                                      (**self-healing, once**: the row is marked ``lastOperation:
                                      reinstalled`` and never re-driven twice)
   429                                the message is put back with the ``Retry-After`` as its visibility
                                      delay (``throttled`` + 1); after :data:`MAX_THROTTLED` it counts as
                                      a failure like a 5xx
   5xx, timeouts, no connection       the trigger raises: the host redelivers after host.json
                                      ``visibilityTimeout``; the :data:`MAX_FAILURES`-th failure moves the
                                      message to ``installs-poison`` itself
   403 / 401 (no consent,             the row is ``failed`` with ``install_failed`` and Graph's code
   permission missing)                (``consent_required`` for the tenant: one dead letter per tenant and
                                      day, id ``consent:{tenantId}``, not one per user)
   404 (no such user, app not in      the row is ``failed`` with ``install_failed`` and Graph's code
   the catalog) and other 4xx
   user blocked / uninstalled         nothing is installed; the row stays as the sender recorded it
   =================================  =================================================================

Why the worker counts failures instead of leaving it to ``maxDequeueCount`` alone: a message put back (429,
or the limiter holding the tenant: its breaker opens after repeated 5xx) is a new message whose dequeue count
starts again at 1, so a user whose install always fails would circle for ever behind the breaker's probes.
Each copy carries the failures of the earlier ones (``failures``); the total is that plus this copy's
dequeue count minus one (every earlier delivery of this copy failed: a success or a put-back deletes it).

``dead_letter`` (queue ``installs-poison``): a :class:`~proactive.models.DeadLetter` with the reason
(id ``install:{tenantId}:{aadObjectId}``, so a repeat is an idempotent upsert), then the row, if the request
names one and it still waits (``stale``), becomes ``dead_lettered``. The same order as
:mod:`proactive.functions.redelivery`: a crash between the two leaves a dead letter, never a silent row.

Team installs (``teamId``) are not built yet: such a request is dead-lettered at once with
``team_install_not_supported`` so an operator sees it. So is a request for a tenant that is not a GUID or not
on ``TENANT_ALLOW_LIST`` (``tenant_not_allowed``): the tenant id becomes part of the token endpoint's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import ValidationError

from proactive.delivery.ports import InstallRequest, RetryRequest, WorkQueue
from proactive.errors import (
    ConcurrencyConflict,
    DeliveryError,
    GraphAccessDenied,
    PermanentDeliveryError,
    ProactiveError,
    Throttled,
)
from proactive.install.installer import Installer, InstallOutcome
from proactive.install.ports import GraphPacer, ReportTiming
from proactive.models import (
    DeadLetter,
    DeliveryStatus,
    ErrorInfo,
    NotificationStatus,
    RecipientKind,
    recipient_key,
)
from proactive.storage.ports import DeadLetterStore, DeliveryLedger, NotificationStore

__all__ = [
    "CONSENT_REQUIRED",
    "INSTALL_FAILED",
    "MAX_ADMISSION_WAIT",
    "MAX_FAILURES",
    "MAX_THROTTLED",
    "READS_PER_INSTALL",
    "REINSTALLED",
    "InstallHandled",
    "InstallResult",
    "InstallRetryLater",
    "InstallWorker",
]

logger = logging.getLogger(__name__)

READS_PER_INSTALL = 2
"""Graph reads per install (the installation, its chat); Graph allows as many reads as installs per tenant."""

MAX_ADMISSION_WAIT = 20.0
"""Seconds a trigger may wait in process for its grant; later grants put the message back instead."""

MAX_THROTTLED = 8
"""429 re-enqueues of one message; the next 429 counts as a failure."""

MAX_FAILURES = 5
"""Transient failures before the message goes to ``installs-poison``: host.json ``maxDequeueCount``."""

DEFAULT_RETRY_AFTER = 5.0
"""Delay of a 429 that carried no ``Retry-After``."""

INSTALL_FAILED = "install_failed"
CONSENT_REQUIRED = "consent_required"
REINSTALLED = "reinstalled"
"""``DeliveryRecord.last_operation`` of a row re-driven after an install (it is re-driven once only)."""


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class InstallRetryLater(ProactiveError):
    """Raised by the trigger so the queue delivers the message again (and poisons it in the end)."""


class InstallHandled(StrEnum):
    """What :meth:`InstallWorker.handle` did with one message."""

    INSTALLED = "installed"
    REQUEUED = "requeued"  # throttled, or the grant lies far ahead: back on the queue with a delay
    FAILED = "failed"  # permanent: recorded with the reason
    USER_CLOSED = "user_closed"
    DEAD_LETTERED = "dead_lettered"  # malformed or unsupported: dead-lettered at once
    POISONED = "poisoned"  # failed MAX_FAILURES times: moved to installs-poison


@dataclass(frozen=True)
class InstallResult:
    """The result of one message.

    Attributes:
        handled: what was done.
        outcome: the installer's outcome, when it ran to the end.
        redriven: whether a broadcast row was re-driven (self-healing).
        error_code: the reason of a failure or a requeue.
    """

    handled: InstallHandled
    outcome: InstallOutcome | None = None
    redriven: bool = False
    error_code: str | None = None


class InstallWorker:
    """The services of the ``installs`` and ``installs-poison`` triggers (see the module docstring).

    Args:
        installer: installs and stores references.
        pacer: the tenant's Graph limiter.
        ledger: the delivery ledger (rows waiting for an install).
        notifications: to skip re-driving rows of a cancelled broadcast.
        installs: queue ``installs`` (429s put the message back here).
        poison: queue ``installs-poison`` (the :data:`MAX_FAILURES`-th failure goes there).
        retries: queue ``deliveries-retry`` (re-drives an installed recipient's row).
        dead_letters: where exhausted and unprocessable messages are kept.
        clock: current time, aware UTC.
        sleep: awaited while a grant is near.
        admin_consent_url: the tenant's admin-consent URL, given a tenant id (put in the consent dead letter).
        tenant_allowed: ``Settings.tenant_allowed``.
    """

    def __init__(
        self,
        *,
        installer: Installer,
        pacer: GraphPacer,
        ledger: DeliveryLedger,
        notifications: NotificationStore,
        installs: WorkQueue,
        poison: WorkQueue,
        retries: WorkQueue,
        dead_letters: DeadLetterStore,
        clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]],
        admin_consent_url: Callable[[str], str] | None = None,
        tenant_allowed: Callable[[str], bool] = lambda tenant_id: True,
    ) -> None:
        self._installer = installer
        self._pacer = pacer
        self._ledger = ledger
        self._notifications = notifications
        self._installs = installs
        self._poison = poison
        self._retries = retries
        self._dead_letters = dead_letters
        self._clock = clock
        self._sleep = sleep
        self._admin_consent_url = admin_consent_url
        self._tenant_allowed = tenant_allowed

    # ---- installs ---------------------------------------------------------------------------------

    async def handle(self, raw: bytes, dequeue_count: int = 1) -> InstallResult:
        """Install for the user one ``installs`` message names (see the module docstring).

        Args:
            raw: the message body.
            dequeue_count: how often the queue has delivered this message, this time included.

        Raises:
            InstallRetryLater: a transient failure; the queue must deliver the message again.
            StorageError: the ledger, a queue or the reference store failed (the queue retries too).
        """
        request = _parse(raw)
        if request is None:
            await self._malformed(raw)
            return InstallResult(InstallHandled.DEAD_LETTERED, error_code="malformed_message")
        if not _GUID.match(request.tenant_id) or not self._tenant_allowed(request.tenant_id):
            await self._dead_letters.add(
                self._entry(request, "tenant_not_allowed: not a tenant this app serves")
            )
            return InstallResult(InstallHandled.DEAD_LETTERED, error_code="tenant_not_allowed")
        if request.aad_object_id is None:
            await self._dead_letters.add(
                self._entry(request, "team_install_not_supported: team installs are not built yet")
            )
            return InstallResult(InstallHandled.DEAD_LETTERED, error_code="team_install_not_supported")
        tenant, user = request.tenant_id, request.aad_object_id
        failed_before = (request.failures or 0) + max(dequeue_count - 1, 0)
        request = request.model_copy(update={"failures": failed_before or None})
        admission = await self._pacer.admit(tenant)
        wait = admission.not_before - self._clock().timestamp()
        if admission.tokens < 1 or wait > MAX_ADMISSION_WAIT:
            await self._installs.put(request.to_json(), delay=max(wait, 1.0))
            return InstallResult(InstallHandled.REQUEUED, error_code="limiter_hold")
        ready_at = self._clock().timestamp()
        if wait > 0:
            await self._sleep(wait)
        timing = ReportTiming(admission.granted_at, ready_at, self._clock().timestamp())
        try:
            outcome = await self._installer.install_user(tenant, user)
        except Throttled as exc:
            await self._pacer.report(tenant, throttled=1, retry_after=exc.retry_after, timing=timing)
            return await self._throttled(request, exc)
        except PermanentDeliveryError as exc:
            await self._pacer.report(tenant, failed=1, timing=timing)
            await self._failed(request, exc)
            return InstallResult(InstallHandled.FAILED, error_code=_code(exc))
        except DeliveryError as exc:
            await self._pacer.report(tenant, server_errors=1, timing=timing)
            return await self._transient(request, _code(exc), exc)
        await self._pacer.report(tenant, sent=1, timing=timing)
        if not outcome.reachable:
            logger.info("Not installing for a user who closed the bot (%s)", outcome.reason)
            return InstallResult(InstallHandled.USER_CLOSED, outcome)
        redriven = await self._redrive(request)
        return InstallResult(InstallHandled.INSTALLED, outcome, redriven=redriven)

    async def _transient(self, request: InstallRequest, code: str, error: Exception) -> InstallResult:
        failures = (request.failures or 0) + 1
        if failures >= MAX_FAILURES:
            # Past the bound: to the poison queue, as the host does after maxDequeueCount.
            await self._poison.put(request.model_copy(update={"failures": failures}).to_json())
            return InstallResult(InstallHandled.POISONED, error_code=code)
        raise InstallRetryLater(f"install for {request.tenant_id}: {code}") from error

    async def _throttled(self, request: InstallRequest, error: Throttled) -> InstallResult:
        count = (request.throttled or 0) + 1
        if count > MAX_THROTTLED:
            return await self._transient(request, "Throttled", error)
        delay = error.retry_after if error.retry_after is not None else DEFAULT_RETRY_AFTER
        again = request.model_copy(update={"throttled": count})
        await self._installs.put(again.to_json(), delay=delay)
        return InstallResult(InstallHandled.REQUEUED, error_code="Throttled")

    async def _failed(self, request: InstallRequest, error: PermanentDeliveryError) -> None:
        code = _code(error)
        if isinstance(error, GraphAccessDenied):
            code = CONSENT_REQUIRED
            url = self._admin_consent_url(request.tenant_id) if self._admin_consent_url else None
            where = f" at {url}" if url else ""
            # One dead letter per tenant and day (an upsert under a fixed id), never one per user.
            entry = DeadLetter(
                id=f"consent:{request.tenant_id}",
                source_queue=self._installs.name,
                payload={"tenantId": request.tenant_id, "graphCode": _code(error), "adminConsentUrl": url},
                reason=f"{CONSENT_REQUIRED}: an admin of the tenant must consent to the app's Graph "
                f"permissions{where} ({_code(error)})",
                created_at=self._clock(),
            )
            await self._dead_letters.add(entry)
        logger.warning("Install failed for a user of tenant %s: %s", request.tenant_id, code)
        info = ErrorInfo(code=INSTALL_FAILED, message=f"{code}: {error}"[:500], http_status=error.status)
        await self._settle_row(request, DeliveryStatus.FAILED, info)

    # ---- self-healing -----------------------------------------------------------------------------

    async def _redrive(self, request: InstallRequest) -> bool:
        """Return the row that waited for this install to ``pending`` and queue its re-drive (once)."""
        nid = request.notification_id
        if nid is None or request.aad_object_id is None:
            return False
        found = await self._notifications.get(nid)
        if found is None or found.value.status is NotificationStatus.CANCELLED:
            return False
        key = recipient_key(RecipientKind.USER, request.aad_object_id)
        for _ in range(3):
            current = await self._ledger.get(nid, request.tenant_id, key)
            if current is None:
                return False
            row = current.value
            if row.status is not DeliveryStatus.STALE or row.last_operation == REINSTALLED:
                return False
            now = self._clock()
            waiting = row.model_copy(
                update={
                    "status": DeliveryStatus.PENDING,
                    "not_before": now,
                    "last_error": ErrorInfo(code=REINSTALLED, message="installed through Graph"),
                    "last_operation": REINSTALLED,
                    "last_operation_at": now,
                    "updated_at": now,
                }
            )
            try:
                await self._ledger.replace(waiting, current.etag)
            except ConcurrencyConflict:
                continue
            # A lost put leaves a pending row with not_before: reconciliation re-queues it.
            retry = RetryRequest(
                notification_id=nid, tenant_id=request.tenant_id, recipient_key=key, reason=REINSTALLED
            )
            await self._retries.put(retry.to_json())
            return True
        return False

    # ---- installs-poison --------------------------------------------------------------------------

    async def dead_letter(self, raw: bytes) -> DeadLetter:
        """Dead-letter a message whose deliveries ran out (see the module docstring)."""
        request = _parse(raw)
        if request is None:
            return await self._malformed(raw)
        reason = f"install retries exhausted ({request.reason}"
        reason += f", {request.failures} failures" if request.failures else ""
        reason += f", throttled {request.throttled} times)" if request.throttled else ")"
        entry = self._entry(request, reason)
        await self._dead_letters.add(entry)
        info = ErrorInfo(code=INSTALL_FAILED, message=reason)
        await self._settle_row(request, DeliveryStatus.DEAD_LETTERED, info)
        return entry

    # ---- helpers ----------------------------------------------------------------------------------

    async def _settle_row(self, request: InstallRequest, status: DeliveryStatus, info: ErrorInfo) -> None:
        """Record why the row that waited for this install will not be sent (only a ``stale`` row)."""
        nid = request.notification_id
        if nid is None or request.aad_object_id is None:
            return
        key = recipient_key(RecipientKind.USER, request.aad_object_id)
        for _ in range(3):
            current = await self._ledger.get(nid, request.tenant_id, key)
            if current is None or current.value.status is not DeliveryStatus.STALE:
                return
            row = current.value.model_copy(
                update={"status": status, "last_error": info, "not_before": None, "updated_at": self._clock()}
            )
            try:
                await self._ledger.replace(row, current.etag)
                return
            except ConcurrencyConflict:
                continue

    def _entry(self, request: InstallRequest, reason: str) -> DeadLetter:
        target = request.aad_object_id or f"team:{request.team_id}"
        return DeadLetter(
            id=f"install:{request.tenant_id}:{target}",
            source_queue=self._installs.name,
            payload=request.to_json(),
            reason=reason[:1000],
            created_at=self._clock(),
        )

    async def _malformed(self, raw: bytes) -> DeadLetter:
        text = raw.decode(errors="replace")
        entry = DeadLetter(
            id="malformed:" + hashlib.sha256(text.encode()).hexdigest()[:32],
            source_queue=self._installs.name,
            payload={"raw": text[:2000]},
            reason="malformed_message: not an InstallRequest",
            created_at=self._clock(),
        )
        await self._dead_letters.add(entry)
        logger.warning("Dead-lettered a malformed %s message", entry.source_queue)
        return entry


def _parse(raw: bytes) -> InstallRequest | None:
    try:
        body = json.loads(raw)
        return InstallRequest.from_json(body) if isinstance(body, dict) else None
    except (ValueError, ValidationError):
        return None


def _code(error: DeliveryError) -> str:
    if error.code:
        return error.code
    return f"http_{error.status}" if error.status is not None else type(error).__name__
