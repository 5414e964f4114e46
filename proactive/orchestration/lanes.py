"""The bookkeeping of one tenant's send lanes, apart from the generators that yield (no Durable here).

:class:`TenantLanes` is what ``tenant_broadcast`` decides: how many lanes, which part of the rows each
takes, whether a sweep lane over every part follows, and the merged summary. :class:`LaneProgress` is what
``tenant_lane`` carries from batch to batch: how many tokens to ask for, the activity's input for a grant,
the limiter's report of a result, what the result means for the lane (go on, done, wait for a deferral,
halted), and the input of its next execution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from proactive.delivery.contract import Pacing, SendBatchInput, SendBatchResult
from proactive.limiter import Acquire, Grant, Report
from proactive.models import Urgency
from proactive.orchestration import policies
from proactive.orchestration.runs import BatchTotals, TenantOutcome, TenantRun, TenantSummary


def lane_instance_id(tenant_instance_id: str, lane: int) -> str:
    """The ``tenant_lane`` instance number ``lane`` under a ``tenant_broadcast`` instance."""
    return f"{tenant_instance_id}.lane{lane}"


@dataclass(frozen=True)
class TenantLanes:
    """The lanes of one ``tenant_broadcast`` run.

    Sends with more than one batch of rows run :data:`~proactive.orchestration.policies.SEND_LANES` lanes,
    each over its own part of the rows (a stable hash of the recipient key), so lanes never race for a
    claim. When all of them completed, one more lane over every part (the sweep) sends rows that came back
    after their lane had ended. Update and delete run lanes too (their rows' count is not known up front),
    but a lane whose part is done ends instead of helping: they do not claim rows, so two lanes on one part
    would repeat each other's calls.
    """

    run: TenantRun

    @property
    def width(self) -> int:
        """How many lanes run side by side."""
        if self.run.remaining is not None and self.run.remaining <= self.run.batch_size:
            return 1
        return policies.SEND_LANES

    def lane_run(self, number: int) -> TenantRun:
        """The input of lane ``number``: its part of the rows (the sweep, number ``width``, takes all)."""
        parts = self.width if number < self.width else 1
        return self.run.model_copy(update={"remaining": None, "part": number % parts, "parts": parts})

    def needs_sweep(self, summaries: list[TenantSummary]) -> bool:
        """Whether a sweep lane follows the lanes that ended with ``summaries``."""
        return self.width > 1 and all(s.outcome == "completed" for s in summaries)

    def failed(self, error: str) -> TenantSummary:
        """The summary of a lane that failed as a whole (terminated, or a bug)."""
        return TenantSummary(tenant_id=self.run.tenant_id, outcome="failed", error=error[:500])

    def merge(self, summaries: list[TenantSummary]) -> TenantSummary:
        """One tenant's summary from its lanes': counts add up; failed beats cancelled beats completed."""
        outcomes = {s.outcome for s in summaries}
        outcome: TenantOutcome = (
            "failed" if "failed" in outcomes else ("cancelled" if "cancelled" in outcomes else "completed")
        )
        errors = [s.error for s in summaries if s.error]
        return TenantSummary(
            tenant_id=self.run.tenant_id,
            outcome=outcome,
            batches=sum(s.batches for s in summaries),
            executions=sum(s.executions for s in summaries),
            totals=sum((s.totals for s in summaries), BatchTotals()),
            cancelled=sum(s.cancelled for s in summaries),
            error="; ".join(errors)[:500] if errors else None,
        )


@dataclass(frozen=True)
class AfterBatch:
    """What one batch's result means for its lane.

    Attributes:
        next: ``batch`` (ask for the next grant), ``wait`` (rows wait for a quiet-hours window: sleep until
            ``until``, then go on), ``completed`` (nothing claimable is left) or ``halted`` (the tenant
            refuses every send: the lane fails).
        until: with ``wait``, when the earliest deferred row is due.
    """

    next: Literal["batch", "wait", "completed", "halted"]
    until: datetime | None = None


@dataclass
class LaneProgress:
    """One ``tenant_lane`` execution's counters and cursor (mutable; the generator owns it).

    Attributes:
        run: the execution's input; its part widens to every part once the lane's own part is done.
        batches: batches sent by this lane over every execution.
        totals: their counters.
        remaining: the last batch's ``remaining`` (``None``: unknown, before a batch or after a change).
        steps: grants asked for in this execution (at most ``run.batches_per_execution``).
    """

    run: TenantRun
    batches: int = 0
    totals: BatchTotals = field(default_factory=BatchTotals)
    remaining: int | None = None
    steps: int = 0

    @classmethod
    def start(cls, run: TenantRun) -> LaneProgress:
        """The progress an execution starts with (counters carried over ``continue_as_new``)."""
        return cls(run=run, batches=run.batches_done, totals=run.totals, remaining=run.remaining)

    def next_step(self) -> bool:
        """Count one more grant; ``False`` once this execution has asked for its share (continue as new)."""
        if self.steps >= self.run.batches_per_execution:
            return False
        self.steps += 1
        return True

    def acquire(self, at: datetime, requester: str) -> Acquire:
        """The limiter request: a batch's worth, or fewer when fewer rows are known to be left."""
        want = self.run.batch_size if not self.remaining else min(self.run.batch_size, self.remaining)
        return Acquire(
            now=at.timestamp(),
            want=max(1, want),
            priority="urgent" if self.run.urgency is Urgency.URGENT else "normal",
            requester=requester,
        )

    @staticmethod
    def start_at(grant: Grant) -> datetime:
        """When to start the batch of ``grant``: ahead of its first slot, so the activity's dispatch and the
        rows' preparation are hidden from the tenant's rate (the sender waits for its first slot itself)."""
        start = grant.not_before_datetime()
        return start - policies.BATCH_START_LEAD if grant.tokens else start

    def batch_input(self, grant: Grant, at: datetime) -> SendBatchInput:
        """The ``send_batch`` input for ``grant``: one request per slot, at the grant's pace."""
        run = self.run
        return SendBatchInput(
            notification_id=run.notification_id,
            tenant_id=run.tenant_id,
            limit=grant.tokens,
            now=at,
            urgency=run.urgency,
            operation=run.operation,
            part=run.part,
            parts=run.parts,
            pacing=Pacing(
                not_before=grant.not_before_datetime(),
                pace_seconds=grant.pace_seconds,
                send_by=grant.send_by_datetime(),
                slack_seconds=grant.slack_seconds,
            ),
        )

    @staticmethod
    def report(grant: Grant, result: SendBatchResult, at: datetime, requester: str) -> Report:
        """The limiter report of one batch: its responses, and when its requests were ready and started
        (the booking ends at the last request; the first ready one teaches the lead, the first one the
        start lag)."""

        def seconds(moment: datetime | None) -> float | None:
            return None if moment is None else moment.timestamp()

        return Report(
            now=at.timestamp(),
            sent=result.sent,
            throttled=result.throttled,
            server_errors=result.server_errors,
            failed=result.unreachable + result.stale + result.failed,
            retry_after=result.max_retry_after,
            requester=requester,
            granted_at=grant.granted_at,
            first_send_at=seconds(result.first_send_at),
            last_send_at=seconds(result.last_send_at),
            first_ready_at=seconds(result.first_ready_at),
        )

    def record(self, result: SendBatchResult) -> AfterBatch:
        """Count a sent batch and say what the lane does next."""
        self.totals += BatchTotals.of(result)
        self.batches += 1
        if result.halted:
            # The tenant refuses every send (BotDisabledByAdmin, BotNotRegistered, ...); the rows not sent
            # stay pending for a later broadcast or a re-drive once the tenant is back.
            return AfterBatch("halted")
        self.remaining = result.remaining
        if result.remaining:
            return AfterBatch("batch")
        if result.next_deferred_at is not None:
            self.remaining = None
            return AfterBatch("wait", result.next_deferred_at)
        if self.run.parts > 1 and self.run.operation == "send":
            # This lane's part is done: help with the others' rows (claims settle any race), so the lanes
            # end together instead of the last part's lane finishing alone at a fraction of the rate.
            self.run = self.run.model_copy(update={"part": 0, "parts": 1})
            self.remaining = None
            return AfterBatch("batch")
        return AfterBatch("completed")

    def status(self, result: SendBatchResult) -> dict[str, object]:
        """The lane's custom status after ``result``."""
        return {
            "tenantId": self.run.tenant_id,
            "batches": self.batches,
            "totals": self.totals.to_json(),
            "remaining": result.remaining,
        }

    def summary(
        self, outcome: TenantOutcome, *, cancelled: int = 0, error: str | None = None
    ) -> TenantSummary:
        """The lane's output."""
        return TenantSummary(
            tenant_id=self.run.tenant_id,
            outcome=outcome,
            batches=self.batches,
            executions=self.run.executions + 1,
            totals=self.totals,
            cancelled=cancelled,
            error=None if error is None else error[:500],
        )

    def continuation(self) -> TenantRun:
        """The input of the lane's next execution."""
        return self.run.model_copy(
            update={
                "batches_done": self.batches,
                "executions": self.run.executions + 1,
                "totals": self.totals,
                "remaining": self.remaining,
            }
        )
