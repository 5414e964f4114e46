"""Delivery-ledger transitions that must happen at most once, guarded by ETags.

The claim is what makes a re-run activity, a replayed orchestration or a second worker harmless:
only one caller moves a row from ``pending`` to ``sending``; everyone else sees ``None`` and moves on.
"""

from __future__ import annotations

from datetime import datetime

from proactive.errors import ConcurrencyConflict
from proactive.models import DeliveryRecord, DeliveryStatus
from proactive.storage.ports import DeliveryLedger, Versioned

CLAIMABLE = frozenset({DeliveryStatus.PENDING, DeliveryStatus.DEFERRED})


async def claim(
    ledger: DeliveryLedger, notification_id: str, tenant_id: str, recipient_key: str, now: datetime
) -> Versioned[DeliveryRecord] | None:
    """Move the row ``pending``/``deferred`` -> ``sending`` and count the attempt.

    Returns:
        The claimed row with its new ETag, or ``None`` when the row is missing, not claimable
        (already sending, sent or otherwise settled), or another claimer won the race.
    """
    current = await ledger.get(notification_id, tenant_id, recipient_key)
    if current is None:
        return None
    return await claim_listed(ledger, current, now)


async def claim_listed(
    ledger: DeliveryLedger, listed: Versioned[DeliveryRecord], now: datetime
) -> Versioned[DeliveryRecord] | None:
    """:func:`claim` of a row already read (listed with its ETag): one write instead of a read and a write.

    A row changed since it was read fails the ETag check and is not claimed (``None``), exactly like a
    claim lost to another claimer: whoever changed it owns it, or a later batch lists it again.
    """
    if listed.value.status not in CLAIMABLE:
        return None
    claimed = listed.value.model_copy(
        update={
            "status": DeliveryStatus.SENDING,
            "attempts": listed.value.attempts + 1,
            "updated_at": now,
        }
    )
    try:
        return await ledger.replace(claimed, listed.etag)
    except ConcurrencyConflict:
        return None
