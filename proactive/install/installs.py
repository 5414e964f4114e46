"""The ``installs`` queue's service: paced Graph installs, 429s honoured, dead letters, self-healing.

:class:`InstallWorker` is what the queue triggers of :mod:`proactive.functions.installs` call.

``handle`` (queue ``installs``), for one :class:`~proactive.delivery.ports.InstallRequest`: up to 32 users of
one tenant (the sender's requests coalesced by :mod:`proactive.install.requests`), or one team. The users
are installed concurrently, each by :class:`~proactive.install.installer.Installer`, and:

1. **every Graph request is admitted** by the tenant's Graph limiter (:class:`GraphPacer`; entity
   ``graph_limiter@{tenantId}``, a key apart from the send limiter, one token per Graph request
   (:data:`REQUESTS_PER_TOKEN`) at ``GRAPH_RATE_PER_TENANT``; the requests a worker makes at once share
   one grant, :mod:`proactive.install.graph_pacing`). A slot a little ahead is waited for in process; one further
   ahead than :data:`MAX_ADMISSION_WAIT` (or none, while the limiter's breaker is open) puts that install
   back, invisible until then. A user whose reference is active needs no request and no token;
2. **one report** per message tells the limiter what its requests met (its AIMD and breaker learn from
   Graph's 429s and 5xx);
3. **each recipient's outcome**:

   =================================  =================================================================
   answer                             what happens
   =================================  =================================================================
   installed / already (409) /        the reference is stored; the broadcast row that asked for it (the
   reference exists                   request's ``notificationId``) goes ``installing -> pending`` and a
                                      :class:`~proactive.delivery.ports.RetryRequest` re-drives it at once
                                      (**self-healing, once**: the row is marked ``lastOperation:
                                      reinstalled`` and never re-driven twice); ``-> cancelled`` if the
                                      broadcast was cancelled meanwhile
   429                                the throttled users are put back in one message with the longest
                                      ``Retry-After`` as its visibility delay (``throttled`` + 1); after
                                      :data:`MAX_THROTTLED` it counts as a failure like a 5xx
   5xx, timeouts, no connection       when nothing else of the message went ahead, the trigger raises: the
                                      host redelivers after host.json ``visibilityTimeout``; otherwise the
                                      failed users are put back (``failures`` + 1, after
                                      :data:`TRANSIENT_RETRY_SECONDS`); the :data:`MAX_FAILURES`-th failure
                                      moves them to ``installs-poison``
   403 / 401 (no consent,             the row is ``failed`` with ``install_failed`` and Graph's code
   permission missing)                (``consent_required`` for the tenant: one dead letter per tenant and
                                      day, id ``consent:{tenantId}``, not one per user)
   404 (no such user, app not in      the row is ``failed`` with ``install_failed`` and Graph's code
   the catalog) and other 4xx
   user blocked / uninstalled         nothing is installed; the row is ``unreachable`` with the reason
   =================================  =================================================================

Why the worker counts failures instead of leaving it to ``maxDequeueCount`` alone: a message put back (429,
or the limiter holding the tenant: its breaker opens after repeated 5xx) is a new message whose dequeue count
starts again at 1, so a user whose install always fails would circle for ever behind the breaker's probes.
Each copy carries the failures of the earlier ones (``failures``); the total is that plus this copy's
dequeue count minus one (every earlier delivery of this copy failed: a success or a put-back deletes it).

``dead_letter`` (queue ``installs-poison``): a :class:`~proactive.models.DeadLetter` with the reason
(id ``install:{tenantId}:{aadObjectId}``, so a repeat is an idempotent upsert), then each row the request
names that still waits (``installing``, or ``stale`` from before that status), becomes ``dead_lettered``.
The same order as :mod:`proactive.functions.redelivery`: a crash between the two leaves a dead letter, never a
silent row.

**Team installs** (``channelId`` and/or ``teamId``): the team is the ``teamId`` of the request or, for a
channel of a broadcast's audience, the ``teamId`` that audience gave for the channel. Graph addresses a team
by its Entra group id; a team known only by its Bot Framework id (``19:...``) cannot be installed and is
dead-lettered with ``team_not_addressable`` (the row ``failed``). Otherwise
:meth:`~proactive.install.installer.Installer.install_team` installs it and stores the General channel's reference
and the channel's, and the channel's row is re-driven like a user's.

A request for a tenant that is not a GUID or not on ``TENANT_ALLOW_LIST`` is dead-lettered at once
(``tenant_not_allowed``): the tenant id becomes part of the token endpoint's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import ValidationError

from proactive.broadcast.audience import stored_request
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
    "REINSTALLED",
    "REQUESTS_PER_TOKEN",
    "TEAM_NOT_ADDRESSABLE",
    "TRANSIENT_RETRY_SECONDS",
    "InstallHandled",
    "InstallResult",
    "InstallRetryLater",
    "InstallWorker",
]

logger = logging.getLogger(__name__)

REQUESTS_PER_TOKEN = 1
"""The Graph limiter's unit: one token is one Graph request of the tenant (install, read, catalog lookup).

