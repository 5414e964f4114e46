"""A broadcast's status as ``GET /api/broadcasts/{id}`` shows it: counts from the ledger, phase and rate.

The ledger is the truth for counts (summed over the audience's tenants), the orchestration for the phase
and timing; ``200`` only once the send and every update or recall of it have finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from proactive.broadcast.ports import TERMINAL, OrchestrationState
from proactive.models import DeliveryStatus, Notification, NotificationStatus
from proactive.storage.ports import DeliveryLedger

__all__ = ["FINISHED_STATUSES", "ledger_counts", "public_status", "send_rate", "status_finished"]


FINISHED_STATUSES: Final = frozenset({"completed", "cancelled", "failed"})


def status_finished(body: Mapping[str, Any]) -> bool:
    """Whether a ``status`` body describes a broadcast with nothing left running (``200``, else ``202``).

    Finished means the send has ended (completed, cancelled or failed) and no update or recall of its
    messages is still running.
    """
    operations = body.get("operations") or {}
    return body.get("status") in FINISHED_STATUSES and all(
        op.get("runtimeStatus") in TERMINAL for op in operations.values()
    )


async def ledger_counts(
    ledger: DeliveryLedger, notification_id: str, tenants: Sequence[str]
) -> dict[str, int]:
    """Rows by status summed over ``tenants``, every status present (0 when none), plus ``total``."""
    counts = {status.value: 0 for status in DeliveryStatus}
    for tenant in tenants:
        for status, count in (await ledger.count_by_status(notification_id, tenant)).items():
            counts[status.value] += count
    counts["total"] = sum(counts.values())
    return counts


def public_status(
    notification: Notification, state: OrchestrationState | None, custom: Mapping[str, Any]
) -> str:
    """The ``status`` field: from the orchestration's runtime status and phase, the notification's flag."""
    phase = custom.get("phase")
    if (
        state is not None
        and state.runtime_status == "Completed"
        and phase in ("completed", "cancelled", "failed")
    ):
        return str(phase)
    if notification.status is NotificationStatus.CANCELLED:
        return "cancelled" if state is None or state.terminal else "cancelling"
    if state is None:
        return notification.status.value
    if state.runtime_status == "Failed":
        return "failed"
    if state.runtime_status in ("Terminated", "Canceled"):
        return "cancelled"
    if phase == "scheduled" or (
        state.runtime_status == "Pending" and notification.status is NotificationStatus.SCHEDULED
    ):
        return "scheduled"
    if state.runtime_status == "Completed":
        return "completed"
    return "running" if state.runtime_status == "Running" else "accepted"


def send_rate(sent: int, started_at: Any, completed_at: Any, now: datetime) -> dict[str, float] | None:
    """The ``rate`` field: rows sent per second since the send started (until it completed, or ``now``)."""
    if not isinstance(started_at, str):
        return None
    start = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    end = (
        datetime.fromisoformat(completed_at.replace("Z", "+00:00")) if isinstance(completed_at, str) else now
    )
    seconds = max((end - start).total_seconds(), 0.0)
    return {
        "sentPerSecond": round(sent / seconds, 3) if seconds > 0 else 0.0,
        "elapsedSeconds": round(seconds, 3),
    }
