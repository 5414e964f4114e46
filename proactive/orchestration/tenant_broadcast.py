"""``tenant_broadcast``: one tenant's paced send loop (ARCHITECTURE.md flow 3).

Each turn: ask the tenant's limiter entity for a grant of up to ``batchSize`` tokens -> wait on a durable
timer until shortly before ``notBefore`` -> activity ``send_batch`` with ``limit = tokens`` and the grant's
pacing (the sender claims the next rows itself and starts one request per slot, never before its slot) ->
report the batch's 429s / 5xx / Retry-After and request times to the limiter -> again. Every
``batchesPerExecution`` grants the orchestration continues as new with its counters, so its history holds
at most one execution's batches whatever the audience size.

Pipelined: once a batch has shown that more rows wait than the batches under way will take, the next grant
is booked and its activity started while the current batch still sends (``SEND_BATCHES_IN_FLIGHT``, two),
so the per-batch round trip does not fall between the tenant's slots. The limiter places the next grant
after the current one's ``sendBy``; the two places use two requester names (``{instanceId}`` and
``{instanceId}#1``) because a requester's new acquire closes its own earlier booking. Batches are awaited
and reported in order. Update and delete batches (they do not claim rows) run one at a time. The Python
SDK schedules a task only when it is yielded, so a new activity is yielded together with the next thing
awaited (``task_any``) and awaited on its own later.

It stops when the sender says nothing is claimable (``remaining == 0``) and no batch is under way (if the
batch before gave rows back, ``returned``, after this one may have read the ledger, one more batch runs
alone to be sure); if rows
wait for a quiet-hours window to end (``nextDeferredAt``) it sleeps on a timer until then and goes on. A
cancel (external event, or the notification's cancelled flag seen by ``send_batch``) lets the batch under
way finish, then marks the rows not yet sent ``cancelled``. A batch the sender ``halted`` for the tenant
(``BotDisabledByAdmin`` and other tenant-wide refusals) ends the tenant as ``failed``: every further send
would fail the same way.

The report is a signal, not a call: the orchestration does not need its answer, and a signal costs one
history event instead of a round trip (it is never yielded: see the Durable notes).

The orchestration never raises: a failure ends it with ``outcome: failed`` and the error, so one tenant's
trouble does not fail the other tenants' ``task_all`` in the parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive.orchestration import policies
from proactive.orchestration.clock import Orchestration, iso, now, parse_iso, wait_until
from proactive.orchestration.runs import TenantRun, TenantSummary, add_counts


@dataclass
class _Flight:
    """A ``send_batch`` activity under way and the grant it uses."""

    task: Any
    grant: dict[str, Any]
    requester: str
    tokens: int
    overlapped: bool = False  # another batch ran beside it: rows it gave back may be missing from its count


@dataclass(frozen=True)
class _Stop:
    """Why the loop ends early: ``failed`` (with the error) or ``cancelled``."""

    outcome: str
    error: str | None = None


def tenant_broadcast(context: df.DurableOrchestrationContext) -> Orchestration:
    """Orchestrator body; input :class:`TenantRun` JSON, output :class:`TenantSummary` JSON."""
    run = TenantRun.from_json(context.get_input())
    limiter = df.EntityId(fn.TENANT_LIMITER, run.tenant_id)
    # Update and delete work on sent rows without claiming them, so two of their batches at once would
    # repeat each other's calls: they go one at a time.
    depth = policies.SEND_BATCHES_IN_FLIGHT if run.operation == "send" else 1
    totals = dict(run.totals)
    batches = run.batches_done
    flights: list[_Flight] = []
    fresh: list[Any] = []  # an activity created but not yet yielded (the SDK schedules a task on its yield)
    # The latest finished batch's count (or the rows materialised); None when unknown or after a wait.
    remaining = run.remaining or None
    next_deferred: str | None = None
    returned = 0  # rows the latest finished batch gave back
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

    def wait(task: Any) -> Orchestration:
        # Yield ``task``; a fresh activity is scheduled alongside, so it runs while this one is awaited.
        companion = fresh.pop() if fresh else task
        if companion is not task:
            yield context.task_any([companion, task])
        return (yield task)

    def wants_more() -> bool:
        if steps >= run.batches_per_execution or len(flights) >= depth:
            return False
        if remaining is None:
            return not flights  # nothing known yet: one batch at a time
        return remaining - sum(f.tokens for f in flights) > 0

    def finish() -> Orchestration:
        # Await the oldest batch, report it to the limiter and add it up; a _Stop when the tenant must end.
        nonlocal totals, batches, remaining, next_deferred, returned
        flight = flights.pop(0)
        try:
            result = yield from wait(flight.task)
        except Exception as exc:  # the activity failed every attempt: rows stay for reconciliation
            return _Stop("failed", str(exc)[:500])
        halted = result.get("halted")
        if result.get("cancelled") or halted == "cancelled":
            return _Stop("cancelled")
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
                "requester": flight.requester,
                "grantedAt": flight.grant["grantedAt"],
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
            return _Stop("failed", f"halted: {halted}"[:500])
        remaining = int(result.get("remaining", 0))
        next_deferred = result.get("nextDeferredAt")
        if remaining == 0 and flight.overlapped and returned:
            # The batch before it gave rows back (no slot left, say), maybe after this one read the
            # ledger: only a batch that runs alone may now say that nothing is left.
            remaining = None
        returned = int(result.get("returned", 0))
        return None

    def end(stop: _Stop) -> Orchestration:
        # Let the batches under way finish (their counts stand), then end as ``stop`` says.
        while flights:
            yield from finish()
        if stop.outcome == "cancelled":
            marked = yield context.call_activity_with_retry(
                fn.CANCEL_REMAINING,
                policies.BOOKKEEPING_RETRY,
                {"notificationId": run.notification_id, "tenantId": run.tenant_id},
            )
            return summary("cancelled", cancelled=int(marked.get("cancelled", 0)))
        return summary(stop.outcome, error=stop.error)

    while True:
        if wants_more():
            steps += 1
            # ``remaining`` may be a lower bound (the sender stops counting once the answer is settled), so
            # it is not reduced by the batches under way: a grant too large only books slots left unused,
            # and the report closes the booking at its last request.
            want = run.batch_size if remaining is None else min(run.batch_size, remaining)
            # Two requesters per tenant run, one per pipeline place, so the limiter keeps both bookings
            # open (a requester's new acquire closes its own earlier booking).
            requester = context.instance_id + ("" if (batches + len(flights)) % 2 == 0 else "#1")
            decision = yield from wait(
                context.call_entity(
                    limiter,
                    fn.LIMITER_ACQUIRE,
                    {
                        "now": now(context).timestamp(),
                        "want": max(1, want),
                        "priority": run.urgency,
                        "requester": requester,
                    },
                )
            )
            grant = decision.get("grant") if isinstance(decision, dict) else None
            if grant is None:
                # The limiter answers errors as decisions (it never raises); a malformed grant is a bug.
                return (yield from end(_Stop("failed", f"limiter refused: {decision!r}"[:500])))
            tokens = int(grant["tokens"])
            start = parse_iso(grant["notBeforeIso"])
            if tokens:
                # The sender waits for the first slot itself: starting a little early hides the activity's
                # start-up (and, pipelined, the previous batch's tail) from the tenant's rate.
                start -= policies.BATCH_START_LEAD
            if (yield from wait_until(context, start)):
                return (yield from end(_Stop("cancelled")))
            if tokens == 0:
                continue  # breaker open or a probe in flight: ask again at notBefore
            task = context.call_activity_with_retry(
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
            fresh.append(task)
            for flight in flights:
                flight.overlapped = True
            flights.append(_Flight(task, grant, requester, tokens, overlapped=bool(flights)))
            if wants_more():
                continue  # book the next batch while this one runs
        if not flights:
            break  # this execution's steps are used up
        stop = yield from finish()
        if stop is not None:
            return (yield from end(stop))
        if remaining == 0 and not flights:
            if next_deferred is None:
                return summary("completed")
            if (yield from wait_until(context, parse_iso(next_deferred))):
                return (yield from end(_Stop("cancelled")))
            remaining, next_deferred = None, None

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
