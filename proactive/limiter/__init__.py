"""Per-tenant send limiter: a pure state machine behind the ``tenant_limiter@{tenantId}`` entity.

Every operation is ``(state, operation, input) -> (state, decision)``: no I/O, no clock, nothing from
``azure``. Read it in the order a request takes:

- :mod:`~proactive.limiter.contract`: ``Acquire`` -> ``Grant`` and ``Report`` -> ``ReportAck``, the models the
  orchestration and the entity share (camelCase on the wire);
- :mod:`~proactive.limiter.admission`: ``acquire``, paced slots that keep every window at the tenant's rate
  (the invariant), priority lanes, the breaker's refusals and probes;
- :mod:`~proactive.limiter.feedback`: ``report``, what a batch's 429s, 5xx and request times teach it
  (holds, settling under a real ceiling, noise, the breaker);
- :mod:`~proactive.limiter.config` and :mod:`~proactive.limiter.state`: settings and the stored state;
- :mod:`~proactive.limiter.entity`: :func:`apply`, the entity's body, which never raises.

May import: proactive.limiter and proactive.models only.
"""

from proactive.limiter.admission import acquire
from proactive.limiter.config import LimiterConfig, tenant_defaults
from proactive.limiter.contract import (
    Acquire,
    AcquireDecision,
    Grant,
    LimiterError,
    LimiterInputError,
    Priority,
    Report,
    ReportAck,
    parse_time,
)
from proactive.limiter.entity import apply, configure, snapshot
from proactive.limiter.feedback import report
from proactive.limiter.state import Booking, Breaker, LimiterState, Stats, initial_state

__all__ = [
    "Acquire",
    "AcquireDecision",
    "Booking",
    "Breaker",
    "Grant",
    "LimiterConfig",
    "LimiterError",
    "LimiterInputError",
    "LimiterState",
    "Priority",
    "Report",
    "ReportAck",
    "Stats",
    "acquire",
    "apply",
    "configure",
    "initial_state",
    "parse_time",
    "report",
    "snapshot",
    "tenant_defaults",
]
