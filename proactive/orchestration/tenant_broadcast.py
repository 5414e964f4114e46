"""``tenant_broadcast`` and ``tenant_lane``: one tenant's paced send loop (ARCHITECTURE.md flow 3).

``tenant_lane`` is the loop, strictly sequential: ask the tenant's limiter entity for a grant of up to
``batchSize`` tokens -> wait on a durable timer until shortly before ``notBefore`` -> activity ``send_batch``
with ``limit = tokens`` and the grant's pacing (the sender claims and prepares the next rows itself, then
admits one request at a time at the grant's pace) -> report the batch's 429s / 5xx / Retry-After and request
times to the limiter -> again. Every ``batchesPerExecution`` grants it continues as new with its counters,
so its history holds at most one execution's batches whatever the audience size. Each yield awaits one
task, or a ``task_any`` of a timer and the cancel event, never a task that was part of an earlier compound
yield: the Durable extension's out-of-process shim processes an orchestrator's actions in order and awaits
each one, and a task scheduled inside one compound action and awaited again later is exactly what it does
not support (Azure/azure-functions-durable-python issue 603).

``tenant_broadcast`` keeps the tenant's rate between batches: with more than one batch of rows to send it
runs ``SEND_LANES`` lanes as sub-orchestrations, so one lane's round trip (report, acquire, activity
dispatch: hundreds of milliseconds on Azure) and its batch's slowest answer happen while the other lanes'
batches send. The limiter chains
their grants one after the other (a grant starts one pace after the previous booking's ``sendBy``), so two
lanes never send at once. When every lane has finished, rows a lane gave back after the other had read the
ledger may be left; one more lane alone (the sweep) sends them or confirms that nothing is left.
Each lane takes its own part of the tenant's rows (``SendBatchInput.part``), so lanes never race for a
claim; a lane whose part is done goes on over every part (so the lanes end together), as the sweep does. Update and
delete run one lane: they do not claim rows, so two lanes would repeat each other's calls.

A lane stops when the sender says nothing is claimable (``remaining == 0``); if rows wait for a quiet-hours
window to end (``nextDeferredAt``) it sleeps on a timer until then and goes on; the ``wake`` event ends that
sleep early (a row of the tenant became due meanwhile: :mod:`proactive.redrive`).

The same ``tenant_lane`` also runs on its own, started by the ``deliveries-retry`` trigger under
:func:`redrive_instance_id`: a re-drive run over every due row of one notification and tenant (hand-offs,
reconciled rows, welcomes), paced by the same limiter entity as the broadcast's lanes. A cancel (external event, or
the notification's cancelled flag seen by ``send_batch``) lets the batch under way finish, then marks the
rows not yet sent ``cancelled``. A batch the sender ``halted`` for the tenant (``BotDisabledByAdmin`` and
other tenant-wide refusals) ends the lane as ``failed``: every further send would fail the same way.

The report is a signal, not a call: the lane does not need its answer, and a signal costs one history
event instead of a round trip (it is never yielded: see the Durable notes).

Neither orchestration raises: a failure ends it with ``outcome: failed`` and the error, so one tenant's
trouble does not fail the other tenants' ``task_all`` in the parent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive.broadcast_request import Urgency
from proactive.orchestration import policies
from proactive.orchestration.clock import Orchestration, now, wait_until
from proactive.orchestration.runs import TenantRun, TenantSummary, add_counts
from proactive.rate_limiter import Grant, LimiterInputError, Report
from proactive.sender import Pacing, SendBatchInput, SendBatchResult


def lane_instance_id(tenant_instance_id: str, lane: int) -> str:
    """The ``tenant_lane`` instance number ``lane`` under a ``tenant_broadcast`` instance."""
    return f"{tenant_instance_id}.lane{lane}"


def redrive_instance_id(notification_id: str, tenant_id: str) -> str:
    """The ``tenant_lane`` instance that re-drives rows of one notification and tenant (:mod:`proactive.redrive`).

    Deterministic, so every retry message of the tenant finds the same instance: while it runs they wake it
    instead of starting another, and many messages collapse into one paced run.
    """
    return f"{notification_id}.{tenant_id}.redrive"


def lanes_for(run: TenantRun) -> int:
    """How many lanes a tenant run keeps: two once more than one batch of rows waits (sends only)."""
    if run.operation != "send":
        return 1
    if run.remaining is not None and run.remaining <= run.batch_size:
        return 1
    return policies.SEND_LANES


def merge_summaries(tenant_id: str, summaries: list[TenantSummary]) -> dict[str, Any]:
    """One tenant's summary from its lanes': counts add up; failed beats cancelled beats completed."""
    totals: dict[str, int] = {}
    for item in summaries:
        totals = add_counts(totals, item.totals)
    outcomes = {s.outcome for s in summaries}
    outcome = "failed" if "failed" in outcomes else ("cancelled" if "cancelled" in outcomes else "completed")
    errors = [s.error for s in summaries if s.error]
    return TenantSummary(
        tenant_id=tenant_id,
        outcome=outcome,
        batches=sum(s.batches for s in summaries),
        executions=sum(s.executions for s in summaries),
        totals=totals,
        cancelled=sum(s.cancelled for s in summaries),
        error="; ".join(errors)[:500] if errors else None,
    ).to_json()


def _report(context: df.DurableOrchestrationContext, grant: Grant, result: SendBatchResult) -> Report:
    """The limiter report of one batch: its responses, and when its requests were ready and started (the
    booking ends at the last request; the first ready one teaches the lead, the first one the start lag)."""

    def seconds(moment: datetime | None) -> float | None:
        return None if moment is None else moment.timestamp()

    return Report(
        now=now(context).timestamp(),
        sent=result.sent,
        throttled=result.throttled,
        server_errors=result.server_errors,
        failed=result.unreachable + result.stale + result.failed,
        retry_after=result.max_retry_after,
        requester=context.instance_id,
        granted_at=grant.granted_at,
        first_send_at=seconds(result.first_send_at),
        last_send_at=seconds(result.last_send_at),
        first_ready_at=seconds(result.first_ready_at),
    )


def tenant_broadcast(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body; input :class:`TenantRun` JSON, output :class:`TenantSummary` JSON."""
    run = TenantRun.from_json(context.get_input())
    width = lanes_for(run)

    def lane(number: int, remaining: int | None, parts: int) -> Any:
        return context.call_sub_orchestrator(
            fn.TENANT_LANE,
            run.model_copy(update={"remaining": remaining, "part": number % parts, "parts": parts}).to_json(),
            lane_instance_id(context.instance_id, number),
        )

    summaries: list[TenantSummary] = []
    try:
        # Each lane sends its own part of the rows (a stable hash of the recipient key): lanes never
        # race for the same claim.
        results = yield context.task_all([lane(number, None, width) for number in range(width)])
        summaries = [TenantSummary.from_json(result) for result in results]
        if width > 1 and all(s.outcome == "completed" for s in summaries):
            # Rows that came back after their lane had ended (a re-drive gave one back, say): one lane
            # over every part makes sure nothing is left.
            summaries.append(TenantSummary.from_json((yield lane(width, None, 1))))
    except Exception as exc:  # a lane that failed as a whole (terminated, or a bug): the tenant failed
        summaries.append(
            TenantSummary(tenant_id=run.tenant_id, outcome="failed", error=f"lane failed: {exc}"[:500])
        )
    return merge_summaries(run.tenant_id, summaries)


