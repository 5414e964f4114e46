"""Tests of the orchestration harness itself (:mod:`tests.support.orchestration`)."""

from __future__ import annotations

from datetime import timedelta

from proactive.models import DeliveryStatus
from tests.support.orchestration import START, TENANTS, Harness, body, user_id


async def test_fake_sender_claims_at_most_limit_rows_and_reports_what_remains(harness: Harness) -> None:
    accepted = await harness.service.start(body(users=[(TENANTS[0], user_id(0, n)) for n in range(7)]))
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    assert all(call["limit"] <= 50 for call in harness.sender.calls)
    assert harness.sender.calls[-1]["operation"] == "send"
    counts = await harness.services.deliveries.count_by_status(accepted.notification_id, TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 7}


async def test_clock_only_moves_when_the_harness_jumps_to_a_timer(harness: Harness) -> None:
    later = START + timedelta(hours=1)
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, 1))], sendAt=later.isoformat().replace("+00:00", "Z"))
    )
    record = await harness.run(accepted.instance_id, until=later - timedelta(seconds=1))
    assert record.status == "Running" and harness.clock.now() == START
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed" and harness.clock.now() >= later
