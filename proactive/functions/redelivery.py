"""Re-delivery triggers (ARCHITECTURE.md flow 6): wiring only; the work is :mod:`proactive.delivery.redelivery`.

``deliveries_retry`` (queue ``Settings.queues.deliveries_retry``, with a Durable client) ->
:meth:`~proactive.delivery.redelivery.Redelivery.redrive`; ``deliveries_retry_poison`` (``<queue>-poison``) ->
:meth:`~proactive.delivery.redelivery.Redelivery.dead_letter`, a failure on the last delivery recorded as a
``poison_handler_failed`` dead letter; ``reconcile`` (timer, :data:`RECONCILE_SCHEDULE`) ->
:meth:`~proactive.delivery.redelivery.Redelivery.reconcile`.
"""

from __future__ import annotations

from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

from proactive import function_names as fn
from proactive.adapters.durable_client import DurableOrchestrations
from proactive.composition import services
from proactive.delivery.dead_letters import record_poison_failure
from proactive.delivery.redelivery import (
    Redelivery,
    notifications_to_reconcile,
)
from proactive.delivery.redrive import PacedRuns
from proactive.models import utc_now

__all__ = [
    "RECONCILE_SCHEDULE",
    "blueprint",
]

# NCRONTAB with seconds: at second 0 of every 5th minute.
RECONCILE_SCHEDULE = "0 */5 * * * *"


def _redelivery() -> Redelivery:
    s = services()
    return Redelivery(
        ledger=s.deliveries,
        notifications=s.notifications,
        dead_letters=s.dead_letters,
        retries=s.queues.queue(s.settings.queues.deliveries_retry),
        clock=utc_now,
    )


def _runs(client: df.DurableOrchestrationClient) -> PacedRuns:
    settings = services().settings
    return PacedRuns(
        DurableOrchestrations(client),
        batch_size=settings.batch_size,
        batches_per_execution=settings.batches_per_execution,
    )


def blueprint() -> df.Blueprint:
    """The re-delivery triggers, bound to the queue named by ``Settings.queues.deliveries_retry``.

    A function, not a module-level blueprint: the queue names come from the settings that
    :func:`proactive.composition.configure` resolved (the worker indexes the app after its app settings are
    in the environment), so the trigger always listens where the sender writes.
    """
    bp = df.Blueprint()
    queue = services().settings.queues.deliveries_retry
    poison = queue + fn.POISON_SUFFIX

    @bp.function_name(fn.DELIVERIES_RETRY)
    @bp.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    @bp.durable_client_input(client_name="client")
    async def deliveries_retry(msg: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
        await _redelivery().redrive(msg.get_body(), _runs(client))

    @bp.function_name(fn.DELIVERIES_RETRY_POISON)
    @bp.queue_trigger(arg_name="msg", queue_name=poison, connection="AzureWebJobsStorage")
    async def deliveries_retry_poison(msg: func.QueueMessage) -> None:
        body = msg.get_body()
        await record_poison_failure(
            lambda: _redelivery().dead_letter(body, source_queue=queue),
            body,
            source_queue=queue,
            dequeue_count=msg.dequeue_count or 1,
            store=services().dead_letters,
            clock=utc_now,
        )

    @bp.function_name(fn.RECONCILE)
    @bp.timer_trigger(arg_name="timer", schedule=RECONCILE_SCHEDULE, run_on_startup=False)
    async def reconcile(timer: func.TimerRequest) -> None:
        s = services()
        now = utc_now()
        candidates = await notifications_to_reconcile(s.notifications, now=now)
        older_than = timedelta(seconds=s.settings.reconcile_after_seconds)
        await _redelivery().reconcile(candidates, older_than=older_than)

    return bp