def tenant_lane(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body of one lane; input :class:`TenantRun` JSON, output :class:`TenantSummary` JSON."""
    run = TenantRun.from_json(context.get_input())
    limiter = df.EntityId(fn.TENANT_LIMITER, run.tenant_id)
    totals = dict(run.totals)
    batches = run.batches_done
    steps = 0

    def summary(outcome: str, **extra: Any) -> dict[str, Any]:
        return TenantSummary.model_validate(
            {
                "tenant_id": run.tenant_id,
                "outcome": outcome,
                "batches": batches,
                "executions": run.executions + 1,
                "totals": totals,
                **extra,
            }
        ).to_json()

    def end_cancelled() -> Orchestration:
        marked = yield context.call_activity_with_retry(
            fn.CANCEL_REMAINING,
            policies.BOOKKEEPING_RETRY,
            {"notificationId": run.notification_id, "tenantId": run.tenant_id},
        )
        return summary("cancelled", cancelled=int(marked.get("cancelled", 0)))

    remaining = run.remaining
    while steps < run.batches_per_execution:
        steps += 1
        want = run.batch_size if not remaining else min(run.batch_size, remaining)
        decision = yield context.call_entity(
            limiter,
            fn.LIMITER_ACQUIRE,
            {
                "now": now(context).timestamp(),
                "want": max(1, want),
                "priority": run.urgency,
                "requester": context.instance_id,
            },
        )
        try:
            grant = Grant.from_json(decision.get("grant") if isinstance(decision, dict) else None)
        except LimiterInputError:
            # The limiter answers errors as decisions (it never raises); a malformed grant is a bug.
            return summary("failed", error=f"limiter refused: {decision!r}"[:500])
        tokens = grant.tokens
        start = grant.not_before_datetime()
        if tokens:
            # The sender waits for its first admission itself: starting a little early hides the activity's
            # dispatch and the rows' preparation from the tenant's rate.
            start -= policies.BATCH_START_LEAD
        if (yield from wait_until(context, start)):
            return (yield from end_cancelled())
        if tokens == 0:
            continue  # breaker open or a probe in flight: ask again at notBefore
        batch = SendBatchInput(
            notification_id=run.notification_id,
            tenant_id=run.tenant_id,
            limit=tokens,
            now=now(context),
            urgency=Urgency(run.urgency),
            operation=run.operation,
            part=run.part,
            parts=run.parts,
            # Requests admitted at the grant's pace, so any window stays under the tenant's rate.
            pacing=Pacing(
                not_before=grant.not_before_datetime(),
                pace_seconds=grant.pace_seconds,
                send_by=grant.send_by_datetime(),
                slack_seconds=grant.slack_seconds,
            ),
        )
        try:
            raw = yield context.call_activity_with_retry(
                fn.SEND_BATCH, policies.SEND_BATCH_RETRY, batch.to_json()
            )
            result = SendBatchResult.from_json(raw)
        except Exception as exc:  # the activity failed every attempt: rows stay for reconciliation
            return summary("failed", error=str(exc)[:500])
        halted = result.halted
        if result.cancelled or halted == "cancelled":
            return (yield from end_cancelled())
        context.signal_entity(limiter, fn.LIMITER_REPORT, _report(context, grant, result).to_json())
        totals = add_counts(totals, result.to_json())
        batches += 1
        context.set_custom_status(
            {
                "tenantId": run.tenant_id,
                "batches": batches,
                "totals": totals,
                "remaining": result.remaining,
            }
        )
        if halted:
            # The tenant refuses every send (BotDisabledByAdmin, BotNotRegistered, ...): stop here; the rows
            # not sent stay pending for a later broadcast or a re-drive once the tenant is back.
            return summary("failed", error=f"halted: {halted}"[:500])
        remaining = result.remaining
        if remaining == 0 and result.next_deferred_at is None and run.parts > 1:
            # This lane's part is done: help with the others' rows (claims settle any race), so the lanes
            # end together instead of the last part's lane finishing alone at a fraction of the rate.
            run = run.model_copy(update={"part": 0, "parts": 1})
            remaining = None
            continue
        if remaining == 0:
            if result.next_deferred_at is None:
                return summary("completed")
            # A wake event (a re-drive of a row that became due meanwhile) ends the wait early; the next
            # batch then takes what is due and the lane sleeps again until the next deferred row.
            if (yield from wait_until(context, result.next_deferred_at, wake_event=fn.WAKE_EVENT)):
                return (yield from end_cancelled())
            remaining = None

    context.continue_as_new(
        run.model_copy(
            update={
                "batches_done": batches,
                "executions": run.executions + 1,
                "totals": totals,
                "remaining": remaining,
            }
        ).to_json()
    )
    return None
