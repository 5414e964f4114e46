"""Delivery-ledger transitions that must happen at most once, guarded by ETags.

The claim is what makes a re-run activity, a replayed orchestration or a second worker harmless:
only one caller moves a row from ``pending`` to ``sending``; everyone else sees ``None`` and moves on.
"""

from __future__ import annotations

from datetime import datetime

from proactive.errors import ConcurrencyConflict
from proactive.models import DeliveryRecord, DeliveryStatus
from proactive.ports import DeliveryLedger, Versioned

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
    if current is None or current.value.status not in CLAIMABLE:
        return None
    claimed = current.value.model_copy(
        update={
            "status": DeliveryStatus.SENDING,
            "attempts": current.value.attempts + 1,
            "updated_at": now,
        }
    )
    try:
        return await ledger.replace(claimed, current.etag)
    except ConcurrencyConflict:
        return None
