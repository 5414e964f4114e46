"""The JSON that flows between the broadcast orchestrations: inputs, cursors and summaries.

Only ids, counters and cursors travel through Durable (inputs, outputs, history); recipients stay in the
delivery ledger. Every model here is a frozen :class:`~proactive.models.WireModel` (camelCase on the wire).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proactive.delivery.contract import SendBatchResult
from proactive.models import NotificationStatus, Operation, Urgency, WireModel

Phase = Literal["schedule", "materialise", "send"]
TenantOutcome = Literal["completed", "cancelled", "failed"]


class BatchTotals(WireModel):
    """The counters of :class:`~proactive.delivery.batch.SendBatchResult` that add up across a tenant's batches."""

    attempted: int = 0
    sent: int = 0
    suppressed: int = 0
    deferred: int = 0
    skipped: int = 0
    unreachable: int = 0
    stale: int = 0
    failed: int = 0
    retry_queued: int = 0
    throttled: int = 0
    server_errors: int = 0

    @classmethod
    def of(cls, batch: SendBatchResult) -> BatchTotals:
        """One batch's counters."""
        return cls(
            attempted=batch.attempted,
            sent=batch.sent,
            suppressed=batch.suppressed,
            deferred=batch.deferred,
            skipped=batch.skipped,
            unreachable=batch.unreachable,
            stale=batch.stale,
            failed=batch.failed,
            retry_queued=batch.retry_queued,
            throttled=batch.throttled,
            server_errors=batch.server_errors,
        )

    def __add__(self, other: BatchTotals) -> BatchTotals:
        return BatchTotals.model_validate(
            {name: getattr(self, name) + getattr(other, name) for name in BatchTotals.model_fields}
        )


class BroadcastRun(WireModel):
    """Input of ``broadcast`` (and of each of its ``continue_as_new`` executions).

    Attributes:
        notification_id: the notification (and orchestration instance id for ``send``).
        operation: ``send`` the message, or ``update`` / ``delete`` the sent ones.
        urgency: the limiter priority; ``urgent`` also ignores quiet hours in the sender.
        tenants: every tenant of the audience, sorted.
        send_at: ISO time to start at (``send`` only), or ``None`` for now.
        batch_size: messages asked of the limiter per batch (``Settings.batch_size``).
        batches_per_execution: batches before a tenant orchestration continues as new.
        phase: where this execution starts: ``schedule`` -> ``materialise`` -> ``send``.
        tenant_index: materialisation cursor: the tenant being materialised.
        cursor: materialisation cursor inside that tenant (opaque, from the activity).
        materialised: ledger rows created so far.
        tenant_rows: rows created per tenant (same order as ``tenants``), so each ``tenant_broadcast``
            knows from its start whether a second batch will have work.
        started_at: when sending started (ISO), set once scheduling is over.
    """

    notification_id: str = Field(min_length=1)
    operation: Operation = "send"
    urgency: Urgency = Urgency.NORMAL
    tenants: tuple[str, ...] = ()
    send_at: str | None = None
    batch_size: int = Field(default=50, ge=1)
    batches_per_execution: int = Field(default=20, ge=1)
    phase: Phase = "schedule"
    tenant_index: int = Field(default=0, ge=0)
    cursor: str | None = None
    materialised: int = Field(default=0, ge=0)
    tenant_rows: tuple[int, ...] = ()
    started_at: str | None = None


class TenantRun(WireModel):
    """Input of ``tenant_broadcast``; its counters carry over ``continue_as_new``.

    Attributes:
        notification_id: the notification.
        tenant_id: the tenant (also the limiter entity's key).
        urgency: limiter priority.
        operation: ``send``, ``update`` or ``delete``.
        batch_size: tokens asked per grant.
        batches_per_execution: batches before ``continue_as_new``.
        batches_done: batches sent by earlier executions.
        executions: earlier executions (continue-as-new count).
        totals: counters summed over every batch so far.
        remaining: the last batch's ``remaining`` (``None`` before one).
        part: the lane's part of the tenant's rows (of ``parts``; see ``SendBatchInput.part``).
        parts: how many parts the tenant's rows are split into (1: every row).
        redrive: a re-drive run (started by the ``deliveries-retry`` trigger, :mod:`proactive.delivery.redrive`): when
            nothing is left it first looks for a wake that came during its last batch, and goes on if one did.
    """

    notification_id: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)
    urgency: Urgency = Urgency.NORMAL
    operation: Operation = "send"
    batch_size: int = Field(default=50, ge=1)
    batches_per_execution: int = Field(default=20, ge=1)
    batches_done: int = Field(default=0, ge=0)
    executions: int = Field(default=0, ge=0)
    totals: BatchTotals = Field(default_factory=BatchTotals)
    remaining: int | None = Field(default=None, ge=0)
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1)
    redrive: bool = False


class TenantSummary(WireModel):
    """Output of ``tenant_broadcast``."""

    tenant_id: str
    outcome: TenantOutcome
    batches: int = 0
    executions: int = 0
    totals: BatchTotals = Field(default_factory=BatchTotals)
    cancelled: int = 0
    error: str | None = None


class MaterialisePage(WireModel):
    """Output of the ``materialise_audience`` activity: how far one call got."""

    added: int = 0
    seen: int = 0
    cursor: str | None = None
    skipped_tenant: bool = False


class TenantRows(WireModel):
    """Input of activity ``cancel_remaining``: one tenant's rows of a notification."""

    notification_id: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)


class CancelledRows(WireModel):
    """Output of activity ``cancel_remaining``: how many rows it marked ``cancelled``."""

    cancelled: int = Field(default=0, ge=0)


class AudiencePageRequest(WireModel):
    """Input of activity ``materialise_audience``: the next page of one tenant's audience."""

    notification_id: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)
    cursor: str | None = None


class LedgerCountsRequest(WireModel):
    """Input of activity ``broadcast_progress``: the notification's rows in these tenants."""

    notification_id: str = Field(min_length=1)
    tenants: tuple[str, ...] = ()


class RecordRequest(WireModel):
    """Input of activity ``record_broadcast``: the status to store, and the counts when ``tenants`` is given.

    Attributes:
        notification_id: the notification.
        status: its new status (a cancelled notification stays cancelled).
        tenants: the tenants to count rows in; ``None`` stores the status alone.
        throttled: 429s over the whole broadcast, stored beside the counts.
    """

    notification_id: str = Field(min_length=1)
    status: NotificationStatus
    tenants: tuple[str, ...] | None = None
    throttled: int = Field(default=0, ge=0)


class LedgerCounts(WireModel):
    """Output of ``broadcast_progress`` and ``record_broadcast``: rows by status (``None``: not counted)."""

    counts: dict[str, int] | None = None