An install costs one request when Teams' event brings the reference, three when it must be read (409,
or a late event); metering every request against ``GRAPH_RATE_PER_TENANT`` keeps each of Graph's per-tenant
budgets (30 POST/s and 30 GET/s on installedApps) below its limit whatever the mix.
"""

TRANSIENT_RETRY_SECONDS = 5.0
"""Delay of a put-back copy holding the transient failures of a message whose other installs went ahead."""

MAX_ADMISSION_WAIT = 20.0
"""Seconds a trigger may wait in process for its grant; later grants put the message back instead."""

MAX_THROTTLED = 8
"""429 re-enqueues of one message; the next 429 counts as a failure."""

MAX_FAILURES = 5
"""Transient failures before the message goes to ``installs-poison``: host.json ``maxDequeueCount``."""

DEFAULT_RETRY_AFTER = 5.0
"""Delay of a 429 that carried no ``Retry-After``."""

INSTALL_FAILED = "install_failed"
TEAM_NOT_ADDRESSABLE = "team_not_addressable"
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
        by_user: what was done for each user of a users message (``handled`` etc. are the first user's).
    """

    handled: InstallHandled
    outcome: InstallOutcome | None = None
    redriven: bool = False
    error_code: str | None = None
    by_user: Mapping[str, InstallHandled] = field(default_factory=dict)


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
        """Install for the users (or the team) one ``installs`` message names (see the module docstring).

        Args:
            raw: the message body.
            dequeue_count: how often the queue has delivered this message, this time included.

        Raises:
            InstallRetryLater: a transient failure of every install the message still held; the queue must
                deliver it again.
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
        failed_before = (request.failures or 0) + max(dequeue_count - 1, 0)
        request = request.model_copy(update={"failures": failed_before or None})
        if not request.users:
            return await self._handle_team(request)
        pacer = _RequestPacer(self._pacer, self._clock, self._sleep, request.tenant_id)
        results = await asyncio.gather(*(self._one_user(request, user, pacer) for user in request.users))
        by_user = dict(zip(request.users, results, strict=True))
        await pacer.report(by_user.values())
        return await self._finish(request, by_user)

    async def _one_user(self, request: InstallRequest, user: str, pacer: _RequestPacer) -> _UserResult:
        try:
            outcome = await self._installer.install_user(request.tenant_id, user, pacer.pace)
        except _Hold as hold:
            return _UserResult(InstallHandled.REQUEUED, error_code="limiter_hold", delay=hold.delay)
        except Throttled as exc:
            return _UserResult(InstallHandled.REQUEUED, error_code="Throttled", error=exc)
        except PermanentDeliveryError as exc:
            await self._failed(request, exc, user)
            return _UserResult(InstallHandled.FAILED, error_code=_code(exc), error=exc)
        except DeliveryError as exc:
            return _UserResult(InstallHandled.POISONED, error_code=_code(exc), error=exc)
        if not outcome.reachable:
            logger.info("Not installing for a user who closed the bot (%s)", outcome.reason)
            info = ErrorInfo(code=outcome.reason or "user_closed", message="the user closed the conversation")
            key = recipient_key(RecipientKind.USER, user)
            await self._settle_row(request, key, DeliveryStatus.UNREACHABLE, info)
            return _UserResult(InstallHandled.USER_CLOSED, outcome)
        redriven = await self._redrive(request, recipient_key(RecipientKind.USER, user))
        return _UserResult(InstallHandled.INSTALLED, outcome, redriven=redriven)

    async def _finish(self, request: InstallRequest, by_user: dict[str, _UserResult]) -> InstallResult:
        """Put back what was held or throttled, and the transient failures (see the module docstring)."""
        held = [u for u, r in by_user.items() if r.error_code == "limiter_hold"]
        if held:
            delay = max(by_user[u].delay for u in held)
            await self._installs.put(request.for_users(held).to_json(), delay=max(delay, 1.0))
        throttled = [u for u, r in by_user.items() if isinstance(r.error, Throttled)]
        count = (request.throttled or 0) + 1
        transient = [u for u, r in by_user.items() if r.handled is InstallHandled.POISONED]
        if throttled and count > MAX_THROTTLED:
            transient += throttled  # throttled too often: counts as a failure
        elif throttled:
            waits = [e.retry_after for u in throttled if isinstance(e := by_user[u].error, Throttled)]
            known = [w for w in waits if w is not None]
            delay = max(known) if known else DEFAULT_RETRY_AFTER
            await self._installs.put(request.for_users(throttled, throttled=count).to_json(), delay=delay)
        if transient:
            failures = (request.failures or 0) + 1
            error = by_user[transient[0]].error
            code = by_user[transient[0]].error_code or "transient"
            if failures >= MAX_FAILURES:
                # Past the bound: to the poison queue, as the host does after maxDequeueCount.
                await self._poison.put(request.for_users(transient, failures=failures).to_json())
                for user in transient:
                    by_user[user] = _UserResult(InstallHandled.POISONED, error_code=code)
            elif len(transient) == len(by_user):
                # Nothing else was done: the host redelivers this very message after its visibility timeout.
                raise InstallRetryLater(f"install for {request.tenant_id}: {code}") from error
            else:
                # Others were installed or put back: only these go round again.
                again = request.for_users(transient, failures=failures, throttled=None)
                await self._installs.put(again.to_json(), delay=TRANSIENT_RETRY_SECONDS)
                for user in transient:
                    by_user[user] = _UserResult(InstallHandled.REQUEUED, error_code=code)
        return _summary(by_user)

    async def _handle_team(self, request: InstallRequest) -> InstallResult:
        """Install the bot in the team of ``teamId`` / the audience channel ``channelId``."""
        team_id = request.team_id or await self._audience_team(request)
        key = recipient_key(RecipientKind.CHANNEL, request.channel_id) if request.channel_id else None
        if team_id is None or not _GUID.match(team_id):
            # Graph addresses a team by its Entra group id; a Bot Framework id (19:...) cannot be installed.
            reason = f"{TEAM_NOT_ADDRESSABLE}: Graph installs a team by its Entra group id, got {team_id!r}"
            await self._dead_letters.add(self._entry(request, reason))
            if key is not None:
                info = ErrorInfo(code=INSTALL_FAILED, message=reason[:500])
                await self._settle_row(request, key, DeliveryStatus.FAILED, info)
            return InstallResult(InstallHandled.DEAD_LETTERED, error_code=TEAM_NOT_ADDRESSABLE)
        pacer = _RequestPacer(self._pacer, self._clock, self._sleep, request.tenant_id)
        try:
            outcome = await self._installer.install_team(
                request.tenant_id, team_id, request.channel_id, pacer.pace
            )
        except _Hold as hold:
            await self._installs.put(request.to_json(), delay=max(hold.delay, 1.0))
            return InstallResult(InstallHandled.REQUEUED, error_code="limiter_hold")
        except Throttled as exc:
            await pacer.report([_UserResult(InstallHandled.REQUEUED, error=exc)])
            return await self._throttled(request, exc)
        except PermanentDeliveryError as exc:
            await pacer.report([_UserResult(InstallHandled.FAILED, error=exc)])
            await self._failed(request, exc, None)
            return InstallResult(InstallHandled.FAILED, error_code=_code(exc))
        except DeliveryError as exc:
            await pacer.report([_UserResult(InstallHandled.POISONED, error=exc)])
            return await self._transient(request, _code(exc), exc)
        await pacer.report([_UserResult(InstallHandled.INSTALLED)])
        redriven = await self._redrive(request, key) if key is not None else False
        return InstallResult(InstallHandled.INSTALLED, outcome, redriven=redriven)

    async def _audience_team(self, request: InstallRequest) -> str | None:
        """The ``teamId`` the broadcast's audience gave for ``channelId``."""
        if request.notification_id is None or request.channel_id is None:
            return None
        found = await self._notifications.get(request.notification_id)
        if found is None:
            return None
        for channel in stored_request(found.value).audience.channels:
            if channel.tenant_id == request.tenant_id.lower() and channel.channel_id == request.channel_id:
                return channel.team_id
        return None

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

    async def _failed(self, request: InstallRequest, error: PermanentDeliveryError, user: str | None) -> None:
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
        logger.warning("Install failed for a recipient of tenant %s: %s", request.tenant_id, code)
        info = ErrorInfo(code=INSTALL_FAILED, message=f"{code}: {error}"[:500], http_status=error.status)
        key = _row_key(request, user)
        if key is not None:
            await self._settle_row(request, key, DeliveryStatus.FAILED, info)

    # ---- self-healing -----------------------------------------------------------------------------

    async def _redrive(self, request: InstallRequest, key: str) -> bool:
        """Return the row that waited for this install to ``pending`` and queue its re-drive (once).

        The row of a cancelled broadcast becomes ``cancelled`` instead: nothing will send it.
        """
        nid = request.notification_id
        if nid is None:
            return False
        found = await self._notifications.get(nid)
        if found is None:
            return False
        if found.value.status is NotificationStatus.CANCELLED:
            info = ErrorInfo(code="cancelled", message="the broadcast was cancelled during the install")
            await self._settle_row(request, key, DeliveryStatus.CANCELLED, info)
            return False
        for _ in range(3):
            current = await self._ledger.get(nid, request.tenant_id, key)
            if current is None:
                return False
            row = current.value
            if row.status not in _WAITING or row.last_operation == REINSTALLED:
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
        for key in _row_keys(request):
            await self._settle_row(request, key, DeliveryStatus.DEAD_LETTERED, info)
        return entry

    # ---- helpers ----------------------------------------------------------------------------------

    async def _settle_row(
        self, request: InstallRequest, key: str, status: DeliveryStatus, info: ErrorInfo
    ) -> None:
        """Record why the row that waited for this install will not be sent (only a waiting row)."""
        nid = request.notification_id
        if nid is None:
            return
        for _ in range(3):
            current = await self._ledger.get(nid, request.tenant_id, key)
            if current is None or current.value.status not in _WAITING:
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
        users = request.users
        if len(users) == 1:
            target = users[0]
        elif users:
            target = "users:" + hashlib.sha256(",".join(users).encode()).hexdigest()[:16]
        else:
            target = f"team:{request.team_id or request.channel_id}"
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


