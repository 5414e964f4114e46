"""``graph_admission``: one round trip to a tenant's Graph limiter for a queue trigger, which cannot call an
entity and read its answer itself.

Input ``{"tenantId", "want"}`` (installs waiting in one worker, 1..32); output the entity's
:class:`~proactive.limiter.AcquireDecision` JSON.
The entity is ``graph_limiter@{tenantId}``, a key apart from the send limiter ``tenant_limiter@{tenantId}``:
Graph's install budget (30 requests/s per app per tenant) is separate from the Bot Connector's.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from proactive import function_names as fn
from proactive.limiter import Acquire
from proactive.orchestration.clock import Orchestration, now

MAX_WANT = 32  # the most installs one worker runs at once (proactive.install.graph_pacing.MAX_WANT)


def graph_admission(context: Any) -> Orchestration:
    """Orchestrator body: ask the tenant's Graph limiter for one slot and return its decision."""
    payload = context.get_input() or {}
    tenant = str(payload.get("tenantId") or "")
    want = payload.get("want")
    want = want if isinstance(want, int) and 1 <= want <= MAX_WANT else 1
    ask = Acquire(now=now(context).timestamp(), want=want, requester=context.instance_id)
    answer = yield context.call_entity(
        df.EntityId(fn.GRAPH_LIMITER, tenant), fn.LIMITER_ACQUIRE, ask.to_json()
    )
    return answer
