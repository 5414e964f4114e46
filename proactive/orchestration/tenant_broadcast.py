"""``tenant_broadcast``: one tenant's paced send loop (ARCHITECTURE.md flow 3).

Each turn: ask the tenant's limiter entity for a grant of up to ``batchSize`` tokens -> wait on a durable
timer until ``notBefore`` -> activity ``send_batch`` with ``limit = tokens`` and the grant's pacing (the
sender claims the next rows itself and starts one request per slot) -> report the batch's 429s / 5xx / Retry-After to the limiter -> again. Every
``batchesPerExecution`` batches the orchestration continues as new with its counters, so its history
holds at most one execution's batches whatever the audience size.

It stops when the sender says nothing is claimable (``remaining == 0``); if rows wait for a quiet-hours
window to end (``nextDeferredAt``) it sleeps on a timer until then and goes on. A cancel (external event,
or the notification's cancelled flag seen by ``send_batch``) marks the rows not yet sent ``cancelled``. A batch
the sender ``halted`` for the tenant (``BotDisabledByAdmin`` and other tenant-wide refusals) ends the tenant as
``failed``: every further send would fail the same way.

The report is a signal, not a call: the orchestration does not need its answer, and a signal costs one
history event instead of a round trip (it is never yielded: see the Durable notes).

The orchestration never raises: a failure ends it with ``outcome: failed`` and the error, so one tenant's
trouble does not fail the other tenants' ``task_all`` in the parent.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive.orchestration import policies
from proactive.orchestration.clock import Orchestration, iso, now, parse_iso, wait_until
from proactive.orchestration.runs import TenantRun, TenantSummary, add_counts


def tenant_broadcast(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body; input :class:`TenantRun` JSON, output :class:`TenantSummary` JSON."""
    run = TenantRun.from_json(context.get_input())
    limiter = df.EntityId(fn.TENANT_LIMITER, run.tenant_id)
    totals = dict(run.totals)
    batches = run.batches_done
    want = run.batch_size

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

    def cancelled() -> Orchestration:
        marked = yield context.call_activity_with_retry(
            fn.CANCEL_REMAINING,
            policies.BOOKKEEPING_RETRY,
            {"notificationId": run.notification_id, "tenantId": run.tenant_id},
        )
        return summary("cancelled", cancelled=int(marked.get("cancelled", 0)))

    for _ in range(run.batches_per_execution):
        decision = yield context.call_entity(
            limiter,
            fn.LIMITER_ACQUIRE,
            {
                "now": now(context).timestamp(),
                "want": want,
                "priority": run.urgency,
                "requester": context.instance_id,
            },
        )
        grant = decision.get("grant") if isinstance(decision, dict) else None
        if grant is None:
            # The limiter answers errors as decisions (it never raises); a malformed grant is a bug to surface.
            return summary("failed", error=f"limiter refused: {decision!r}"[:500])
        if (yield from wait_until(context, parse_iso(grant["notBeforeIso"]))):
            return (yield from cancelled())
        tokens = int(grant["tokens"])
        if tokens == 0:
            continue  # breaker open or a probe in flight: ask again at notBefore
        try:
            result = yield context.call_activity_with_retry(
                fn.SEND_BATCH,
                policies.SEND_BATCH_RETRY,
                {
                    "notificationId": run.notification_id,
                    "tenantId": run.tenant_id,
                    "limit": tokens,
                    "now": iso(now(context)),
                    "urgency": run.urgency,
                    "operation": run.operation,
                    # One request per slot, paced so any window stays under the tenant's rate.
                    "pacing": {
                        "notBefore": grant["notBeforeIso"],
                        "paceSeconds": grant["paceSeconds"],
                        "sendBy": grant["sendByIso"],
                        "slackSeconds": grant["slackSeconds"],
                    },
                },
            )
        except Exception as exc:  # the activity failed every attempt: rows stay for reconciliation
            return summary("failed", error=str(exc)[:500])
        halted = result.get("halted")
        if result.get("cancelled") or halted == "cancelled":
            return (yield from cancelled())
        context.signal_entity(
            limiter,
            fn.LIMITER_REPORT,
            {
                "now": now(context).timestamp(),
                "sent": int(result.get("sent", 0)),
                "throttled": int(result.get("throttled", 0)),
                "serverErrors": int(result.get("serverErrors", 0)),
                "failed": sum(int(result.get(k, 0)) for k in ("unreachable", "stale", "failed")),
                "retryAfter": result.get("maxRetryAfter"),
                "requester": context.instance_id,
                "grantedAt": grant["grantedAt"],
                # When the batch's first and last requests started: the booking ends at the last one (None:
                # at now) and the first teaches the limiter how late batches start after their timer.
                "firstSendAt": result.get("firstSendAt"),
                "lastSendAt": result.get("lastSendAt"),
            },
        )
        totals = add_counts(totals, result)
        batches += 1
        context.set_custom_status(
            {
                "tenantId": run.tenant_id,
                "batches": batches,
                "totals": totals,
                "remaining": result.get("remaining"),
            }
        )
        if halted:
            # The tenant refuses every send (BotDisabledByAdmin, BotNotRegistered, ...): stop here; the rows
            # not sent stay pending for a later broadcast or a re-drive once the tenant is back.
            return summary("failed", error=f"halted: {halted}"[:500])
        remaining = int(result.get("remaining", 0))
        if remaining == 0:
            next_deferred = result.get("nextDeferredAt")
            if next_deferred is None:
                return summary("completed")
            if (yield from wait_until(context, parse_iso(next_deferred))):
                return (yield from cancelled())
            want = run.batch_size
            continue
        want = max(1, min(run.batch_size, remaining))

    context.continue_as_new(
        run.model_copy(
            update={"batches_done": batches, "executions": run.executions + 1, "totals": totals}
        ).to_json()
    )
    return None
