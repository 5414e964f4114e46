"""Metrics and traces through the OpenTelemetry API (ARCHITECTURE.md flow 8): every instrument in one place.

Nothing here exports anything. The instruments are created on the global providers' proxies, so they are
no-ops until :func:`proactive.adapters.telemetry_export.configure_exporters` installs real providers at
start (Azure Monitor, or OTLP), and they then report there without being created again. Tests pass their own
SDK providers (in-memory reader and exporter) to :class:`Telemetry`.

Attributes are low-cardinality and ids only (STYLE / ARCHITECTURE "no personal data"): ``tenant`` (a tenant
id), ``outcome``, ``reason`` (an error code such as ``Throttled`` or ``ConversationBlockedByUser``),
``operation``, ``queue``, ``phase``, ``action``. Never a recipient, a name or message text. Spans carry the
notification id (the broadcast's own id, chosen by the caller as an identifier) so a batch can be found
from its broadcast.

Instruments (names are the contract with dashboards and alerts, e.g. ``infra/modules/alerts.bicep``):

==================================  =========  ==========================================================
name                                kind       what
==================================  =========  ==========================================================
``proactive.sends``                 counter    rows a ``send_batch`` settled, by tenant, outcome (the row's
                                               status), reason, operation and category
``proactive.throttled``             counter    429 answers from the Bot Connector, by tenant
``proactive.send.retries``          counter    in-process retries (attempts after the first), by tenant
``proactive.handoffs``              counter    rows handed to ``deliveries-retry``, by tenant and reason
``proactive.connector.duration``    histogram  seconds per Bot Connector call, by operation and outcome
``proactive.limiter.granted``       counter    tokens the tenant's limiter granted, by tenant
``proactive.limiter.rate``          gauge      the limiter's effective rate (msg/s), by tenant
``proactive.limiter.breaker_open``  gauge      1 while the tenant's breaker is open or half-open, else 0
``proactive.limiter.breaker``       counter    breaker phase changes, by tenant and the new phase
``proactive.dead_letters``          counter    dead letters written, by queue and reason
``proactive.installs``              counter    Graph installs handled, by tenant and outcome (``installed``,
                                               ``user_closed``, ``failed``, ``requeued``, ``poisoned``,
                                               ``dead_lettered``)
``proactive.reconcile``             counter    rows reconciliation acted on, by action
==================================  =========  ==========================================================
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, StatusCode

from proactive import __version__
from proactive.delivery.contract import RowOutcome
from proactive.delivery.ports import BotConnector
from proactive.errors import DeliveryError, Throttled

__all__ = ["SCOPE", "Telemetry", "TimedConnector", "current", "use"]

SCOPE: Final = "proactive"
_NONE: Final = "none"
_OPEN_PHASES: Final = frozenset({"open", "half_open"})


class Telemetry:
    """The product's instruments and tracer.

    Args:
        meter_provider: where metrics go; the global provider (a no-op until one is configured) by default.
        tracer_provider: where spans go; the global provider by default.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self._sends = meter.create_counter(
            "proactive.sends", unit="{row}", description="Rows settled by send_batch"
        )
        self._throttled = meter.create_counter(
            "proactive.throttled", unit="{response}", description="429 answers from the Bot Connector"
        )
        self._retries = meter.create_counter(
            "proactive.send.retries", unit="{request}", description="In-process retries of a send"
        )
        self._handoffs = meter.create_counter(
            "proactive.handoffs", unit="{row}", description="Rows handed to the deliveries-retry queue"
        )
        self._connector = meter.create_histogram(
            "proactive.connector.duration", unit="s", description="Duration of one Bot Connector call"
        )
        self._granted = meter.create_counter(
            "proactive.limiter.granted", unit="{token}", description="Tokens granted by a tenant's limiter"
        )
        self._rate = meter.create_gauge(
            "proactive.limiter.rate", unit="{message}/s", description="A tenant limiter's effective rate"
        )
        self._breaker_open = meter.create_gauge(
            "proactive.limiter.breaker_open", description="1 while a tenant's breaker is open or half-open"
        )
        self._breaker = meter.create_counter(
            "proactive.limiter.breaker", unit="{change}", description="Breaker phase changes"
        )
        self._dead_letters = meter.create_counter(
            "proactive.dead_letters", unit="{message}", description="Dead letters written"
        )
        self._installs = meter.create_counter(
            "proactive.installs", unit="{install}", description="Graph installs handled, by outcome"
        )
        self._reconcile = meter.create_counter(
            "proactive.reconcile", unit="{row}", description="Rows reconciliation acted on"
        )

    # ---- sends --------------------------------------------------------------------------------------

    def outcome_recorder(
        self, *, tenant: str, operation: str, category: str = _NONE
    ) -> Callable[[RowOutcome], None]:
        """The sender's ``on_outcome`` hook for one batch (a :class:`~proactive.delivery.batch.RowOutcome` each)."""

        def record(outcome: RowOutcome) -> None:
            self._sends.add(
                1,
                {
                    "tenant": tenant,
                    "outcome": outcome.status.value,
                    "reason": outcome.reason or _NONE,
                    "operation": operation,
                    "category": category,
                },
            )
            throttles = sum(1 for failure in outcome.failures if isinstance(failure, Throttled))
            if throttles:
                self._throttled.add(throttles, {"tenant": tenant})
            if outcome.send is not None and outcome.send.attempts > 1:
                self._retries.add(outcome.send.attempts - 1, {"tenant": tenant})
            if outcome.handed_off:
                self._handoffs.add(1, {"tenant": tenant, "reason": outcome.reason or _NONE})

        return record

    def connector_call(self, operation: str, seconds: float, error: BaseException | None) -> None:
        """One Bot Connector call's duration, by operation and outcome (``ok`` or the error's class)."""
        attributes: dict[str, str | int] = {
            "operation": operation,
            "outcome": "ok" if error is None else type(error).__name__,
        }
        if isinstance(error, DeliveryError) and error.status is not None:
            attributes["http_status"] = error.status
        self._connector.record(seconds, attributes)

    @contextmanager
    def batch_span(self, notification_id: str, tenant: str, operation: str, limit: int) -> Iterator[Span]:
        """A span around one ``send_batch``, named by its notification (the broadcast's id)."""
        attributes: dict[str, str | int] = {
            "proactive.notification_id": notification_id,
            "proactive.tenant_id": tenant,
            "proactive.operation": operation,
            "proactive.batch.limit": limit,
        }
        with self._tracer.start_as_current_span("send_batch", attributes=attributes) as span:
            yield span

    @staticmethod
    def batch_result(span: Span, result: Mapping[str, Any]) -> None:
        """Put a ``SendBatchResult``'s counts on its span."""
        for key in ("attempted", "sent", "failed", "retryQueued", "throttled", "serverErrors", "requests"):
            value = result.get(key)
            if isinstance(value, int):
                span.set_attribute(f"proactive.batch.{key}", value)
        if result.get("halted"):
            span.set_status(StatusCode.ERROR, str(result["halted"]))

    # ---- limiter ------------------------------------------------------------------------------------

    def limiter(
        self, tenant: str, operation: str, before: Any, after: Any, decision: Mapping[str, Any]
    ) -> None:
        """What one limiter operation changed: tokens granted, the rate, the breaker's phase.

        ``before`` / ``after`` are the stored states (``LimiterState.to_json()`` or ``None``).
        """
        before, after = _as_mapping(before), _as_mapping(after)
        attributes = {"tenant": tenant}
        grant = decision.get("grant")
        if operation == "acquire" and isinstance(grant, Mapping) and isinstance(grant.get("tokens"), int):
            self._granted.add(grant["tokens"], attributes)
        if not isinstance(after, Mapping):
            return
        rate = after.get("rate")
        if isinstance(rate, int | float):
            self._rate.set(float(rate), attributes)
        phase = _phase(after)
        if phase is None:
            return
        self._breaker_open.set(1 if phase in _OPEN_PHASES else 0, attributes)
        previous = (_phase(before) if before is not None else None) or "closed"
        if phase != previous:
            self._breaker.add(1, {"tenant": tenant, "phase": phase})

    # ---- dead letters, reconciliation --------------------------------------------------------------

    def dead_lettered(self, queue: str, reason: str | None) -> None:
        """A dead letter was written for ``queue``'s message."""
        self._dead_letters.add(1, {"queue": queue, "reason": reason or _NONE})

    def installs_handled(self, tenant: str | None, outcomes: Iterable[str]) -> None:
        """What one ``installs`` message did for each of its users (or its team)."""
        for outcome, count in Counter(outcomes).items():
            self._installs.add(count, {"tenant": tenant or _NONE, "outcome": outcome})

    def reconciled(self, *, reconciled: int, requeued: int, cancelled: int) -> None:
        """What one reconciliation run did, by action."""
        for action, count in (("reconciled", reconciled), ("requeued", requeued), ("cancelled", cancelled)):
            if count:
                self._reconcile.add(count, {"action": action})


