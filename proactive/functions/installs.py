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
    A queue trigger cannot call an entity and read the answer, so :class:`DurableGraphPacer` starts a
    short ``graph_admission`` orchestration, which calls the tenant's ``graph_limiter`` and ends with the
    grant; the trigger reads it from the instance's status and purges the instance. The installs a worker
    runs at once share one such grant (:class:`~proactive.install.graph_pacing.CoalescingAdmissions`: one
    orchestration and one entity operation for up to 32 installs). Short-lived instances rather than one
    long-lived per tenant: a per-tenant instance would need a request/answer channel (events in, custom
    status out) between many concurrent triggers and one generator, with a start race on every idle tenant.
    Reports go straight to the entity as signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

from proactive import function_names as fn
from proactive import orchestration
from proactive.composition import services
from proactive.errors import TransportFailure
from proactive.install.graph_pacing import MAX_WANT, CoalescingAdmissions
from proactive.install.installs import READS_PER_INSTALL, Admission, InstallWorker, ReportTiming
from proactive.limiter import AcquireDecision, Grant, Report, apply, tenant_defaults

__all__ = ["INSTALLS", "INSTALLS_POISON", "POISON_SUFFIX", "DurableGraphPacer", "blueprint"]

INSTALLS = "installs"
INSTALLS_POISON = "installs_poison"
# The Functions host appends this to a queue's name for messages past host.json ``maxDequeueCount``.
POISON_SUFFIX = "-poison"
ADMISSION_TIMEOUT = 60.0  # seconds for the admission orchestration to answer before the message is retried
_POLL_FIRST, _POLL_MAX = 0.02, 0.5
_FAILED = (
    OrchestrationRuntimeStatus.Failed,
    OrchestrationRuntimeStatus.Terminated,
    OrchestrationRuntimeStatus.Canceled,
)


# One per worker process: the installs running at once in this worker share their tenant's grants.
_ADMISSIONS = CoalescingAdmissions()


class DurableGraphPacer:
    """The :class:`~proactive.install.installs.GraphPacer` port over the Durable client binding."""

    def __init__(self, client: df.DurableOrchestrationClient, *, timeout: float = ADMISSION_TIMEOUT) -> None:
        self._client = client
        self._timeout = timeout

    async def admit(self, tenant_id: str) -> Admission:
        return await _ADMISSIONS.admit(tenant_id, self._acquire)

    async def _acquire(self, tenant_id: str, want: int) -> Grant:
        instance = f"graph-admission-{uuid.uuid4().hex}"
        await self._client.start_new(fn.GRAPH_ADMISSION, instance, {"tenantId": tenant_id, "want": want})
        deadline = time.monotonic() + self._timeout
        delay = _POLL_FIRST
        while True:
            status = await self._client.get_status(instance)
            state = status.runtime_status if status else None
            if state is OrchestrationRuntimeStatus.Completed:
                output: Any = status.output
                break
            if state in _FAILED or time.monotonic() > deadline:
                raise TransportFailure(f"Graph admission {instance} ended {state}", code="AdmissionFailed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        # Housekeeping only (the SDK raises bare Exceptions): a leftover instance is harmless.
        with contextlib.suppress(Exception):
            await self._client.purge_instance_history(instance)
        grant = AcquireDecision.from_json(output).grant
        if grant is None:
            raise TransportFailure(f"the Graph limiter refused: {output!r}"[:300], code="AdmissionRefused")
        return grant

    async def report(
        self,
        tenant_id: str,
        *,
        sent: int = 0,
        throttled: int = 0,
        server_errors: int = 0,
        failed: int = 0,
        retry_after: float | None = None,
        timing: ReportTiming | None = None,
    ) -> None:
        report = Report(
            now=time.time(),
            sent=sent,
            throttled=throttled,
            server_errors=server_errors,
            failed=failed,
            retry_after=retry_after,
            granted_at=timing.granted_at if timing else None,
            first_ready_at=timing.ready_at if timing else None,
            first_send_at=timing.sent_at if timing else None,
            last_send_at=timing.sent_at if timing else None,
        )
        await self._client.signal_entity(
            df.EntityId(fn.GRAPH_LIMITER, tenant_id), fn.LIMITER_REPORT, report.to_json()
        )


async def _worker(client: df.DurableOrchestrationClient) -> InstallWorker:
    return await services().install_worker(DurableGraphPacer(client))


def blueprint() -> df.Blueprint:
    """The Graph bootstrap's triggers, bound to the queue named by ``Settings.queues.installs``."""
    bp = df.Blueprint()
    queue = services().settings.queues.installs

    @bp.function_name(INSTALLS)
    @bp.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    @bp.durable_client_input(client_name="client")
    async def installs(msg: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
        await (await _worker(client)).handle(msg.get_body(), msg.dequeue_count or 1)

    @bp.function_name(INSTALLS_POISON)
    @bp.queue_trigger(arg_name="msg", queue_name=queue + POISON_SUFFIX, connection="AzureWebJobsStorage")
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
        # One token per install; an install costs READS_PER_INSTALL reads of the tenant's Graph budget.
        rate = services().settings.graph_rate_per_tenant / READS_PER_INSTALL
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
