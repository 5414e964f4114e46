"""Durable triggers of broadcasts: orchestrators, activities and the tenant limiter entity (wiring only).

Names come from :mod:`proactive.function_names`; the orchestrator bodies live in
:mod:`proactive.orchestration`, the activity work in :class:`proactive.broadcast.service.BroadcastSteps`, the
limiter in :func:`proactive.limiter.apply`.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive import orchestration, telemetry
from proactive.composition import services
from proactive.limiter import apply, tenant_defaults

bp = df.Blueprint()


@bp.function_name(fn.BROADCAST)
@bp.orchestration_trigger(context_name="context", orchestration=fn.BROADCAST)
def broadcast(context: df.DurableOrchestrationContext) -> Any:
    return orchestration.broadcast(context)


@bp.function_name(fn.TENANT_BROADCAST)
@bp.orchestration_trigger(context_name="context", orchestration=fn.TENANT_BROADCAST)
def tenant_broadcast(context: df.DurableOrchestrationContext) -> Any:
    return orchestration.tenant_broadcast(context)


@bp.function_name(fn.TENANT_LANE)
@bp.orchestration_trigger(context_name="context", orchestration=fn.TENANT_LANE)
def tenant_lane(context: df.DurableOrchestrationContext) -> Any:
    return orchestration.tenant_lane(context)


@bp.function_name(fn.MATERIALISE_AUDIENCE)
@bp.activity_trigger(input_name="payload", activity=fn.MATERIALISE_AUDIENCE)
async def materialise_audience(payload: dict[str, Any]) -> dict[str, Any]:
    return await (await services().broadcast_steps()).materialise(payload)


@bp.function_name(fn.SEND_BATCH)
@bp.activity_trigger(input_name="payload", activity=fn.SEND_BATCH)
async def send_batch(payload: dict[str, Any]) -> dict[str, Any]:
    return await (await services().broadcast_steps()).send_batch(payload)


@bp.function_name(fn.CANCEL_REMAINING)
@bp.activity_trigger(input_name="payload", activity=fn.CANCEL_REMAINING)
async def cancel_remaining(payload: dict[str, Any]) -> dict[str, Any]:
    return await (await services().broadcast_steps()).cancel_remaining(payload)


@bp.function_name(fn.BROADCAST_PROGRESS)
@bp.activity_trigger(input_name="payload", activity=fn.BROADCAST_PROGRESS)
async def broadcast_progress(payload: dict[str, Any]) -> dict[str, Any]:
    return await (await services().broadcast_steps()).progress(payload)


@bp.function_name(fn.RECORD_BROADCAST)
@bp.activity_trigger(input_name="payload", activity=fn.RECORD_BROADCAST)
async def record_broadcast(payload: dict[str, Any]) -> dict[str, Any]:
    return await (await services().broadcast_steps()).record(payload)


@bp.function_name(fn.TENANT_LIMITER)
@bp.entity_trigger(context_name="context", entity_name=fn.TENANT_LIMITER)
def tenant_limiter(context: df.DurableEntityContext) -> None:
    # apply() never raises (errors come back as decisions): entity code must not raise (STYLE.md rule 3).
    settings = services().settings
    defaults = tenant_defaults(settings.send_rate_for(context.entity_key), settings.batch_size)
    before = context.get_state(lambda: None)
    state, decision = apply(before, context.operation_name, context.get_input(), defaults=defaults)
    if state is not None:
        context.set_state(state)
    context.set_result(decision)
    # Metrics of the operation (grants, rate, breaker). A batch the host runs again after a failed commit
    # would count twice: rare, and only the counters' totals are affected.
    telemetry.current().limiter(context.entity_key, str(context.operation_name), before, state, decision)
