"""``broadcast``: schedule, materialise the audience, fan out one ``tenant_broadcast`` per tenant.

Phases (one :class:`BroadcastRun` input carries the cursor across ``continue_as_new``):

1. ``schedule``: with ``sendAt`` in the future, wait on a durable timer (a cancel event ends it early).
2. ``materialise`` (``send`` only): activity ``materialise_audience`` once per page of a tenant's audience,
   tenant by tenant; each call returns a cursor, never recipients. After
   :data:`MATERIALISE_CALLS_PER_EXECUTION` calls the orchestration continues as new with the cursor, so its
   history stays bounded for any audience size.
3. ``send``: one sub-orchestration per tenant (instance id ``{instanceId}.{tenantId}``, so cancel can
   reach it) in parallel: ``tenant_broadcast`` and its lanes, or a single ``tenant_lane`` when the tenant has
   at most one batch's worth of rows (and for update and delete); while they run, progress is polled from the ledger at growing
   intervals (:data:`PROGRESS_FIRST_SECONDS` doubling to :data:`PROGRESS_MAX_SECONDS`) and published as
   custom status; the output is the final summary. The parent cannot continue as new while its children
   run, so its history grows with the *logarithm* of the duration (plus one poll per hour past the cap),
   never with the audience: a 30-minute broadcast polls 7 times, one held 7 hours by quiet hours 14.
   ``GET /api/broadcasts/{id}`` reads the ledger itself, so the custom status only has to be roughly live.

``update`` and ``delete`` (PATCH / recall) skip scheduling and materialisation: they walk the rows the
``send`` left and change the sent messages, paced by the same limiter.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive.models import NotificationStatus
from proactive.orchestration import policies
from proactive.orchestration.clock import Orchestration, WaitEnd, iso, now, parse_iso, wait_until
from proactive.orchestration.lanes import TenantLanes
from proactive.orchestration.runs import (
    AudiencePageRequest,
    BatchTotals,
    BroadcastRun,
    LedgerCounts,
    LedgerCountsRequest,
    MaterialisePage,
    RecordRequest,
    TenantRun,
    TenantSummary,
)

MATERIALISE_CALLS_PER_EXECUTION = 50
# Up to this many materialise calls stay in the send phase's history instead of a continue-as-new.
SMALL_MATERIALISE_CALLS = 4
PROGRESS_FIRST_SECONDS = 15
PROGRESS_MAX_SECONDS = 3600


def _rows(run: BroadcastRun, position: int) -> int | None:
    # None (unknown) rather than 0: a tenant whose rows came some other way still gets a first batch.
    count = run.tenant_rows[position] if position < len(run.tenant_rows) else 0
    return count or None


def _summary(tenant_id: str, child: Any) -> TenantSummary:
    """A tenant's summary from its child task. ``tenant_broadcast`` never raises, but a terminated child
    (or one that failed before its first line) fails the ``task_all`` at once: the parent still ends, with
    that tenant (and any tenant whose child had not finished yet) counted as failed."""
    if child.is_completed and not isinstance(child.result, BaseException) and child.result is not None:
        return TenantSummary.from_json(child.result)
    error = str(child.result) if child.is_completed else "the tenant orchestration had not finished"
    return TenantSummary(tenant_id=tenant_id, outcome="failed", error=error[:500] or "failed")


def child_instance_id(parent_instance_id: str, tenant_id: str) -> str:
    """The ``tenant_broadcast`` instance of ``tenant_id`` under a ``broadcast`` instance."""
    return f"{parent_instance_id}.{tenant_id}"


def _tenant_child(
    context: df.DurableOrchestrationContext, run: BroadcastRun, position: int, tenant: str
) -> Any:
    """The tenant's sub-orchestration: ``tenant_broadcast`` with its lanes, or for one batch's worth of rows
    the lane itself under the same instance id, which saves
    the coordinator's two hops (a few hundred milliseconds on Azure) before the first message and after
    the last one."""
    tenant_run = TenantRun(
        notification_id=run.notification_id,
        tenant_id=tenant,
        urgency=run.urgency,
        operation=run.operation,
        batch_size=run.batch_size,
        batches_per_execution=run.batches_per_execution,
        # Rows materialised for the tenant: more than one batch's worth runs several lanes. Update and
        # delete count their sent rows as they go.
        remaining=_rows(run, position) if run.operation == "send" else None,
    )
    name = fn.TENANT_BROADCAST if TenantLanes(tenant_run).width > 1 else fn.TENANT_LANE
    return context.call_sub_orchestrator(
        name, tenant_run.to_json(), child_instance_id(context.instance_id, tenant)
    )


def broadcast(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body; input :class:`BroadcastRun` JSON, output the broadcast summary JSON."""
    run = BroadcastRun.from_json(context.get_input())
    sending = run.operation == "send"
    recording: Any = None  # the "running" record, not yet awaited

    if run.phase == "schedule":
        if sending and run.send_at is not None:
            context.set_custom_status({"phase": "scheduled", "sendAt": run.send_at})
            if (yield from wait_until(context, parse_iso(run.send_at))) == WaitEnd.CANCELLED:
                cancelled = RecordRequest(
                    notification_id=run.notification_id,
                    status=NotificationStatus.CANCELLED,
                    tenants=run.tenants,
                )
                record = LedgerCounts.from_json(
                    (
                        yield context.call_activity_with_retry(
                            fn.RECORD_BROADCAST, policies.BOOKKEEPING_RETRY, cancelled.to_json()
                        )
                    )
                )
                ended = {"phase": "cancelled", "completedAt": iso(now(context)), **record.to_json()}
                context.set_custom_status(ended)
                return ended
        run = run.model_copy(
            update={"phase": "materialise" if sending else "send", "started_at": iso(now(context))}
        )
        if sending:
            # Recorded together with the first materialise call (one round trip instead of two before the
            # first message); yielded alone below if there is nothing to materialise.
            running = RecordRequest(notification_id=run.notification_id, status=NotificationStatus.RUNNING)
            recording = context.call_activity_with_retry(
                fn.RECORD_BROADCAST, policies.BOOKKEEPING_RETRY, running.to_json()
            )

    if run.phase == "materialise":
        calls = 0
        index, cursor, materialised = run.tenant_index, run.cursor, run.materialised
        rows = list(run.tenant_rows) + [0] * (len(run.tenants) - len(run.tenant_rows))
        while index < len(run.tenants):
            if calls == MATERIALISE_CALLS_PER_EXECUTION:
                context.continue_as_new(
                    run.model_copy(
                        update={
                            "tenant_index": index,
                            "cursor": cursor,
                            "materialised": materialised,
                            "tenant_rows": tuple(rows),
                        }
                    ).to_json()
                )
                return None
            call = context.call_activity_with_retry(
                fn.MATERIALISE_AUDIENCE,
                policies.MATERIALISE_RETRY,
                AudiencePageRequest(
                    notification_id=run.notification_id, tenant_id=run.tenants[index], cursor=cursor
                ).to_json(),
            )
            if recording is None:
                raw = yield call
            else:
                raw = (yield context.task_all([recording, call]))[1]
                recording = None
            page = MaterialisePage.from_json(raw)
            calls += 1
            materialised += page.added
            rows[index] += page.added
            cursor = page.cursor
            if cursor is None:
                index += 1
            context.set_custom_status(
                {
                    "phase": "materialising",
                    "startedAt": run.started_at,
                    "materialised": materialised,
                    "tenantsDone": index,
                    "tenants": len(run.tenants),
                }
            )
        if recording is not None:
            yield recording
        run = run.model_copy(
            update={
                "phase": "send",
                "tenant_index": index,
                "cursor": None,
                "materialised": materialised,
                "tenant_rows": tuple(rows),
            }
        )
        if calls > SMALL_MATERIALISE_CALLS:
            # Send with an empty history: this execution's materialise calls would otherwise stay in every
            # replay of the send phase (up to 4 x MATERIALISE_CALLS_PER_EXECUTION events, growing with the
            # audience's last partial stretch). A small audience's few calls are cheaper to keep than the
            # continue-as-new round trip (a queue hop on Azure) before the first message.
            context.continue_as_new(run.to_json())
            return None

    children = [_tenant_child(context, run, position, tenant) for position, tenant in enumerate(run.tenants)]
    everything = context.task_all(children)
    status: dict[str, Any] = {
        "phase": "sending",
        "operation": run.operation,
        "startedAt": run.started_at,
        "materialised": run.materialised,
        "tenants": len(run.tenants),
    }
    context.set_custom_status(status)
    interval = PROGRESS_FIRST_SECONDS
    while True:
        poll = context.create_timer(now(context) + timedelta(seconds=interval))
        winner = yield context.task_any([everything, poll])
        if winner == everything:
            poll.cancel()
            break
        try:
            progress = LedgerCounts.from_json(
                (
                    yield context.call_activity_with_retry(
                        fn.BROADCAST_PROGRESS,
                        policies.BOOKKEEPING_RETRY,
                        LedgerCountsRequest(
                            notification_id=run.notification_id, tenants=run.tenants
                        ).to_json(),
                    )
                )
            )
        except Exception:  # progress is cosmetic: never fail a broadcast over it
            progress = LedgerCounts()
        status = {**status, **progress.to_json()}
        context.set_custom_status(status)
        interval = min(interval * 2, PROGRESS_MAX_SECONDS)

    summaries = [_summary(tenant, child) for tenant, child in zip(run.tenants, children, strict=True)]
    totals = sum((s.totals for s in summaries), BatchTotals())
    outcome = (
        "cancelled"
        if any(s.outcome == "cancelled" for s in summaries)
        else ("failed" if any(s.outcome == "failed" for s in summaries) else "completed")
    )
    final: dict[str, Any] = {
        "phase": outcome,
        "operation": run.operation,
        "startedAt": run.started_at,
        "completedAt": iso(now(context)),
        "materialised": run.materialised,
        "throttled": totals.throttled,
        "batchTotals": totals.to_json(),
        "tenants": [s.to_json() for s in summaries],
    }
    if sending:
        done = RecordRequest(
            notification_id=run.notification_id,
            status=NotificationStatus(outcome),
            tenants=run.tenants,
            throttled=totals.throttled,
        )
        record = yield context.call_activity_with_retry(
            fn.RECORD_BROADCAST, policies.BOOKKEEPING_RETRY, done.to_json()
        )
        final.update(LedgerCounts.from_json(record).to_json())
    context.set_custom_status({k: v for k, v in final.items() if k != "tenants"})
    return final
