"""Graph bootstrap (ARCHITECTURE.md flow 2): the ``installs`` queue, its poison queue, the Graph limiter.

Wiring only; the work is :class:`proactive.install.installs.InstallWorker`.

``installs`` (queue trigger on ``Settings.queues.installs``)
    :meth:`InstallWorker.handle`; an :class:`~proactive.install.installs.InstallRetryLater` propagates, so the host
    redelivers after host.json ``visibilityTimeout``; the worker itself moves the message to
    ``installs-poison`` at its fifth failure, counted across the copies it puts back (see
    :mod:`proactive.install.installs`), and the host would after ``maxDequeueCount`` (5) of one copy anyway.
``installs_poison``
    :meth:`InstallWorker.dead_letter`.
``graph_admission`` (orchestrator) and ``graph_limiter`` (entity, key = tenant id)
    A queue trigger cannot call an entity and read the answer, so :class:`~proactive.adapters.durable_client.DurableGraphPacer` starts a
    short ``graph_admission`` orchestration, which calls the tenant's ``graph_limiter`` and ends with the
    grant; the trigger reads it from the instance's status and purges the instance. The installs a worker
    runs at once share one such grant (:class:`~proactive.install.graph_pacing.CoalescingAdmissions`: one
    orchestration and one entity operation for up to 32 Graph requests). Short-lived instances rather than one
    long-lived per tenant: a per-tenant instance would need a request/answer channel (events in, custom
    status out) between many concurrent triggers and one generator, with a start race on every idle tenant.
    Reports go straight to the entity as signals.
"""

from __future__ import annotations

import json
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from proactive import function_names as fn
from proactive import orchestration, telemetry
from proactive.adapters.durable_client import DurableGraphPacer
from proactive.composition import services
from proactive.install.graph_pacing import MAX_WANT
from proactive.install.installs import InstallHandled, InstallWorker
from proactive.limiter import apply, tenant_defaults

__all__ = ["blueprint"]


async def _worker(client: df.DurableOrchestrationClient) -> InstallWorker:
    return await services().install_worker(DurableGraphPacer(client))


def blueprint() -> df.Blueprint:
    """The Graph bootstrap's triggers, bound to the queue named by ``Settings.queues.installs``."""
    bp = df.Blueprint()
    queue = services().settings.queues.installs

    @bp.function_name(fn.INSTALLS)
    @bp.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    @bp.durable_client_input(client_name="client")
    async def installs(msg: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
        body = msg.get_body()
        result = await (await _worker(client)).handle(body, msg.dequeue_count or 1)
        outcomes = [handled.value for handled in result.by_user.values()] or [result.handled.value]
        tenant = None if result.handled is InstallHandled.DEAD_LETTERED else _tenant_of(body)
        telemetry.current().installs_handled(tenant, outcomes)

    @bp.function_name(fn.INSTALLS_POISON)
    @bp.queue_trigger(arg_name="msg", queue_name=queue + fn.POISON_SUFFIX, connection="AzureWebJobsStorage")
    @bp.durable_client_input(client_name="client")
    async def installs_poison(msg: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
        await (await _worker(client)).dead_letter(msg.get_body())

    @bp.function_name(fn.GRAPH_ADMISSION)
    @bp.orchestration_trigger(context_name="context", orchestration=fn.GRAPH_ADMISSION)
    def graph_admission(context: df.DurableOrchestrationContext) -> Any:
        return orchestration.graph_admission(context)

    @bp.function_name(fn.GRAPH_LIMITER)
    @bp.entity_trigger(context_name="context", entity_name=fn.GRAPH_LIMITER)
    def graph_limiter(context: df.DurableEntityContext) -> None:
        # One token per Graph request (proactive.install.installs.REQUESTS_PER_TOKEN): an install is one POST
        # when Teams' event brings its reference, so installs run at the tenant's Graph rate.
        rate = services().settings.graph_rate_per_tenant
        state, decision = apply(
            context.get_state(lambda: None),
            context.operation_name,
            context.get_input(),
            defaults=tenant_defaults(rate, MAX_WANT),
        )
        if state is not None:
            context.set_state(state)
        context.set_result(decision)

    return bp


def _tenant_of(body: bytes) -> str | None:
    """The tenant a parsed (so well-formed) ``installs`` message names, for the metric's attribute."""
    try:
        tenant = json.loads(body).get("tenantId")
    except (ValueError, AttributeError):
        return None
    return tenant if isinstance(tenant, str) else None
