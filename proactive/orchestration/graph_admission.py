"""``graph_admission``: one round trip to a tenant's Graph limiter for a queue trigger, which cannot call an
entity and read its answer itself.

Input ``{"tenantId"}``; output the entity's :class:`~proactive.limiter.AcquireDecision` JSON for one token.
The entity is ``graph_limiter@{tenantId}``, a key apart from the send limiter ``tenant_limiter@{tenantId}``:
Graph's install budget (30 requests/s per app per tenant) is separate from the Bot Connector's.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive.limiter import Acquire
from proactive.orchestration.clock import Orchestration, now


def graph_admission(context: Any) -> Orchestration:
    """Orchestrator body: ask the tenant's Graph limiter for one slot and return its decision."""
    payload = context.get_input() or {}
    tenant = str(payload.get("tenantId") or "")
    ask = Acquire(now=now(context).timestamp(), want=1, requester=context.instance_id)
    answer = yield context.call_entity(
        df.EntityId(fn.GRAPH_LIMITER, tenant), fn.LIMITER_ACQUIRE, ask.to_json()
    )
    return answer