def _as_mapping(state: Any) -> Mapping[str, Any] | None:
    if isinstance(state, str | bytes):
        try:
            state = json.loads(state)
        except ValueError:
            return None
    return state if isinstance(state, Mapping) else None


def _phase(state: Mapping[str, Any]) -> str | None:
    breaker = state.get("breaker")
    phase = breaker.get("phase") if isinstance(breaker, Mapping) else None
    return phase if isinstance(phase, str) else None


class TimedConnector:
    """A :class:`~proactive.delivery.ports.BotConnector` that times each call into ``proactive.connector.duration``.

    Args:
        inner: the real connector.
        telemetry: where the durations go.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self, inner: BotConnector, telemetry: Telemetry, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._clock = clock

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        started = self._clock()
        try:
            activity_id = await self._inner.send_activity(service_url, conversation_id, activity)
        except Exception as exc:
            self._telemetry.connector_call("send", self._clock() - started, exc)
            raise
        self._telemetry.connector_call("send", self._clock() - started, None)
        return activity_id

    async def update_activity(
        self, service_url: str, conversation_id: str, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        started = self._clock()
        try:
            await self._inner.update_activity(service_url, conversation_id, activity_id, activity)
        except Exception as exc:
            self._telemetry.connector_call("update", self._clock() - started, exc)
            raise
        self._telemetry.connector_call("update", self._clock() - started, None)

    async def delete_activity(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        started = self._clock()
        try:
            await self._inner.delete_activity(service_url, conversation_id, activity_id)
        except Exception as exc:
            self._telemetry.connector_call("delete", self._clock() - started, exc)
            raise
        self._telemetry.connector_call("delete", self._clock() - started, None)


_current = Telemetry()


def current() -> Telemetry:
    """The process's instruments (on the global providers)."""
    return _current


def use(telemetry: Telemetry) -> Telemetry:
    """Replace the process's instruments (tests with their own SDK providers); returns the previous ones."""
    global _current
    previous, _current = _current, telemetry
    return previous
