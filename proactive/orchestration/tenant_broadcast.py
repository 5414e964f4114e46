"""``tenant_broadcast`` and ``tenant_lane``: one tenant's paced send loop (ARCHITECTURE.md flow 3).

``tenant_lane`` is the loop, strictly sequential: acquire a grant from the tenant's limiter entity -> wait on
a durable timer until shortly before ``notBefore`` -> activity ``send_batch`` (it prepares its rows, then
admits one request per slot of the grant) -> signal the batch's report to the limiter -> again. Every
``batchesPerExecution`` grants it continues as new with its counters, so its history stays bounded whatever
the audience size. ``tenant_broadcast`` keeps the tenant's rate between batches by running several lanes
(each over its own part of the rows), then a sweep lane; :mod:`proactive.orchestration.lanes` holds that
bookkeeping and the per-batch decisions.

The one rule the Durable extension imposes here: each yield awaits one task, or a ``task_any`` of a timer
and the cancel event, never a task that was part of an earlier compound yield (the out-of-process shim
processes actions in order; Azure/azure-functions-durable-python issue 603). The report is a signal, not
a call: the lane does not need its answer, and it is never yielded.

A lane sleeps while its remaining rows wait for a quiet-hours window; the ``wake`` event ends that sleep
early (a row of the tenant became due meanwhile: :mod:`proactive.delivery.redrive`). The same ``tenant_lane`` also
runs on its own, started by the ``deliveries-retry`` trigger under :func:`redrive_instance_id`: a re-drive
run over every due row of one notification and tenant (hand-offs, reconciled rows, welcomes), paced by the
same limiter entity as the broadcast's lanes.

A cancel (external event, or the cancelled flag ``send_batch`` sees) lets the batch under way finish, then
marks the rows not yet sent ``cancelled``. Neither orchestration raises: a failure ends it with ``outcome:
failed`` and the error, so one tenant's trouble does not fail the other tenants' ``task_all``.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
from pydantic import ValidationError

from proactive import function_names as fn
from proactive.delivery.contract import SendBatchResult
from proactive.limiter import AcquireDecision
from proactive.orchestration import policies
from proactive.orchestration.clock import Orchestration, WaitEnd, now, wait_until
from proactive.orchestration.lanes import LaneProgress, TenantLanes, lane_instance_id
from proactive.orchestration.runs import CancelledRows, TenantRows, TenantRun, TenantSummary

__all__ = ["lane_instance_id", "redrive_instance_id", "tenant_broadcast", "tenant_lane"]


def redrive_instance_id(notification_id: str, tenant_id: str) -> str:
    """The ``tenant_lane`` instance that re-drives rows of one notification and tenant (:mod:`proactive.delivery.redrive`).

    Deterministic, so every retry message of the tenant finds the same instance: while it runs they wake it
    instead of starting another, and many messages collapse into one paced run.
    """
    return f"{notification_id}.{tenant_id}.redrive"


def tenant_broadcast(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body; input :class:`TenantRun` JSON, output :class:`TenantSummary` JSON."""
    lanes = TenantLanes(TenantRun.from_json(context.get_input()))

    def lane(number: int) -> Any:
        instance = lane_instance_id(context.instance_id, number)
        return context.call_sub_orchestrator(fn.TENANT_LANE, lanes.lane_run(number).to_json(), instance)

    summaries: list[TenantSummary] = []
    try:
        results = yield context.task_all([lane(number) for number in range(lanes.width)])
        summaries = [TenantSummary.from_json(result) for result in results]
        if lanes.needs_sweep(summaries):
            summaries.append(TenantSummary.from_json((yield lane(lanes.width))))
    except Exception as exc:  # a lane that failed as a whole (terminated, or a bug): the tenant failed
        summaries.append(lanes.failed(f"lane failed: {exc}"))
    return lanes.merge(summaries).to_json()


def _woken_meanwhile(context: df.DurableOrchestrationContext) -> Orchestration:
    """Whether a wake event came while the run was busy: the SDK keeps an event raised while nobody waited, so
    the waiter resolves at once; otherwise a timer due now answers first. Closes the window in which a trigger
    saw the run under way (and only woke it) while the run's last batch had already read the ledger."""
    timer = context.create_timer(now(context))
    wake = context.wait_for_external_event(fn.WAKE_EVENT)
    winner = yield context.task_any([timer, wake])
    if winner != timer:
        timer.cancel()
    return winner == wake


def tenant_lane(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body of one lane; input :class:`TenantRun` JSON, output :class:`TenantSummary` JSON."""
    lane = LaneProgress.start(TenantRun.from_json(context.get_input()))
    limiter = df.EntityId(fn.TENANT_LIMITER, lane.run.tenant_id)

    def end_cancelled() -> Orchestration:
        rows = TenantRows(notification_id=lane.run.notification_id, tenant_id=lane.run.tenant_id)
        marked = yield context.call_activity_with_retry(
            fn.CANCEL_REMAINING, policies.BOOKKEEPING_RETRY, rows.to_json()
        )
        return lane.summary("cancelled", cancelled=CancelledRows.from_json(marked).cancelled).to_json()

    while lane.next_step():
        ask = lane.acquire(now(context), context.instance_id)
        answer = yield context.call_entity(limiter, fn.LIMITER_ACQUIRE, ask.to_json())
        try:
            grant = AcquireDecision.from_json(answer).grant
        except ValidationError:
            grant = None
        if grant is None:  # the limiter answers errors as decisions (it never raises): a bug
            return lane.summary("failed", error=f"limiter refused: {answer!r}").to_json()
        if (yield from wait_until(context, lane.start_at(grant))) == WaitEnd.CANCELLED:
            return (yield from end_cancelled())
        if grant.tokens == 0:
            continue  # breaker open or a probe in flight: ask again at notBefore
        batch = lane.batch_input(grant, now(context))
        try:
            raw = yield context.call_activity_with_retry(
                fn.SEND_BATCH, policies.SEND_BATCH_RETRY, batch.to_json()
            )
            result = SendBatchResult.from_json(raw)
        except Exception as exc:  # the activity failed every attempt: rows stay for reconciliation
            return lane.summary("failed", error=str(exc)).to_json()
        if result.cancelled or result.halted == "cancelled":
            return (yield from end_cancelled())
        report = lane.report(grant, result, now(context), context.instance_id)
        context.signal_entity(limiter, fn.LIMITER_REPORT, report.to_json())
        after = lane.record(result)
        context.set_custom_status(lane.status(result))
        if after.next == "halted":
            return lane.summary("failed", error=f"halted: {result.halted}").to_json()
        if after.next == "completed":
            if lane.run.redrive and (yield from _woken_meanwhile(context)):
                # A row became due while the batch ran, after the batch had read the ledger: look again, in a
                # fresh execution (the SDK resolves every later waiter of an event that came while nobody
                # waited, so in this execution each further check would answer "woken" again).
                context.continue_as_new(lane.continuation().to_json())
                return None
            return lane.summary("completed").to_json()
        # Quiet hours: a wake event (a re-drive of a row that became due meanwhile) ends the wait early; the
        # next batch, in a fresh execution (see wait_until), takes what is due and the lane sleeps again until
        # the next deferred row.
        if after.until is not None:
            ended = yield from wait_until(context, after.until, wake_event=fn.WAKE_EVENT)
            if ended == WaitEnd.CANCELLED:
                return (yield from end_cancelled())
            if ended == WaitEnd.WOKEN:
                context.continue_as_new(lane.continuation().to_json())
                return None

    context.continue_as_new(lane.continuation().to_json())
    return None
