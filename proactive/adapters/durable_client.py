"""The Durable client binding behind two ports: the broadcasts' ``Orchestrations`` and the Graph pacer.

The triggers in :mod:`proactive.functions` wrap the ``DurableOrchestrationClient`` they are given in these
adapters and pass them to a service; the services never see the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import azure.durable_functions as df
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

from proactive import function_names as fn
from proactive.broadcast.ports import OrchestrationState
from proactive.errors import TransportFailure
from proactive.install.graph_pacing import CoalescingAdmissions
from proactive.install.ports import Admission, ReportTiming
from proactive.limiter import AcquireDecision, Grant, Report

__all__ = ["ADMISSION_TIMEOUT", "DurableGraphPacer", "DurableOrchestrations"]


class DurableOrchestrations:
    """The :class:`~proactive.broadcast.ports.Orchestrations` port over the Durable client binding."""

    def __init__(self, client: df.DurableOrchestrationClient) -> None:
        self._client = client

    async def start(self, name: str, instance_id: str, payload: dict[str, Any]) -> None:
        await self._client.start_new(name, instance_id, payload)

    async def state(self, instance_id: str) -> OrchestrationState | None:
        status = await self._client.get_status(instance_id)
        if not status or status.runtime_status is None:
            return None
        return OrchestrationState(
            runtime_status=status.runtime_status.value,
            custom_status=status.custom_status,
            output=status.output,
            created_time=status.created_time,
            last_updated_time=status.last_updated_time,
        )

    async def raise_event(self, instance_id: str, name: str, data: Any) -> bool:
        try:
            await self._client.raise_event(instance_id, name, data)
        except Exception:  # the SDK raises a bare Exception for 404 (no instance) and 410 (finished)
            return False
        return True


ADMISSION_TIMEOUT = 60.0  # seconds for the admission orchestration to answer before the message is retried
_POLL_FIRST = 0.02
_POLL_MAX = 0.5
_FAILED = (
    OrchestrationRuntimeStatus.Failed,
    OrchestrationRuntimeStatus.Terminated,
    OrchestrationRuntimeStatus.Canceled,
)


# One per worker process: the installs running at once in this worker share their tenant's grants.
_ADMISSIONS = CoalescingAdmissions()


class DurableGraphPacer:
    """The :class:`~proactive.install.ports.GraphPacer` port over the Durable client binding."""

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
