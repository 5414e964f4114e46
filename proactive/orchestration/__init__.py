"""The broadcast orchestrations: pure generators over the Durable context (STYLE.md rule 2).

* :func:`~proactive.orchestration.broadcast.broadcast` schedules, materialises the audience tenant by tenant
  and runs one :func:`~proactive.orchestration.tenant_broadcast.tenant_broadcast` per tenant in parallel,
  each of which runs one or ``SEND_LANES`` (3) sequential :func:`~proactive.orchestration.tenant_broadcast.tenant_lane`
  send loops. A ``tenant_lane`` started on its own under ``{notificationId}.{tenantId}.redrive`` is a
  re-drive run (:mod:`proactive.delivery.redrive`): rows handed to ``deliveries-retry`` and welcomes, same limiter.
* Inputs and outputs are the JSON of the models in :mod:`proactive.orchestration.runs`; recipient lists
  never pass through Durable (only notification id, tenant ids and cursors do).
* Retry policies live in :mod:`proactive.orchestration.policies`, names in :mod:`proactive.function_names`.

May import: azure.durable_functions, function_names, models, the limiter and delivery contracts; never adapters.
"""

from proactive.orchestration.broadcast import broadcast
from proactive.orchestration.graph_admission import graph_admission
from proactive.orchestration.runs import BroadcastRun, TenantRun
from proactive.orchestration.tenant_broadcast import tenant_broadcast, tenant_lane

__all__ = [
    "BroadcastRun",
    "TenantRun",
    "broadcast",
    "graph_admission",
    "tenant_broadcast",
    "tenant_lane",
]
