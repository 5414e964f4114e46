"""Every function, entity and event name, in one place (STYLE.md rule 2).

Orchestrators call activities, sub-orchestrations and entities by these names, and the triggers in
:mod:`proactive.functions.durable` register under them, so a rename cannot leave a dangling caller.
"""

from __future__ import annotations

from typing import Final

# Orchestrators
BROADCAST: Final = "broadcast"
TENANT_BROADCAST: Final = "tenant_broadcast"
TENANT_LANE: Final = "tenant_lane"
GRAPH_ADMISSION: Final = "graph_admission"

# Queue and timer triggers (their queues come from Settings.queues)
DELIVERIES_RETRY: Final = "deliveries_retry"
DELIVERIES_RETRY_POISON: Final = "deliveries_retry_poison"
RECONCILE: Final = "reconcile"
INSTALLS: Final = "installs"
INSTALLS_POISON: Final = "installs_poison"
# The Functions host appends this to a queue's name for messages past host.json ``maxDequeueCount``.
POISON_SUFFIX: Final = "-poison"

# Activities
MATERIALISE_AUDIENCE: Final = "materialise_audience"
SEND_BATCH: Final = "send_batch"
CANCEL_REMAINING: Final = "cancel_remaining"
BROADCAST_PROGRESS: Final = "broadcast_progress"
RECORD_BROADCAST: Final = "record_broadcast"

# Entities (key = tenant id)
TENANT_LIMITER: Final = "tenant_limiter"
GRAPH_LIMITER: Final = "graph_limiter"  # Graph installs, a budget apart from the sends

# External events
CANCEL_EVENT: Final = "cancel"
# Ends a lane's wait for a quiet-hours window early: the re-drive trigger raises it when a row of the
# tenant became due while the lane sleeps (proactive.delivery.redrive).
WAKE_EVENT: Final = "wake"

# Limiter operations (see proactive.limiter)
LIMITER_ACQUIRE: Final = "acquire"
LIMITER_REPORT: Final = "report"