_WAITING = (DeliveryStatus.INSTALLING, DeliveryStatus.STALE)
"""Rows an install may settle or re-drive: ``installing``, and ``stale`` rows queued before that status."""


class _Hold(Exception):
    """The limiter holds the tenant (breaker open) or its slot lies too far ahead: put the install back."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"held for {delay:.1f}s")
        self.delay = delay


@dataclass
class _UserResult:
    handled: InstallHandled
    outcome: InstallOutcome | None = None
    redriven: bool = False
    error_code: str | None = None
    error: Exception | None = None
    delay: float = 0.0


class _RequestPacer:
    """Admits each Graph request of one message by the tenant's limiter and remembers what to report."""

    def __init__(
        self,
        pacer: GraphPacer,
        clock: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]],
        tenant_id: str,
    ) -> None:
        self._pacer = pacer
        self._clock = clock
        self._sleep = sleep
        self._tenant = tenant_id
        self.requests = 0
        self._timing: ReportTiming | None = None

    async def pace(self) -> None:
        admission = await self._pacer.admit(self._tenant)
        wait = admission.not_before - self._clock().timestamp()
        if admission.tokens < 1 or wait > MAX_ADMISSION_WAIT:
            raise _Hold(max(wait, 1.0))
        ready_at = self._clock().timestamp()
        if wait > 0:
            await self._sleep(wait)
        await _spacing(self._tenant).wait(admission.pace_seconds, self._clock, self._sleep)
        if self._timing is None:
            self._timing = ReportTiming(admission.granted_at, ready_at, self._clock().timestamp())
        self.requests += 1

    async def report(self, results: Iterable[_UserResult]) -> None:
        """One report for the message: what its Graph requests met."""
        if self.requests == 0:
            return  # nothing was sent (references found, or every slot held)
        listed = list(results)
        throttles = [r.error for r in listed if isinstance(r.error, Throttled)]
        waits = [t.retry_after for t in throttles if isinstance(t, Throttled) and t.retry_after is not None]
        server = sum(1 for r in listed if r.handled is InstallHandled.POISONED)
        failed = sum(1 for r in listed if r.handled is InstallHandled.FAILED)
        await self._pacer.report(
            self._tenant,
            sent=max(self.requests - len(throttles) - server - failed, 0),
            throttled=len(throttles),
            server_errors=server,
            failed=failed,
            retry_after=max(waits) if waits else None,
            timing=self._timing,
        )


