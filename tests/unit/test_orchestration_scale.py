"""History per orchestration execution does not grow with the audience (devhost counters at 1k and 10k)."""

from __future__ import annotations

import json

import pytest

from proactive.orchestration import policies
from proactive.orchestration.tenant_broadcast import lane_instance_id
from tests.support.orchestration import (
    TENANTS,
    Harness,
    body,
)

# Largest history one tenant_lane execution replays: 5 batches (BATCHES_PER_EXECUTION in the harness)
# of acquire (2 events) + timer (2) + send_batch (2) + report signal (1) + episode markers.
TENANT_EXECUTION_BOUND = 80
# broadcast: materialise pages (2,000 rows each, continue-as-new after 50) + a few progress polls.
BROADCAST_EXECUTION_BOUND = 120


@pytest.mark.parametrize(
    "recipients", [1_000, pytest.param(10_000, marks=pytest.mark.slow)], ids=["1k", "10k"]
)
async def test_history_per_execution_is_bounded_whatever_the_audience(
    harness: Harness, recipients: int
) -> None:
    await harness.seed_references(TENANTS[0], recipients)
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="scale"))
    record = await harness.run(accepted.instance_id, within=600)
    assert record.status == "Completed"
    output = json.loads(record.output or "")
    assert output["counts"]["sent"] == recipients
    batches = recipients // 50
    # Full batches over two lanes, then each lane's last look and the sweep may find nothing left.
    assert batches <= output["tenants"][0]["batches"] <= batches + 2 * policies.SEND_LANES + 1
    # Each lane continues every 5 batches; the parent once, from materialising to sending.
    assert harness.runtime.stats.continue_as_new <= batches // 5 + 2 * policies.SEND_LANES + 1
    for lane in range(policies.SEND_LANES + 1):
        assert (
            harness.history.largest[lane_instance_id(f"scale.{TENANTS[0]}", lane)] <= TENANT_EXECUTION_BOUND
        )
    assert harness.history.largest["scale"] <= BROADCAST_EXECUTION_BOUND
    # Work grows linearly (activities per batch), never with replays of a growing history.
    assert harness.runtime.stats.activity_invocations <= batches + recipients // 2000 + 20
