"""Welcomes are sends too: stored as ledger rows, sent by the tenant's paced re-drive run.

A welcome used to be a direct reply to the install activity. During a mass install (an admin rolling the
app out, Graph's proactive installation) hundreds of them went out at once, past the tenant's limiter:
Teams answered 429 and they were dropped, while they spent the budget of a broadcast running beside them.

Now the install only **stores** the welcome, and the same path as a re-drive sends it
(:mod:`proactive.delivery.redrive`):

1. the tenant's welcome notification, id :func:`welcome_notification_id` (``welcome-{tenantId}``), holds
   the text (:func:`proactive.bot.texts.welcome`) as a stored broadcast request with status ``running``
   (so reconciliation always looks at it), urgency ``normal`` (quiet hours hold a welcome like any
   notification; it takes the tenant's normal share of the rate, never the urgent one), no category
   (only a user who opted out of everything is not welcomed: ``suppressed``);
2. one ledger row per user (``user:{aadObjectId}``), ``pending`` with ``notBefore`` = now. The ``notBefore``
   makes the row the queue's: if its message is lost, reconciliation finds the row past the deadline
   and queues it again;
3. a :class:`~proactive.delivery.ports.RetryRequest` (``reason`` ``welcome``, ``attempt`` 0) on
   ``deliveries-retry``; its trigger starts (or wakes) the paced run of that notification and tenant, and
   many installs of one tenant collapse into one run, paced by the tenant's limiter, 429s reported and
   re-driven like any send.

At most once per install: the caller only welcomes when its conditional reference write turned the user's
reference active (:attr:`~proactive.bot.capture.CaptureResult.newly_active`). A re-install resets the
user's row to ``pending`` only when the earlier welcome has settled (sent, suppressed, failed ...); one still
on its way (``pending``, ``deferred``, ``sending``) serves the new install too, so nobody gets two welcomes
for installs seconds apart. The row's claim lets exactly one sender send it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Final

from pydantic import ValidationError

from proactive.bot import texts
from proactive.bot.ports import WelcomeQueue
from proactive.broadcast.request import BroadcastRequest
from proactive.delivery.ports import RetryRequest, WorkQueue
from proactive.errors import ConcurrencyConflict
from proactive.models import DeliveryRecord, DeliveryStatus, Notification, NotificationStatus, RecipientKind
from proactive.models import recipient_key as make_key
from proactive.storage.ports import DeliveryLedger, NotificationStore

__all__ = ["WELCOME_PREFIX", "WELCOME_REASON", "WelcomeQueue", "Welcomes", "welcome_notification_id"]

logger = logging.getLogger(__name__)

WELCOME_PREFIX: Final = "welcome-"
WELCOME_REASON: Final = "welcome"
# Rows whose welcome is still on its way: a re-install leaves them as they are.
_UNDER_WAY = frozenset({DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING})
_PLAIN_TENANT = re.compile(r"^[A-Za-z0-9-]{1,56}$")


def welcome_notification_id(tenant_id: str) -> str:
    """The id of a tenant's welcome notification (a notification id: ``[A-Za-z0-9_-]{1,64}``)."""
    if _PLAIN_TENANT.match(tenant_id):
        return WELCOME_PREFIX + tenant_id
    return WELCOME_PREFIX + hashlib.sha256(tenant_id.encode()).hexdigest()[:32]


class Welcomes:
    """Stores welcomes as ledger rows and queues them for the paced run (see the module docstring).

    Args:
        notifications: where the tenant's welcome notification lives.
        ledger: the delivery ledger.
        retries: queue ``deliveries-retry``.
        clock: current time (aware UTC).
    """

    def __init__(
        self,
        notifications: NotificationStore,
        ledger: DeliveryLedger,
        retries: WorkQueue,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._notifications = notifications
        self._ledger = ledger
        self._retries = retries
        self._clock = clock

    async def welcome(self, tenant_id: str, aad_object_id: str, bot_name: str | None) -> bool:
        """Store one user's welcome (notification, row), then queue it.

        Returns:
            ``False`` when the tenant id cannot address a notification (not a GUID); nothing is stored.

        Raises:
            StorageError: a table or the queue failed (the endpoint answers 503). A row stored before the
                queue failed is not lost: reconciliation queues it after its deadline.
            ConcurrencyConflict: the row kept changing under every attempt.
        """
        notification_id = await self._notification(tenant_id, texts.welcome(bot_name))
        if notification_id is None:
            return False
        key = make_key(RecipientKind.USER, aad_object_id)
        await self._row(notification_id, tenant_id, key)
        message = RetryRequest(
            notification_id=notification_id, tenant_id=tenant_id, recipient_key=key, reason=WELCOME_REASON
        )
        await self._retries.put(message.to_json())
        return True

    async def _notification(self, tenant_id: str, text: str) -> str | None:
        notification_id = welcome_notification_id(tenant_id)
        try:
            request = BroadcastRequest.model_validate(
                {
                    "notificationId": notification_id,
                    "audience": {"tenants": [tenant_id]},
                    "message": {"text": text},
                }
            )
        except ValidationError:
            logger.warning("No welcome: the tenant id is not a GUID")
            return None
        stored = request.to_json()
        for _ in range(5):
            found = await self._notifications.get(notification_id)
            now = self._clock()
            if found is None:
                try:
                    await self._notifications.create(
                        Notification(
                            id=notification_id,
                            request=stored,
                            status=NotificationStatus.RUNNING,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                except ConcurrencyConflict:
                    continue  # another install of the tenant created it: read it
                return notification_id
            if found.value.request == stored:
                return notification_id
            # The text changed (a new version, the bot renamed): later welcomes say the new one.
            try:
                await self._notifications.replace(
                    found.value.model_copy(update={"request": stored, "updated_at": now}), found.etag
                )
            except ConcurrencyConflict:
                continue
            return notification_id
        raise ConcurrencyConflict("the welcome notification kept changing")

    async def _row(self, notification_id: str, tenant_id: str, key: str) -> None:
        now = self._clock()
        fresh = DeliveryRecord(
            notification_id=notification_id,
            tenant_id=tenant_id,
            recipient_key=key,
            status=DeliveryStatus.PENDING,
            not_before=now,
            created_at=now,
            updated_at=now,
        )
        for _ in range(5):
            if await self._ledger.add_pending([fresh]):
                return
            found = await self._ledger.get(notification_id, tenant_id, key)
            if found is None:
                continue  # deleted in between: insert again
            if found.value.status in _UNDER_WAY:
                return  # the earlier install's welcome is on its way; it serves this install too
            try:
                await self._ledger.replace(
                    fresh.model_copy(update={"created_at": found.value.created_at}), found.etag
                )
            except ConcurrencyConflict:
                continue
            return
        raise ConcurrencyConflict("the welcome row kept changing")
