"""Telemetry of a real broadcast: function_app on the devhost (real replay engine, limiter entity), the Teams
emulator over HTTP, Azurite; metrics and spans read from the OpenTelemetry SDK's in-memory reader/exporter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proactive import telemetry
from tests.integration import test_broadcast_api as broadcasts
from tests.integration.test_broadcast_api import TENANT_A, Api, aad, broadcast
from tests.support.invariants import assert_settled
from tests.support.otel import Recorded

pytestmark = pytest.mark.azurite

api = broadcasts.api  # the broadcast API tests' fixture (devhost, emulator, Azurite)
emulator = broadcasts.emulator


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    recorded = Recorded()
    previous = telemetry.use(recorded.telemetry)
    try:
        yield recorded
    finally:
        telemetry.use(previous)
        recorded.shutdown()


async def test_a_broadcast_reports_sends_connector_latency_limiter_grants_and_a_span_per_batch(
    api: Api, recorded: Recorded
) -> None:
    users = range(12)
    await api.seed(TENANT_A, users)
    response = await api.call("POST", "broadcasts", json=broadcast("otel-1", users, category="deployments"))
    assert response.status == 202
    done = await api.wait_done(response.headers["Location"])
    assert done["counts"]["sent"] == 12
    assert_settled(done)

    sends = recorded.total(
        "proactive.sends", tenant=TENANT_A, outcome="sent", operation="send", category="deployments"
    )
    assert sends == 12
    latency = recorded.points("proactive.connector.duration")
    assert sum(p.value for p in latency if p.attributes["outcome"] == "ok") == 12
    assert recorded.total("proactive.limiter.granted", tenant=TENANT_A) >= 12
    assert recorded.total("proactive.limiter.rate", tenant=TENANT_A) > 0
    assert recorded.total("proactive.limiter.breaker_open", tenant=TENANT_A) == 0
    spans = [s for s in recorded.spans() if s.name == "send_batch"]
    assert spans and all(
        s.attributes is not None and s.attributes["proactive.notification_id"] == "otel-1" for s in spans
    )
    assert sum(int((s.attributes or {}).get("proactive.batch.sent", 0)) for s in spans) == 12
    # Ids of tenants and notifications only: no recipient id, no message text.
    values = list(recorded.attribute_values())
    assert not any(aad(n) in value for value in values for n in users)
    assert not any("Deploy 42" in value for value in values)