class _Spacing:
    """Keeps a tenant's requests ``pace`` apart in this worker even when some reach their slots late.

    Slots are ``pace`` apart, so any 1 s holds at most the tenant's rate; requests whose worker woke late
    would bunch with the next on-time ones and overrun Graph's sliding window (a 429 for each). As the
    sender does, a late request shifts the schedule instead.
    """

    def __init__(self) -> None:
        self.last = 0.0

    async def wait(
        self, pace: float, clock: Callable[[], datetime], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        now = clock().timestamp()
        go = max(now, self.last + pace)
        self.last = go
        if go > now:
            await sleep(go - now)


_SPACINGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Spacing]] = (
    weakref.WeakKeyDictionary()
)


def _spacing(tenant_id: str) -> _Spacing:
    by_tenant = _SPACINGS.setdefault(asyncio.get_running_loop(), {})
    return by_tenant.setdefault(tenant_id.lower(), _Spacing())


def _summary(by_user: dict[str, _UserResult]) -> InstallResult:
    first = next(iter(by_user.values()))
    return InstallResult(
        first.handled,
        first.outcome,
        redriven=first.redriven,
        error_code=first.error_code,
        by_user={user: result.handled for user, result in by_user.items()},
    )


def _row_key(request: InstallRequest, user: str | None) -> str | None:
    if user is not None:
        return recipient_key(RecipientKind.USER, user)
    return recipient_key(RecipientKind.CHANNEL, request.channel_id) if request.channel_id else None


def _row_keys(request: InstallRequest) -> list[str]:
    if request.users:
        return [recipient_key(RecipientKind.USER, user) for user in request.users]
    key = _row_key(request, None)
    return [key] if key is not None else []


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
